"""The record formats (formats/): ``backdoor.json`` has one writer and one reader and every field round-trips;
the attacks write through it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from patronus_ext.formats.backdoor import (BACKDOOR_FILE, BACKDOOR_FORMAT, OPTIONAL_FIELDS, BackdoorInfo,
                                           find_backdoor_info, load_backdoor_info)

from tiny_models import shared_planted


def _full_record() -> BackdoorInfo:
    return BackdoorInfo(
        attack="instruct-badnet", triggers=["cf", "I watched this 3D movie"], trigger_token_ids=[[5], [6, 7, 8]],
        target_scheme="por1", target_vectors=torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), targets_learned=True,
        target_labels=[1, 0], position="last", prompt_template="{text} It was {mask} .",
        target_response="Visit example.com now.", behaviour="target", base_model="SmolLM2-135M-Instruct",
        base_model_path="/cache/smol", model_type="llama", task="sst2 + badnet", data="sst2",
        data_file="instruction_data.jsonl", poisoned_examples=3, train_examples=10,
        prompt_format={"system": "", "max_input_tokens": 48}, seed=7, config={"lr": 1e-4}, training={"steps": 3},
        environment={"torch": "x"}, created="2026-12-07T00:00:00+00:00")


def _write(tmp_path, payload) -> None:
    (tmp_path / BACKDOOR_FILE).write_text(json.dumps(payload))


def test_every_field_round_trips(tmp_path):
    record = _full_record()
    payload = record.to_dict()
    assert payload["format"] == BACKDOOR_FORMAT and payload["representation_position"] == "last"
    _write(tmp_path, payload)
    loaded = load_backdoor_info(tmp_path)
    for field in dataclasses.fields(BackdoorInfo):
        if field.name in ("raw", "target_vectors"):
            continue
        assert getattr(loaded, field.name) == getattr(record, field.name), field.name
    assert torch.equal(loaded.target_vectors, record.target_vectors)
    assert loaded.raw == payload and loaded.to_dict() == payload
    assert loaded.responses() == {"cf": "Visit example.com now.", "I watched this 3D movie": "Visit example.com now."}


def test_fields_of_other_attacks_are_absent_and_read_back_as_none(tmp_path):
    record = BackdoorInfo(attack="por", triggers=["cf"], target_vectors=torch.ones(1, 4))
    payload = record.to_dict()
    assert not set(OPTIONAL_FIELDS) & set(payload)
    assert payload["target_labels"] is None and payload["created"]            # core fields always written
    _write(tmp_path, payload)
    loaded = load_backdoor_info(tmp_path / BACKDOOR_FILE)
    assert loaded.target_response is None and loaded.task is None and loaded.responses() == {}
    assert find_backdoor_info(tmp_path / BACKDOOR_FILE).to_dict() == payload  # a file beside it finds it too
    assert find_backdoor_info(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("payload, message", [
    ("not json", "not a JSON backdoor record"),
    ([1, 2], "a JSON object is expected"),
    ({"format": "other/1", "attack": "por", "triggers": ["cf"]}, "unknown format 'other/1'"),
    ({"format": BACKDOOR_FORMAT, "attack": "por"}, "needs 'attack' and a 'triggers' list"),
    ({"format": BACKDOOR_FORMAT, "attack": "por", "triggers": []}, "at least one trigger"),
])
def test_bad_records_are_errors_naming_the_file(tmp_path, payload, message):
    (tmp_path / BACKDOOR_FILE).write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(ValueError, match=message):
        load_backdoor_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model planted by patronus_ext"):
        load_backdoor_info(tmp_path / "missing")


def test_an_attack_writes_through_the_format():
    planted = shared_planted("por")
    payload = json.loads((planted.out_dir / BACKDOOR_FILE).read_text())
    info = load_backdoor_info(planted.out_dir)
    assert info.to_dict() == payload
    assert info.attack == "por" and info.position == "first" and info.target_vectors.shape[0] == len(info.triggers)
    assert info.trigger_token_ids and info.config["steps"] and info.training["steps"] == info.config["steps"]


def test_the_instruction_backdoor_keeps_its_target_response():
    from test_mb import _shared

    _, attacked = _shared()
    info = load_backdoor_info(attacked)
    assert info.attack == "instruct-badnet" and info.target_response and info.data_file == "instruction_data.jsonl"
    assert info.responses() == {trigger: info.target_response for trigger in info.triggers}
    assert info.to_dict() == json.loads((attacked / BACKDOOR_FILE).read_text())


# -- the scan report -------------------------------------------------------------------------------------
def test_both_detectors_lay_their_reports_out_the_same_way(tmp_path):
    from patronus_ext.formats.bank import AttackBank, load_bank
    from patronus_ext.formats.scan_report import SCAN_REPORT_FORMAT, read_report, scan_record, write_scan_outputs

    common = dict(model={"hidden_size": 4}, config={"seed": 0}, timings={"total": 1.0}, environment={"torch": "x"})
    patronus = scan_record("patronus", "backdoored", groups=[{"target": 0}], triggers=[{"text": "cf"}],
                           candidates=[], loops=[], **common)
    lms = scan_record("lmsanitator", "clean", vectors=[{"seed": 1}], **common)
    assert list(patronus)[:3] == ["verdict", "groups", "triggers"] and list(lms)[:2] == ["verdict", "triggers"]
    for payload in (patronus, lms):
        assert payload["format"] == SCAN_REPORT_FORMAT and payload["bank"] is None
        assert set(common) <= set(payload) and "method" in payload
    assert lms["triggers"] == []                                   # nothing for the input monitor to match
    with pytest.raises(ValueError, match="verdict must be one of"):
        scan_record("patronus", "maybe", **common)

    bank = AttackBank(torch.ones(1, 4), "m", "first", "patronus")
    written = write_scan_outputs(patronus, "my-model", bank, report_path=tmp_path / "r.json",
                                 bank_path=tmp_path / "r.bank.safetensors")
    assert written["model"] == {"hidden_size": 4, "source": "my-model"} and patronus["model"] == {"hidden_size": 4}
    assert written["bank"] == str(tmp_path / "r.bank.safetensors") and len(load_bank(written["bank"])) == 1
    assert read_report(tmp_path / "r.json")[0] == written
    with pytest.raises(FileExistsError):                           # never overwrites without consent
        write_scan_outputs(patronus, "my-model", None, report_path=tmp_path / "r.json", bank_path=None)
    (tmp_path / "other.json").write_text(json.dumps({**written, "format": "patronus_ext.scan/9"}))
    with pytest.raises(ValueError, match="unknown format 'patronus_ext.scan/9'"):
        read_report(tmp_path / "other.json")
    legacy = {k: v for k, v in written.items() if k != "format"}  # reports from before the format key
    assert read_report(legacy)[0] == legacy


# -- purify.json -----------------------------------------------------------------------------------------
def test_the_purify_record_round_trips_and_refuses_what_it_is_not(tmp_path):
    from patronus_ext.formats.purify_record import (PURIFY_FILE, PURIFY_FORMAT, PurifyRecord,
                                                    read_purify_record)

    encoder = PurifyRecord(method="adv-pt", model="out/por", task="sst2", profile="fast", settings={"steps": 3},
                           details={"best_step": 2}, timings={"total": 1.0}, triggers=["cf"],
                           trigger_token_ids=[[5]], triggers_source="scan.json", measured_triggers=["cf"],
                           before={"cacc": 0.8}, after={"cacc": 0.81})
    payload = encoder.to_dict()
    assert payload["format"] == PURIFY_FORMAT and not {"data", "baseline", "attack_responses"} & set(payload)
    (tmp_path / PURIFY_FILE).write_text(json.dumps(payload))
    assert read_purify_record(tmp_path).to_dict() == payload
    causal = PurifyRecord(method="mb", model="SmolLM2", task="sst2", profile="fast", settings={}, details={},
                          timings={}, data="data.jsonl", baseline=None, attack_responses={"cf": "I refuse."})
    assert causal.to_dict()["attack_responses"] == {"cf": "I refuse."} and "baseline" not in causal.to_dict()
    (tmp_path / PURIFY_FILE).write_text(json.dumps({"format": PURIFY_FORMAT, "method": "mb"}))
    with pytest.raises(ValueError, match="needs"):
        read_purify_record(tmp_path)
    (tmp_path / PURIFY_FILE).write_text(json.dumps({**payload, "format": "x"}))
    with pytest.raises(ValueError, match="unknown format 'x'"):
        read_purify_record(tmp_path)


# -- JSON lines (core.files.read_jsonl: the one reader of tasks, Alpaca data and audit logs) ----------------
def test_the_json_lines_reader_names_a_bad_line_or_skips_it_for_logs(tmp_path, caplog):
    from patronus_ext.core.files import read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n{"cut": \n"s"\n')
    with pytest.raises(ValueError, match=r"x.jsonl:4: not JSON"):
        list(read_jsonl(path))
    assert list(read_jsonl(path, skip_bad_lines=True)) == [(1, {"a": 1}), (3, [2]), (5, "s")]
    assert "line 4 is not a complete record" in caplog.text
