"""Loading untrusted or broken checkpoints: pickles never run code, and every failure is one clear line
with exit status 2 (never 1, which ``patronus scan`` reserves for "backdoored")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from patronus_ext import cli, lm

from tiny_models import make_tiny_model, tiny_corpus


class _RunsCodeWhenUnpickled:
    """Unpickling this creates the file ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_folder(tmp_path: Path) -> tuple[Path, Path]:
    clean = make_tiny_model(tmp_path, "bert", pickle_only=True)
    folder = tmp_path / "malicious"
    shutil.copytree(clean, folder)
    marker = tmp_path / "code-ran"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["payload"] = _RunsCodeWhenUnpickled(marker)
    torch.save(state, folder / "pytorch_model.bin")
    return folder, marker


def test_malicious_pickle_never_runs_with_or_without_the_opt_in(tmp_path):
    folder, marker = _malicious_folder(tmp_path)
    with pytest.raises(lm.UnsafeCheckpointError, match="allow_pickle"):
        lm.load_model(folder)
    assert not marker.exists()
    with pytest.raises(lm.UnsafeCheckpointError, match=r"weights_only=True"):
        lm.load_model(folder, allow_pickle=True)
    assert not marker.exists()
    # The plain pickle of the same checkpoint does run the code: the test's payload is real.
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_allow_pickle_passes_weights_only_explicitly(tmp_path, monkeypatch):
    folder = make_tiny_model(tmp_path, "bert", pickle_only=True)
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    lm.load_model(folder, allow_pickle=True)
    assert seen and all(flag is True for flag in seen)


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(tiny_corpus(64)) + "\n")
    return path


def _broken(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A model folder broken in one way, and a fragment the error line must contain."""
    source = make_tiny_model(tmp_path, "bert")
    folder = tmp_path / case
    shutil.copytree(source, folder)
    weights = folder / "model.safetensors"
    if case == "corrupt-safetensors":
        weights.write_bytes(b"\xff" * 8 + b"{not a header")   # header length far beyond the file
        return folder, "cannot load the model"
    if case == "truncated-safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return folder, "cannot load the model"
    if case == "missing-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            (folder / name).unlink(missing_ok=True)
        return folder, "tokenizer"
    if case == "unknown-family":
        text = (folder / "config.json").read_text().replace('"model_type": "bert"', '"model_type": "no-such-family"')
        (folder / "config.json").write_text(text)
        return folder, "no-such-family"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["corrupt-safetensors", "truncated-safetensors", "missing-tokenizer",
                                  "unknown-family"])
def test_broken_model_is_exit_2_with_one_line(tmp_path, corpus_file, capsys, case):
    folder, fragment = _broken(tmp_path, case)
    capsys.readouterr()
    status = cli.main(["scan", str(folder), "--corpus", str(corpus_file), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("patronus scan: error:")
    assert str(folder) in err[0] and fragment in err[0]


def test_blocked_pickle_under_allow_pickle_is_exit_2(tmp_path, corpus_file, capsys):
    folder, marker = _malicious_folder(tmp_path)
    capsys.readouterr()
    for extra in ([], ["--allow-pickle"]):
        status = cli.main(["scan", str(folder), "--corpus", str(corpus_file), "--quiet", "--device", "cpu", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1
        assert str(folder) in err[0]
    assert not marker.exists()


def test_unexpected_exceptions_are_exit_2_not_1(monkeypatch, capsys, tmp_path):
    from patronus_ext.cli.commands import scan as scan_command

    def boom(args):
        raise KeyError("something internal")

    monkeypatch.setattr(scan_command, "run", boom)
    status = cli.main(["scan", str(tmp_path)])
    assert status == 2
    assert "KeyError" in capsys.readouterr().err
