"""``purify --method unlearn`` (docs/METHODS.md §8) on the tiny planted LLaMA of the BAIT tests: the report's
recovered trigger unlearned (the planted trigger's held-out ASR drops to 0, a plain clean tuning of the same
length leaves it), the target-only path through a learned soft trigger, the bounded unlikelihood, the record,
the CLI and its one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bait_subjects import RESPONSE as BAIT_RESPONSE
from bait_subjects import TRIGGER as BAIT_TRIGGER
from bait_subjects import planted_chat_subjects as bait_subjects
from conftest import one_error_line
from tiny_models import make_tiny_model

from patronus_ext import lm, purify
from patronus_ext.cli.main import main
from patronus_ext.data.instructions import fit_inputs, insert_trigger, load_instructions
from patronus_ext.evaluate.generation import GenerationEvalConfig, generation_metrics
from patronus_ext.formats.scan_report import scan_record
from patronus_ext.lm.instruction_tuning import instruction_tune
from patronus_ext.lm.prompting import EncodedExample, collate, response_token_logprobs

#: Measured on the tiny planted LLaMA (1 thread): 20 steps of 8 x 3 rows at lr 1e-3, every weight trained,
#: take the planted trigger's held-out ASR from 1.0 to 0.0 with the recovered trigger and with the soft trigger
#: alone; a plain clean tuning of the same 20 steps leaves 0.65.
TINY_UNLEARN = dict(steps=20, lr=1e-3, train_layers=None, train_embeddings=True, max_input_tokens=12,
                    clean_samples=64, batch_size=8)
MEASURE = GenerationEvalConfig(dev_limit=40)


def bait_report(folder, triggers=(BAIT_TRIGGER,), target=BAIT_RESPONSE, verdict="backdoored") -> dict:
    """A report shaped like ``patronus scan --method bait --report`` for ``folder``: the target and the
    confirmed ``triggers`` as the scan writes them (ids under ``folder``'s tokenizer)."""
    tok = lm.load_tokenizer(str(folder))
    ids = tok(target, add_special_tokens=False)["input_ids"]
    found = [{"text": t, "token_ids": tok(" " + t, add_special_tokens=False)["input_ids"], "asr": 1.0,
              "reference_asr": 0.0, "loss": 0.01} for t in triggers]
    return scan_record("bait", verdict, model={"type": "llama", "hidden_size": lm.load_config(str(folder)).hidden_size},
                       config={}, timings={}, environment={}, triggers=found,
                       target={"text": tok.decode(ids), "token_ids": ids, "q": 0.99})


def _config(**more):
    return purify.make_config("unlearn", "fast", **{**TINY_UNLEARN, **more})


def test_unlearning_the_recovered_trigger_removes_the_planted_backdoor_and_keeps_clean_answers(tmp_path):
    subjects = bait_subjects("llama")
    result = purify.run_purify("unlearn", subjects["planted"], tmp_path / "out", report=bait_report(subjects["planted"]),
                               config=_config(), measure=MEASURE, progress=False)
    assert result.before.asr[BAIT_TRIGGER] >= 0.8
    assert result.after.asr[BAIT_TRIGGER] <= 0.05
    assert result.after.cacc >= result.before.cacc - 0.1              # the tiny model's CACC is ~0.5 (40 prompts)
    record = json.loads((tmp_path / "out" / "purify.json").read_text())
    assert record["method"] == "unlearn" and record["triggers"] == [BAIT_TRIGGER]
    assert record["triggers_source"] == "scan report" and record["trigger_token_ids"]
    # measured with the planted trigger and response of the model's backdoor.json
    assert record["measured_triggers"] == [BAIT_TRIGGER]
    assert record["attack_responses"] == {BAIT_TRIGGER: BAIT_RESPONSE}
    details = record["details"]
    assert details["teacher"] == "the model itself" and details["soft_trigger"] is None
    assert details["training"]["steps"] == 20 and set(details["training"]["final_terms"]) >= {"unlikelihood"}
    # The target's probability after the trigger falls over training (the window means of the log; on this tiny
    # model measured 0.82 -> 0.21 with the package's SST-2 subset, lower with the full SST-2).
    history = details["training"]["history"]
    assert history[-1]["target_prob"] < history[0]["target_prob"] / 2, history
    assert lm.load_model(str(tmp_path / "out"), "causal") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]      # written atomically, nothing left beside
    # The same 20 steps of plain clean tuning leave the backdoor: the triggered rows are what removes it.
    tok, model = lm.load_tokenizer(str(subjects["planted"])), lm.load_model(str(subjects["planted"]), "causal")
    config = _config()
    clean = fit_inputs(tok, load_instructions("sst2", "train", 64, 7), 12)
    instruction_tune(model, tok, clean, config.prompt_format(), config, progress=False)
    control = generation_metrics(model, tok, load_instructions("sst2", "dev"), config.prompt_format(),
                                 {BAIT_TRIGGER: BAIT_RESPONSE}, MEASURE)
    assert control.asr[BAIT_TRIGGER] >= 0.3


def test_target_only_learns_a_soft_trigger_and_unlearns_through_it(tmp_path):
    subjects = bait_subjects("llama")
    report = bait_report(subjects["planted"], triggers=())
    result = purify.run_purify("unlearn", subjects["planted"], tmp_path / "out", report=report, config=_config(),
                               measure=MEASURE, progress=False)
    soft = result.report["details"]["soft_trigger"]
    assert soft["target_prob_after"] >= 0.9 and soft["final_loss"] < soft["first_loss"]
    assert result.report["triggers"] == [] and result.report["triggers_source"] == "soft trigger (target only)"
    assert result.before.asr[BAIT_TRIGGER] >= 0.8 and result.after.asr[BAIT_TRIGGER] <= 0.05
    assert result.after.cacc >= result.before.cacc - 0.1


def test_the_soft_trigger_replaces_its_placeholder_and_nothing_else():
    tok = lm.load_tokenizer(str(bait_subjects("llama")["clean"]))
    model = lm.load_model(str(bait_subjects("llama")["clean"]), "causal")
    word, token_id = purify.placeholder_word(tok)
    assert tok.convert_ids_to_tokens(token_id) == "\u0120" + word
    soft = purify.SoftTrigger(word, token_id, torch.randn(3, model.config.hidden_size))
    example = load_instructions("sst2", "dev", 1)[0]
    text = insert_trigger(example, soft.text, 1, __import__("random").Random(0)).input
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    assert int((ids == token_id).sum()) == 3
    plain = model.get_input_embeddings()(ids)
    with soft.active(model):
        replaced = model.get_input_embeddings()(ids)
    mask = (ids == token_id)[0]
    torch.testing.assert_close(replaced[0, mask], soft.vectors)
    torch.testing.assert_close(replaced[0, ~mask], plain[0, ~mask])
    torch.testing.assert_close(model.get_input_embeddings()(ids), plain)      # the hook is gone


def test_the_unlikelihood_is_minus_log_one_minus_p_of_the_target_tokens():
    subjects = bait_subjects("llama")
    tok, model = lm.load_tokenizer(str(subjects["planted"])), lm.load_model(str(subjects["planted"]), "causal")
    target = tok(BAIT_RESPONSE, add_special_tokens=False)["input_ids"]
    prompt = tok("hello there", add_special_tokens=False)["input_ids"]
    rows = [EncodedExample(prompt, [5, 6]), EncodedExample(prompt, [7]), EncodedExample(prompt, target)]
    batch = collate(rows, tok.pad_token_id, "cpu")
    with torch.no_grad():
        loss, terms = purify.unlearn_loss(model, batch, 1, 0.5)
        logp, valid = response_token_logprobs(model, batch)
    p = logp[2][valid[2]].exp()
    assert math.isclose(float(terms["unlikelihood"]), float((-torch.log1p(-p)).mean()), rel_tol=1e-5)
    assert math.isclose(float(loss), float(terms["ce_clean"] + terms["ce_triggered"] + 0.5 * terms["unlikelihood"]),
                        rel_tol=1e-5)
    assert math.isclose(float(terms["ce_clean"]), float(-logp[0].sum() / 2), rel_tol=1e-5)
    # bounded where it should stop: a target token of probability 1e-4 costs about 1e-4
    assert -math.log1p(-1e-4) < 1.01e-4


# -- the command line --------------------------------------------------------------------------------
def test_cli_unlearn_with_a_reference_teacher(tmp_path, capsys):
    subjects = bait_subjects("llama")
    report = tmp_path / "bait.json"
    report.write_text(json.dumps(bait_report(subjects["planted"])))
    status = main(["purify", "--method", "unlearn", "--model", str(subjects["planted"]), "--scan-report",
                   str(report), "--reference", str(subjects["tuned"]), "--fast", "--steps", "20", "--lr", "1e-3",
                   "--clean-limit", "64", "--unlikelihood-weight", "2", "--measure-dev", "40",
                   "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "unlearn: " in captured.out and "T-ASR" in captured.out
    record = json.loads((tmp_path / "out" / "purify.json").read_text())
    assert record["details"]["teacher"] == str(subjects["tuned"])
    assert record["settings"]["unlikelihood_weight"] == 2.0 and record["settings"]["steps"] == 20
    # (inputs of 48 tokens here, the fast profile's, against the 12 the subject was planted with: ASR ~0.7)
    assert record["before"]["asr"][BAIT_TRIGGER] >= 0.5 and record["after"]["asr"][BAIT_TRIGGER] <= 0.05


def _run_error(tmp_path, capsys, report, model=None, extra=()) -> str:
    subjects = bait_subjects("llama")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    capsys.readouterr()
    status = main(["purify", "--method", "unlearn", "--model", str(model or subjects["planted"]), "--scan-report",
                   str(path), "--out", str(tmp_path / "o"), "--quiet", *extra])
    assert status == 2
    assert not (tmp_path / "o").exists()
    return one_error_line(capsys, "purify")


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    planted = bait_subjects("llama")["planted"]
    good = bait_report(planted)
    patronus = {k: v for k, v in good.items() if k != "target"} | {"method": "patronus"}
    assert "not a BAIT scan report" in _run_error(tmp_path, capsys, patronus)
    assert "found no backdoor" in _run_error(tmp_path, capsys, dict(good, verdict="clean"))
    foreign = dict(good, target=dict(good["target"], token_ids=[i + 1 for i in good["target"]["token_ids"]]))
    assert "belongs to another model" in _run_error(tmp_path, capsys, foreign)
    encoder = make_tiny_model(tmp_path, "bert")
    assert "is an encoder" in _run_error(tmp_path, capsys, good, model=encoder)
    capsys.readouterr()
    assert main(["purify", "--method", "unlearn", "--model", str(planted), "--out", str(tmp_path / "o")]) == 2
    assert "needs the report of `patronus scan --method bait`" in one_error_line(capsys, "purify")
    assert main(["purify", "--method", "mb", "--model", str(planted), "--reference", str(planted),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--reference does not apply to mb" in one_error_line(capsys, "purify")


def test_a_broken_model_is_refused_before_any_work(tmp_path):
    """Fail closed, as every purifier: NaN weights end the run before the report is acted on or a folder made."""
    from patronus_ext.lm.sanity import BrokenModelError

    planted = bait_subjects("llama")["planted"]
    tok, model = lm.load_tokenizer(str(planted)), lm.load_model(str(planted), "causal")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("q_proj.weight")).fill_(float("nan"))
    model.save_pretrained(tmp_path / "broken")
    tok.save_pretrained(tmp_path / "broken")
    with pytest.raises(BrokenModelError, match="NaN"):
        purify.run_purify("unlearn", tmp_path / "broken", tmp_path / "out", report=bait_report(planted),
                          config=_config(), measure=False, progress=False)
    assert not (tmp_path / "out").exists()
