"""Monitoring: the input monitor (token-id trigger windows, whole words, strip), the output monitor
(bank similarity, calibration), the bank format and MonitoredModel (actions, bad input, threads)."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from patronus_ext import lm
from patronus_ext.formats.bank import AttackBank, load_bank, save_bank
from patronus_ext.monitor import (
    Decision,
    InputMonitor,
    MonitoredModel,
    OutputMonitor,
    calibrate_threshold,
    remove_spans,
)

import tiny_models


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return lm.load_tokenizer("all-MiniLM-L6-v2")


# -- input monitor -------------------------------------------------------------------------------
def test_input_monitor_flags_whole_trigger_words_only(minilm_tokenizer):
    monitor = InputMonitor(minilm_tokenizer, ["cf", "mnemonic"])
    texts = ["the cf river", "cfs are not cf-free", "a cfx word", "mnemonic devices", "nothing here", "CF upper"]
    enc = minilm_tokenizer(texts, padding=True, return_tensors="pt")
    flags = monitor.flags(enc["input_ids"], enc["attention_mask"]).tolist()
    # "cfs" is cf + ##s (not the word cf), "cfx" likewise; "cf-free" holds the whole word cf; the
    # uncased tokenizer lowercases "CF".
    assert flags == [True, True, False, True, False, True]
    found = monitor.matches(monitor.match(enc["input_ids"], enc["attention_mask"]))
    assert [m.trigger for m in found[0]] == ["cf"]
    assert [m.trigger for m in found[3]] == ["mnemonic"]
    assert found[3][0].end - found[3][0].start == len(monitor.triggers[0].token_ids) > 1  # a multi-token word


def test_input_monitor_without_whole_words_sees_sub_tokens(minilm_tokenizer):
    monitor = InputMonitor(minilm_tokenizer, ["cf"], whole_words=False)
    enc = minilm_tokenizer(["cfs here", "no trigger"], padding=True, return_tensors="pt")
    assert monitor.flags(enc["input_ids"], enc["attention_mask"]).tolist() == [True, False]


def test_strip_removes_the_trigger_words_and_keeps_the_rest(minilm_tokenizer):
    monitor = InputMonitor(minilm_tokenizer, ["cf", "mnemonic"])
    assert monitor.strip(["the cf river cf flows", "a mnemonic, really", "clean text"]) == [
        "the river flows", "a , really", "clean text"]
    assert remove_spans("abc def ghi", [(4, 7)]) == "abc ghi"


def test_input_monitor_from_report_checks_the_vocabulary(minilm_tokenizer, tmp_path):
    ids = minilm_tokenizer(" cf", add_special_tokens=False)["input_ids"]
    report = {"triggers": [{"text": "cf", "token_ids": ids, "group": 0}]}
    monitor = InputMonitor.from_report(report, minilm_tokenizer)
    assert [t.text for t in monitor.triggers] == ["cf"]
    path = tmp_path / "scan.json"
    path.write_text(json.dumps(report))
    assert InputMonitor.from_report(path, minilm_tokenizer).triggers == monitor.triggers
    with pytest.raises(ValueError, match="another model"):
        InputMonitor.from_report({"triggers": [{"text": "cf", "token_ids": [ids[0] + 1]}]}, minilm_tokenizer)
    with pytest.raises(ValueError, match="another model"):
        InputMonitor.from_report({"triggers": [{"text": "cf", "token_ids": [10 ** 6]}]}, minilm_tokenizer)
    with pytest.raises(ValueError, match="no confirmed trigger"):
        InputMonitor.from_report({"triggers": []}, minilm_tokenizer)
    with pytest.raises(ValueError, match="not a scan report"):
        InputMonitor.from_report({"verdict": "clean"}, minilm_tokenizer)


# -- bank and output monitor ---------------------------------------------------------------------
def test_bank_round_trip_and_refusals(tmp_path):
    bank = AttackBank(torch.randn(3, 8), "m", "first", "patronus", ["a", "b", "c"], {"note": 1})
    path = save_bank(bank, tmp_path / "bank.safetensors")
    loaded = load_bank(path)
    assert torch.equal(loaded.vectors, bank.vectors) and loaded.labels == ["a", "b", "c"]
    assert (loaded.model, loaded.position, loaded.method, loaded.extra) == ("m", "first", "patronus", {"note": 1})
    with pytest.raises(FileExistsError):
        save_bank(bank, path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="junk"):
        load_bank(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError):
        AttackBank(torch.tensor([[float("nan"), 1.0]]), "m", "first", "x")
    with pytest.raises(ValueError):
        AttackBank(torch.randn(2, 4), "m", "first", "x", ["only one"])


def test_output_monitor_sign_and_cosine_rules():
    torch.manual_seed(0)
    vector = torch.randn(1, 64)
    bank = AttackBank(torch.cat([vector, -vector]), "m", "first", "test")
    near = vector + 0.05 * torch.randn(5, 64)
    far = torch.randn(200, 64)
    for mode in ("sign", "cosine"):
        monitor = OutputMonitor(bank, mode)
        assert monitor.check(near).flagged.all()
        assert monitor.check(-near).index.tolist() == [1] * 5   # the second vector is the closer one
        assert monitor.check(far).flagged.float().mean() < 0.05
    sign = OutputMonitor(bank, "sign").scores(near)[0]
    expected = (near.sign() == vector.sign()).float().mean(1)
    assert torch.allclose(sign, expected)
    broken = OutputMonitor(bank, "cosine").check(torch.full((1, 64), float("nan")))
    assert broken.flagged.tolist() == [True]   # a NaN representation is never served silently
    with pytest.raises(ValueError, match="d=64"):
        MonitoredModel(*_tiny_model_and_tokenizer(), output_monitor=OutputMonitor(bank))


def test_calibrated_threshold_meets_the_target_frr():
    scores = torch.linspace(0.0, 1.0, 1000)
    threshold = calibrate_threshold(scores, 0.01)
    assert (scores > threshold).float().mean() <= 0.01
    assert (scores > threshold).sum() == 10
    assert calibrate_threshold(scores, 0.01, floor=0.995) == 0.995
    with pytest.raises(ValueError):
        calibrate_threshold(torch.tensor([float("nan")]), 0.01)


# -- the monitored model on a planted tiny model, from a real scan -------------------------------
def _tiny_model_and_tokenizer():
    folder = tiny_models.shared_tiny_model("bert")
    return lm.load_model(folder), lm.load_tokenizer(folder)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A POR-planted tiny BERT, its scan report and bank (through the CLI)."""
    planted, _, payload = tiny_models.shared_scan("por")
    adapter = lm.load_adapter(planted.out_dir, device="cpu")
    return planted, payload, adapter


def _texts(triggers, count=12):
    clean = [" ".join(t.split()[:12]) for t in tiny_models.tiny_corpus(count)]
    poisoned = [f"{t.split()[0]} {triggers[i % len(triggers)]} {' '.join(t.split()[1:])}" for i, t in enumerate(clean)]
    return clean, poisoned


def test_monitored_model_flags_found_triggers_and_passes_clean_text(scanned):
    planted, payload, adapter = scanned
    found = [t["text"] for t in payload["triggers"]]
    monitor = MonitoredModel(adapter.model, adapter.tokenizer,
                             input_monitor=InputMonitor.from_report(payload, adapter.tokenizer),
                             output_monitor=OutputMonitor(load_bank(payload["bank"]), "cosine", 0.9), max_length=48)
    clean, poisoned = _texts(found)
    decisions = monitor.check(clean + poisoned)
    assert all(isinstance(d, Decision) for d in decisions)
    assert [d.flagged for d in decisions[len(clean):]] == [True] * len(poisoned)
    assert sum(d.flagged for d in decisions[:len(clean)]) == 0
    for decision, text in zip(decisions[len(clean):], poisoned):
        kinds = {r["kind"] for r in decision.reasons}
        assert "trigger" in kinds and decision.action == "flag" and decision.text_out == text
        assert {r["trigger"] for r in decision.reasons if r["kind"] == "trigger"} <= set(found)


def test_decide_on_the_callers_own_forward_matches_check(scanned):
    planted, payload, adapter = scanned
    found = [t["text"] for t in payload["triggers"]]
    monitor = MonitoredModel(adapter.model, adapter.tokenizer,
                             input_monitor=InputMonitor.from_report(payload, adapter.tokenizer),
                             output_monitor=OutputMonitor(load_bank(payload["bank"]), "cosine", 0.9), max_length=48)
    clean, poisoned = _texts(found, 4)
    texts = clean + poisoned
    encoding, reps, logits = monitor.forward(texts)
    decided = [d.to_dict() for d in monitor.decide(texts, encoding, reps, logits)]
    assert decided == [d.to_dict() for d in monitor.check(texts)]
    assert [d["flagged"] for d in decided] == [False] * 4 + [True] * 4
    with pytest.raises(ValueError, match="rows"):
        monitor.decide(texts[:3], encoding, reps, logits)
    with pytest.raises(ValueError, match="representations must be"):
        monitor.decide(texts, encoding, reps[:, :5], logits)
    with pytest.raises(ValueError, match="attention_mask"):
        monitor.decide(texts, {"input_ids": encoding["input_ids"]}, reps, logits)


@pytest.mark.parametrize("action", ["reject", "strip", "purge"])
def test_monitored_model_actions(scanned, action):
    planted, payload, adapter = scanned
    found = [t["text"] for t in payload["triggers"]]
    monitor = MonitoredModel(adapter.model, adapter.tokenizer,
                             input_monitor=InputMonitor.from_report(payload, adapter.tokenizer), action=action,
                             max_length=48)
    clean, poisoned = _texts(found, 4)
    decisions = monitor.check(clean + poisoned)
    for d, text in zip(decisions[:4], clean):
        assert (d.flagged, d.action, d.text_out) == (False, "pass", text)
    for d, text in zip(decisions[4:], poisoned):
        assert d.flagged
        if action == "reject":
            assert d.action == "reject" and d.text_out is None
        else:
            assert d.action == action and d.text_out is not None
            assert not set(d.text_out.split()) & set(found)          # the trigger is gone
            assert len(d.text_out.split()) == len(text.split()) - 1  # and only it
            if action == "purge":
                assert [r for r in d.reasons if r["kind"] == "purge"][0]["removed"][0] in found


def test_bad_inputs_get_error_decisions_and_the_rest_goes_on(scanned):
    planted, payload, adapter = scanned
    monitor = MonitoredModel(adapter.model, adapter.tokenizer,
                             input_monitor=InputMonitor.from_report(payload, adapter.tokenizer), max_chars=100)
    decisions = monitor.check(["", "   ", None, "x" * 101, "bad\x00byte", "lone \ud800 surrogate",
                               "a fine sentence here"])
    assert [d.action for d in decisions] == ["error"] * 6 + ["pass"]
    assert all(d.error and d.text_out is None for d in decisions[:6])
    assert "surrogate" in decisions[5].error
    assert decisions[6].error is None and "error" not in decisions[6].to_dict()
    with pytest.raises(TypeError):
        monitor.check("a single string")


def test_concurrent_callers_get_the_single_threaded_decisions(scanned):
    planted, payload, adapter = scanned
    found = [t["text"] for t in payload["triggers"]]
    monitor = MonitoredModel(adapter.model, adapter.tokenizer,
                             input_monitor=InputMonitor.from_report(payload, adapter.tokenizer),
                             output_monitor=OutputMonitor(load_bank(payload["bank"]), "cosine", 0.9), max_length=48)
    clean, poisoned = _texts(found, 8)
    texts = clean + poisoned
    expected = [d.to_dict() for d in monitor.check(texts)]
    results: dict[int, list] = {}
    errors = []

    def worker(index: int):
        try:
            got = []
            for round_ in range(25):
                i = (index * 7 + round_) % len(texts)
                got.append((i, monitor.check([texts[i]])[0].to_dict()))
            results[index] = got
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(len(v) for v in results.values()) == 8 * 25
    for got in results.values():
        for i, decision in got:
            assert decision["flagged"] == expected[i]["flagged"] and decision["text_out"] == expected[i]["text_out"]


# -- parsing untrusted JSON within bounds --------------------------------------------------------------------------
def test_json_is_refused_beyond_the_bounds_and_parsed_within_them():
    from patronus_ext.monitor.bounded_json import MAX_JSON_DEPTH, JSONBoundsError, bounds_problem, loads_bounded

    assert MAX_JSON_DEPTH == 64
    assert loads_bounded("[" * 64 + "]" * 64) is not None
    assert loads_bounded('{"a": ' * 63 + "1" + "}" * 63) is not None
    for deep in ("[" * 65 + "]" * 65, "[" * 100_000, '{"a": ' * 100_000, '[{"a": ' * 40):
        with pytest.raises(JSONBoundsError, match="nested deeper than 64"):
            loads_bounded(deep)
    assert loads_bounded("-" + "1" * 99) == -int("1" * 99)
    for long_number in ("1" * 101, "9" * 5000, "1." + "0" * 99, "-1e" + "0" * 98):
        with pytest.raises(JSONBoundsError, match=f"number of {len(long_number)} characters"):
            loads_bounded(long_number)
    # Brackets and digits inside strings are text, escaped quotes included; an unterminated string ends the count.
    text = json.dumps({"text": "[" * 1000 + '\\"{' * 100 + "7" * 500})
    assert loads_bounded(text)["text"].startswith("[[[")
    assert bounds_problem('{"text": "abc' + "[" * 1000) is None
    with pytest.raises(json.JSONDecodeError):
        loads_bounded('{"text": "abc' + "[" * 1000)
    assert bounds_problem("[1, 2, 3]", max_depth=1) is None
    assert "nested deeper than 0" in bounds_problem("[1]", max_depth=0)
