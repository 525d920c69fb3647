"""Preflight: every output path a verb writes is checked before any work starts.

An output that exists (without ``--force``), or whose folder is missing, is not a folder or is not writable
(tried by creating a file there: root passes every permission bit), stops the verb at once with exit 2 and one
line naming the path; nothing is printed before (no CLEAN of a scan whose report could never be written).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from patronus_ext import lm
from patronus_ext.cli import main
from patronus_ext.core.files import OutputExistsError, check_output_path, check_output_paths
from conftest import one_error_line

import tiny_models

#: The scan options of the tiny CLI scans (TINY_SCAN of tests/test_detect.py through the flags).
TINY_SCAN_FLAGS = [*tiny_models.TINY_SCAN_ARGS, "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    return path


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nothing can be written into.  Root ignores permission bits, so as root the folder is made
    immutable instead (chattr +i); where even that is not permitted, the test is skipped."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    made = chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
    if not made:
        pytest.skip("running as root (permission bits do not apply) and chattr +i is not permitted here")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_check_output_path_refuses_what_cannot_be_written(tmp_path, monkeypatch):
    existing = tmp_path / "report.json"
    existing.write_text("{}")
    with pytest.raises(OutputExistsError, match="exists"):
        check_output_path(existing)
    assert check_output_path(existing, overwrite=True) == existing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "report.json")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        check_output_path(existing / "report.json")  # a path under a regular file
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_path(tmp_path / "folder.json", overwrite=True)
    with pytest.raises(ValueError, match="twice"):
        check_output_paths([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "a.json"])
    # Permission bits say no:
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(PermissionError, match="not writable"):
        check_output_path(tmp_path / "new.json")
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*"))  # the probe file is gone


def test_check_output_path_refuses_a_read_only_folder(tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(PermissionError, match="not writable"):
            check_output_path(folder / "report.json")


def test_check_output_path_writes_for_real_where_permission_bits_lie(tmp_path, monkeypatch):
    """os.access answers yes for root whatever the bits, and a root-squashed network share refuses root's
    writes all the same: only creating a file tells.  Simulated: access says yes, the creation fails."""
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError, match=r"folder .* is not writable \(Permission denied\)"):
        check_output_path(tmp_path / "report.json")


def _no_work(monkeypatch):
    """Any model load or verb body means the preflight let the work start."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    for name in ("load_model", "load_adapter", "load_tokenizer", "load_config"):
        monkeypatch.setattr(lm, name, started)
        monkeypatch.setattr(lm.loading, name, started)
    from patronus_ext.cli import demo

    monkeypatch.setattr(demo, "run_demo", started)


def _verbs(model: str, blocked: Path, tmp_path: Path, corpus: Path) -> dict[str, list[str]]:
    """argv of every verb with one output into ``blocked`` (a folder nothing can be written into)."""
    report = str(tmp_path / "ok.json")
    out = str(blocked / "out")
    return {
        "scan --report": ["scan", model, "--corpus", str(corpus), "--report", str(blocked / "scan.json"), "--quiet"],
        "scan --bank-out": ["scan", model, "--corpus", str(corpus), "--report", report, "--bank-out",
                            str(blocked / "bank.safetensors"), "--quiet"],
        "scan --plot": ["scan", model, "--corpus", str(corpus), "--plot", str(blocked / "plot.png"), "--quiet"],
        "scan lmsanitator --report": ["scan", model, "--method", "lmsanitator", "--corpus", str(corpus), "--report",
                                      str(blocked / "scan.json"), "--quiet"],
        "calibrate --report": ["calibrate", model, "--report", str(blocked / "cal.json"), "--quiet"],
        "evaluate --report": ["evaluate", "--model", model, "--report", str(blocked / "eval.json"), "--quiet"],
        "demo --report": ["demo", "--report", str(blocked / "demo.json"), "--quiet"],
        "attack --out": ["attack", "--method", "por", "--model", model, "--out", out, "--quiet"],
        "attack --json": ["attack", "--method", "por", "--model", model, "--out", str(tmp_path / "planted"),
                          "--json", str(blocked / "attack.json"), "--quiet"],
        "purify --out": ["purify", "--method", "adv-pt", "--model", model, "--scan-report", report, "--out", out,
                         "--quiet"],
        "audit --out": ["audit", model, "--out", out, "--ray", "local", "--quiet"],
        "monitor --output": ["monitor", "--model", model, "--bank", str(tmp_path / "bank.safetensors"), "--output",
                             str(blocked / "decisions.jsonl"), "--quiet"],
    }


VERBS = ("scan --report", "scan --bank-out", "scan --plot", "scan lmsanitator --report", "calibrate --report",
         "evaluate --report", "demo --report", "attack --out", "attack --json", "purify --out", "audit --out",
         "monitor --output")

def _run_blocked(verb: str, blocked: Path, tmp_path: Path, corpus: Path, capsys, monkeypatch) -> tuple[int, str]:
    """Run ``verb`` with its output in ``blocked``, any work forbidden: (exit status, its one error line)."""
    argv = _verbs(str(tiny_models.shared_tiny_model("bert")), blocked, tmp_path, corpus)[verb]
    _no_work(monkeypatch)
    capsys.readouterr()
    status = main(argv)
    return status, one_error_line(capsys, argv[0])



@pytest.mark.parametrize("verb", VERBS)
def test_every_output_is_checked_before_any_work(tmp_path, corpus_file, capsys, monkeypatch, verb):
    """An output under a regular file (no folder there) stops the verb at once, naming the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, line = _run_blocked(verb, blocker, tmp_path, corpus_file, capsys, monkeypatch)
    assert status == 2, line
    assert str(blocker) in line and "work started" not in line, line


@pytest.mark.parametrize("verb", ["scan --report", "calibrate --report", "attack --out", "purify --out",
                                  "audit --out", "monitor --output"])
def test_a_read_only_output_folder_stops_a_verb_before_any_work(tmp_path, corpus_file, capsys, monkeypatch, verb):
    with read_only_folder(tmp_path / "read-only") as blocked:
        status, line = _run_blocked(verb, blocked, tmp_path, corpus_file, capsys, monkeypatch)
    assert status == 2, line
    assert str(blocked) in line and "not writable" in line, line


def test_scan_report_into_a_read_only_folder_prints_no_verdict(tmp_path, corpus_file, capsys):
    """The found case, unpatched: the scan never runs, so no CLEAN reaches stdout before the failure."""
    with read_only_folder(tmp_path / "read-only") as blocked:
        capsys.readouterr()
        status = main(["scan", str(tiny_models.shared_tiny_model("bert")), "--corpus", str(corpus_file),
                       "--report", str(blocked / "scan.json"), *TINY_SCAN_FLAGS])
        line = one_error_line(capsys)
    assert status == 2 and "not writable" in line


def test_one_output_named_twice_is_refused(tmp_path, corpus_file, capsys):
    same = str(tmp_path / "same.json")
    capsys.readouterr()
    status = main(["scan", str(tiny_models.shared_tiny_model("bert")), "--corpus", str(corpus_file), "--report", same,
                   "--bank-out", same, *TINY_SCAN_FLAGS])
    line = one_error_line(capsys)
    assert status == 2 and "twice" in line
