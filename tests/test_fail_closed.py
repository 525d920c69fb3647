"""Fail closed: a broken model never gets a verdict.

A model folder corrupted in one way at a time (truncated or random weights, NaN/Inf tensors, an embedding table
that does not cover the tokenizer, a config that disagrees with its weights, weights that are links to device
files, a missing tokenizer) goes through ``patronus scan`` (both methods): exit 2 with one line naming the file
or the cause, never 0 or 1, never a traceback, nothing on stdout.  The monitor and serve builders, calibrate,
audit and purify refuse the same models.  (Outputs that cannot be written: tests/test_preflight.py.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from patronus_ext import lm
from patronus_ext.cli import main
from patronus_ext.lm.sanity import BrokenModelError, check_model_sanity
from conftest import one_error_line

import tiny_models

#: The scan options of the tiny CLI scans (TINY_SCAN of tests/test_detect.py through the flags).
TINY_SCAN_FLAGS = [*tiny_models.TINY_SCAN_ARGS, "--quiet", "--device", "cpu"]
TINY_LMS_FLAGS = ["--method", "lmsanitator", "--seeds", "1", "--max-length", "32", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    return path


# -- corrupting a model folder, one way at a time ----------------------------------------------------
def _copy(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


def _edit_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def _edit_config(folder: Path, **fields) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def _embedding_key(state: dict) -> str:
    return next(key for key in state if key.endswith("word_embeddings.weight"))


def _cut_vocabulary(state: dict, rows: int) -> None:
    """Every tensor indexed by token id (the embedding, the MLM bias) cut to ``rows``."""
    vocab = state[_embedding_key(state)].shape[0]
    for key, value in list(state.items()):
        if value.dim() >= 1 and value.shape[0] == vocab:
            state[key] = value[:rows].clone()


def _set_nan_query(state: dict) -> None:
    key = next(k for k in state if k.endswith("layer.0.attention.self.query.weight"))
    state[key] = torch.full_like(state[key], float("nan"))


def _set_inf(state: dict) -> None:
    key = next(k for k in state if k.endswith("layer.1.intermediate.dense.weight"))
    state[key][3, 5] = float("inf")


def _link(folder: Path, name: str, target: str) -> None:
    (folder / name).unlink()
    os.symlink(target, folder / name)


def corrupt(source: Path, folder: Path, case: str) -> list[str]:
    """Copy ``source`` to ``folder`` broken as ``case``; returns fragments the one error line must hold."""
    _copy(source, folder)
    weights = folder / "model.safetensors"
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    if case == "truncated-safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return ["model.safetensors", "not a valid safetensors file"]
    if case == "random-bytes":
        weights.write_bytes(random.Random(0).randbytes(4096))
        return ["model.safetensors", "not a valid safetensors file"]
    if case == "nan-weights":
        _edit_weights(folder, _set_nan_query)
        return ["layer.0.attention.self.query.weight", "NaN"]
    if case == "inf-weights":
        _edit_weights(folder, _set_inf)
        return ["layer.1.intermediate.dense.weight", "Inf"]
    if case == "embedding-cut-config-matched":
        _edit_weights(folder, lambda state: _cut_vocabulary(state, vocab - 100))
        _edit_config(folder, vocab_size=vocab - 100)
        return [f"{vocab - 100} rows", f"up to {vocab - 1}", "tokenizer"]
    if case == "embedding-cut-config-not-matched":
        _edit_weights(folder, lambda state: _cut_vocabulary(state, vocab - 100))
        return ["config.json", "word_embeddings.weight", f"{vocab - 100}", "vocab_size"]
    if case == "config-vocab-size-disagrees":
        _edit_config(folder, vocab_size=vocab + 7)
        return ["config.json", "word_embeddings.weight", f"{vocab + 7}", "vocab_size"]
    if case == "config-hidden-size-disagrees":
        _edit_config(folder, hidden_size=64)
        return ["config.json", "hidden_size 64"]
    if case == "added-token-beyond-embedding":
        tokenizer = lm.load_tokenizer(folder)
        tokenizer.add_tokens(["<never-trained>"])
        tokenizer.save_pretrained(folder)
        return [f"{vocab} rows", f"up to {vocab}", "tokenizer"]
    if case == "weights-link-to-dev-zero":
        _link(folder, "model.safetensors", "/dev/zero")
        return ["model.safetensors", "/dev/zero", "not a regular file"]
    if case == "weights-link-to-dev-null":
        _link(folder, "model.safetensors", "/dev/null")
        return ["model.safetensors", "/dev/null", "not a regular file"]
    if case == "weights-are-a-fifo":  # reading it would block forever
        weights.unlink()
        os.mkfifo(weights)
        return ["model.safetensors", "not a regular file"]
    if case == "weights-are-a-folder":
        weights.unlink()
        weights.mkdir()
        return ["model.safetensors", "a folder"]
    if case == "config-link-to-dev-zero":  # json.load of /dev/zero would read forever
        _link(folder, "config.json", "/dev/zero")
        return ["config.json", "/dev/zero", "not a regular file"]
    if case == "tokenizer-link-to-dev-zero":
        _link(folder, "tokenizer.json", "/dev/zero")
        return ["tokenizer.json", "/dev/zero", "not a regular file"]
    if case == "weights-link-dangling":
        _link(folder, "model.safetensors", str(folder / "gone.safetensors"))
        return ["model.safetensors", "gone.safetensors", "does not exist"]
    if case == "missing-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            (folder / name).unlink(missing_ok=True)
        return ["tokenizer"]
    if case == "missing-weights":
        weights.unlink()
        return ["model.safetensors"]
    raise AssertionError(case)


CASES = ("truncated-safetensors", "random-bytes", "nan-weights", "inf-weights", "embedding-cut-config-matched",
         "embedding-cut-config-not-matched", "config-vocab-size-disagrees", "config-hidden-size-disagrees",
         "added-token-beyond-embedding", "weights-link-to-dev-zero", "weights-link-to-dev-null",
         "weights-are-a-fifo", "weights-are-a-folder", "config-link-to-dev-zero", "tokenizer-link-to-dev-zero",
         "weights-link-dangling", "missing-tokenizer", "missing-weights")


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Every case of :data:`CASES`, built once from the shared tiny BERT."""
    root = tmp_path_factory.mktemp("corrupted")
    source = tiny_models.shared_tiny_model("bert")
    return {case: (root / case, corrupt(source, root / case, case)) for case in CASES}


@pytest.mark.parametrize("method_flags", [TINY_SCAN_FLAGS, TINY_LMS_FLAGS], ids=["patronus", "lmsanitator"])
@pytest.mark.parametrize("case", CASES)
def test_a_corrupted_model_folder_is_exit_2_with_one_line(corrupted, corpus_file, capsys, case, method_flags):
    folder, fragments = corrupted[case]
    capsys.readouterr()
    status = main(["scan", str(folder), "--corpus", str(corpus_file), *method_flags])
    line = one_error_line(capsys)
    assert status == 2, line
    assert str(folder) in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


def test_a_sound_model_passes_the_sanity_check_unchanged():
    adapter = lm.load_adapter(tiny_models.shared_tiny_model("bert"), device="cpu")
    model = adapter.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_model_sanity(model, adapter.tokenizer)
    assert model.training  # the probe forward leaves the model's mode ...
    assert torch.equal(rng, torch.get_rng_state())  # ... and the random stream (a scan's results) as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_passed_to_the_library_is_checked_too():
    from patronus_ext.detect import LMSanitatorConfig, ScanConfig, lmsanitator, scan

    adapter = lm.load_adapter(tiny_models.shared_tiny_model("bert"), device="cpu")
    with torch.no_grad():
        adapter.embedding_matrix()[7, 3] = float("nan")
    with pytest.raises(BrokenModelError, match="word_embeddings.weight holds 1 NaN"):
        scan(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(300), ScanConfig.profile("fast"), progress=False)
    with pytest.raises(BrokenModelError, match="word_embeddings.weight holds 1 NaN"):
        lmsanitator(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(300), LMSanitatorConfig.profile("fast"),
                    progress=False)


# -- the two cases found on main, on a tiny model over the real all-MiniLM-L6-v2 tokenizer ------------------
@pytest.fixture(scope="module")
def minilm_cases(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT over the 30,522-token MiniLM tokenizer: with one attention query matrix NaN, and with its
    embedding cut to 30,000 rows (``vocab_size`` matched) under the full tokenizer."""
    root = tmp_path_factory.mktemp("minilm")
    source = tiny_models.make_tiny_model(root, "minilm", lm_head=False)
    nan = _copy(source, root / "nan-query")
    _edit_weights(nan, _set_nan_query)
    cut = _copy(source, root / "embedding-30000")
    _edit_weights(cut, lambda state: _cut_vocabulary(state, 30000))
    _edit_config(cut, vocab_size=30000)
    return {"nan-query": nan, "embedding-30000": cut}


MINILM_FRAGMENTS = {"nan-query": ["layer.0.attention.self.query.weight", "NaN"],
                    "embedding-30000": ["30000 rows", "up to 30521", "tokenizer"]}


@pytest.mark.parametrize("case", sorted(MINILM_FRAGMENTS))
@pytest.mark.parametrize("method_flags", [TINY_SCAN_FLAGS, TINY_LMS_FLAGS], ids=["patronus", "lmsanitator"])
def test_found_cases_never_scan_clean(minilm_cases, corpus_file, capsys, case, method_flags):
    capsys.readouterr()
    status = main(["scan", str(minilm_cases[case]), "--corpus", str(corpus_file), *method_flags])
    line = one_error_line(capsys)
    assert status == 2, line
    assert str(minilm_cases[case]) in line
    for fragment in MINILM_FRAGMENTS[case]:
        assert fragment in line, f"{fragment!r} not in {line!r}"


@pytest.mark.parametrize("case", sorted(MINILM_FRAGMENTS))
def test_found_cases_are_never_served(minilm_cases, tmp_path, case):
    from patronus_ext.formats.bank import AttackBank, save_bank
    from patronus_ext.monitor.build import build_monitored_model, build_plain_model

    bank = save_bank(AttackBank(torch.randn(1, 32), "tiny", "first", "patronus"), tmp_path / "bank.safetensors")
    for build in (lambda m: build_monitored_model(m, bank=bank, device="cpu"),
                  lambda m: build_plain_model(m, device="cpu")):
        with pytest.raises(BrokenModelError) as caught:
            build(str(minilm_cases[case]))
        for fragment in [str(minilm_cases[case]), *MINILM_FRAGMENTS[case]]:
            assert fragment in str(caught.value)


def test_serve_refuses_a_broken_model_with_exit_2(minilm_cases, capsys):
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    capsys.readouterr()
    status = main(["serve", "--model", str(minilm_cases["nan-query"]), "--no-monitor", "--port", "0",
                   "--device", "cpu"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("patronus serve: error:")
    assert "NaN" in lines[0]


def test_monitor_refuses_a_broken_model_before_reading_the_stream(minilm_cases, tmp_path, capsys):
    from patronus_ext.formats.bank import AttackBank, save_bank

    bank = save_bank(AttackBank(torch.randn(1, 32), "tiny", "first", "patronus"), tmp_path / "bank.safetensors")
    stream = tmp_path / "in.jsonl"
    stream.write_text(json.dumps({"text": "a clean sentence"}) + "\n")
    capsys.readouterr()
    status = main(["monitor", "--model", str(minilm_cases["embedding-30000"]), "--bank", str(bank), "--input",
                   str(stream), "--output", str(tmp_path / "out.jsonl"), "--quiet", "--device", "cpu"])
    line = one_error_line(capsys, "monitor")
    assert status == 2 and "30000 rows" in line
    assert not (tmp_path / "out.jsonl").exists()


# -- the scan's own measurements: a non-finite one ends the scan, never a verdict --------------------------
def test_non_finite_measurements_end_a_scan_with_an_error(minilm_cases, monkeypatch):
    """Behind the up-front check: were a model to pass it and still measure NaN, the scan stops there."""
    from patronus_ext.detect import LMSanitatorConfig, ScanConfig, lmsanitator, scan
    from patronus_ext.detect.lmsanitator import inversion
    from patronus_ext.detect.patronus import scan as scan_module

    monkeypatch.setattr(scan_module, "check_model_sanity", lambda *args, **kwargs: None)
    monkeypatch.setattr(inversion, "check_model_sanity", lambda *args, **kwargs: None)
    adapter = lm.load_adapter(minilm_cases["nan-query"], device="cpu")
    corpus = tiny_models.tiny_corpus(300)
    config = ScanConfig.profile("fast").replace(num_triggers=4, batch_size=4, poison_copies=2, update_rounds=3,
                                                fuzz_loops=1, num_candidates=4, beam_size=2, max_length=32,
                                                verify_texts=16, corpus_limit=300)
    with pytest.raises(BrokenModelError, match="not finite"):
        scan(adapter.model, adapter.tokenizer, corpus, config, progress=False)
    lms = LMSanitatorConfig.profile("fast", corpus_limit=128, max_length=32, epochs=2, give_up_epoch=1, seeds=1)
    with pytest.raises(BrokenModelError, match="not finite"):
        lmsanitator(adapter.model, adapter.tokenizer, corpus, lms, progress=False)


def test_a_non_finite_candidate_measurement_is_an_error_not_a_miss():
    from patronus_ext.detect.patronus.verify import Verifier

    adapter = lm.load_adapter(tiny_models.shared_tiny_model("bert"), device="cpu")
    verifier = Verifier(adapter, tiny_models.tiny_corpus(8), 1, torch.Generator().manual_seed(0), 0.4, 0.9)
    assert verifier.make_check([5], 0.2, 0.95, "verified", 8, 0).confirmed
    for diff, poison in ((float("nan"), 0.95), (0.2, float("nan")), (float("inf"), 0.5)):
        with pytest.raises(BrokenModelError, match="not finite"):
            verifier.make_check([5], diff, poison, "verified", 8, 0)


# -- the other verbs that judge a model -----------------------------------------------------------------
def test_calibrate_refuses_a_broken_model_before_scanning_any(corrupted, corpus_file, capsys, monkeypatch):
    from patronus_ext.detect.patronus import calibrate as calibrate_module

    scanned = []
    real_scan = calibrate_module.scan
    monkeypatch.setattr(calibrate_module, "scan", lambda *a, **k: scanned.append(1) or real_scan(*a, **k))
    folder, _ = corrupted["nan-weights"]
    capsys.readouterr()
    status = main(["calibrate", str(tiny_models.shared_tiny_model("bert")), str(folder), "--corpus",
                   str(corpus_file), "--loops", "1", "--quiet", "--device", "cpu"])
    line = one_error_line(capsys, "calibrate")
    assert status == 2 and str(folder) in line and "NaN" in line
    assert not scanned  # the clean model was not scanned first: every model is checked before any scan


def test_audit_records_a_broken_model_as_an_error(corrupted, corpus_file, tmp_path, capsys):
    from patronus_ext.audit import load_results

    nan_folder, _ = corrupted["nan-weights"]
    cut_folder, _ = corrupted["embedding-cut-config-matched"]
    out = tmp_path / "audit"
    capsys.readouterr()
    status = main(["audit", str(nan_folder), str(cut_folder), "--out", str(out), "--method", "both", "--ray",
                   "local", "--corpus", str(corpus_file), "--max-length", "32", "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    records = load_results(out)
    assert len(records) == 4  # two models, two methods
    for record in records:
        assert record["verdict"] is None and record["report"] is None
        assert "NaN" in record["error"] if record["model"] == str(nan_folder) else "rows" in record["error"]


def test_purify_refuses_a_broken_model_before_any_work(corrupted, tmp_path):
    from patronus_ext import purify

    folder, _ = corrupted["nan-weights"]
    with pytest.raises(BrokenModelError, match="NaN"):
        purify.run_purify("adv-pt", folder, tmp_path / "purified", triggers=["cf"], measure=False, device="cpu")
    assert not (tmp_path / "purified").exists()
    # The clean weights fine-mix reads are checked the same way.
    with pytest.raises(BrokenModelError, match="NaN"):
        purify.run_purify("fine-mix", tiny_models.shared_tiny_model("bert"), tmp_path / "mixed", pretrained=folder,
                          measure=False, device="cpu")
    assert not (tmp_path / "mixed").exists()


def test_purify_cli_refuses_a_broken_model(corrupted, tmp_path, capsys):
    folder, _ = corrupted["embedding-cut-config-matched"]
    capsys.readouterr()
    status = main(["purify", "--method", "fine-mix", "--model", str(tiny_models.shared_tiny_model("bert")),
                   "--pretrained", str(folder), "--out", str(tmp_path / "mixed"), "--no-measure", "--device", "cpu"])
    line = one_error_line(capsys, "purify")
    assert status == 2 and str(folder) in line and "rows" in line
