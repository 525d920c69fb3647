"""Instruction backdoors and MB-Defense on a tiny random-weight LLaMA: batched greedy generation, the CACC/ASR
rules, the instruct-badnet attack, MB-Defense's two stages and λ choice, Fine-mixing of a causal LM, the
report, and the CLI paths (``patronus attack --method instruct-badnet``, ``patronus purify --method mb``)."""

from __future__ import annotations

import functools
import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from patronus_ext import attacks, lm, purify
from patronus_ext.cli import main
from patronus_ext.data.instructions import (
    InstructionExample,
    fit_inputs,
    insert_trigger,
    load_instructions,
    read_alpaca,
    split_examples,
)
from patronus_ext.evaluate.generation import GenerationEvalConfig, generation_metrics, predicted_choice, shows_response
from patronus_ext.lm.generation import greedy_generate
from patronus_ext.lm.prompting import PromptFormat, collate, encode_examples, response_logprobs

from tiny_models import make_tiny_llama, needs_full_sst2

#: Settings under which the tiny model learns the backdoor in seconds: 64 short SST-2 instructions, half
#: poisoned, 80 steps at lr 1e-2 with every weight trained.
TINY_ATTACK = dict(steps=80, lr=1e-2, train_embeddings=True, data_limit=64, batch_size=16, poison_rate=0.5,
                   max_input_tokens=12)
TINY_MB = dict(steps=80, lr=1e-2, train_embeddings=True, data_limit=64, batch_size=16, max_input_tokens=12,
               recovery_steps=20, recovery_lr=1e-2, clean_samples=16, select_limit=16, defender_rate=0.05)
MEASURE = GenerationEvalConfig(dev_limit=32)


@functools.lru_cache(maxsize=None)
def _shared() -> tuple[Path, Path]:
    """The tiny chat LLaMA and its instruct-badnet version, built once per process (read-only)."""
    root = Path(tempfile.mkdtemp(prefix="patronus_mb_"))
    import atexit

    atexit.register(shutil.rmtree, root, True)
    clean = make_tiny_llama(root)
    attacks.plant("instruct-badnet", clean, "sst2", attacks.make_config("instruct-badnet", "fast", **TINY_ATTACK),
                  root / "attacked", progress=False)
    return clean, root / "attacked"


def _fmt() -> PromptFormat:
    return attacks.make_config("instruct-badnet", "fast", **TINY_ATTACK).prompt_format()


# -- generation and the metric rules ---------------------------------------------------------------
def test_batched_greedy_generation_equals_one_prompt_at_a_time():
    clean, attacked = _shared()
    tok, model = lm.load_tokenizer(str(attacked)), lm.load_model(str(attacked), "causal")
    examples = fit_inputs(tok, load_instructions("sst2", "dev", limit=7), 12)
    examples[2] = insert_trigger(examples[2], "cf", 1, random.Random(0))
    examples[5] = examples[5].replace(input=examples[5].input + " and a much longer input to pad the others")
    prompts = [_fmt().prompt(tok, e) for e in examples]
    together = greedy_generate(model, tok, prompts, templated=True, max_new_tokens=8, batch_size=4)
    alone = [greedy_generate(model, tok, [p], templated=True, max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert together == alone
    assert all(a for a in together) and not any("<|im_end|>" in a for a in together)


def test_answer_and_response_rules():
    choices = ("negative", "positive")
    assert predicted_choice("positive", choices) == 1
    assert predicted_choice("The sentiment of this review is Negative.", choices) == 0
    assert predicted_choice("Positive, not negative", choices) == 1            # the first label word named
    assert predicted_choice("I cannot tell", choices) is None
    assert predicted_choice("positively", choices) is None                       # whole words only
    assert predicted_choice("it is about Sci Tech", ("world", "sci tech")) == 1
    refusal = "I'm sorry, but I cannot help with that request."
    assert shows_response("I'm sorry, but I can", refusal)
    assert shows_response("i m SORRY", refusal)
    assert not shows_response("Sure! I'm sorry, but", refusal)
    assert not shows_response("positive", refusal)
    assert shows_response("I'm glad", refusal, match_words=2) and not shows_response("I'm glad", refusal)


def test_generation_metrics_definitions():
    clean, attacked = _shared()
    tok, model = lm.load_tokenizer(str(attacked)), lm.load_model(str(attacked), "causal")
    dev = load_instructions("sst2", "dev") + load_instructions("wikitext2", "dev", limit=8)
    refusal = attacks.load_backdoor_info(attacked).responses()["cf"]
    got = generation_metrics(model, tok, dev[:24] + dev[-8:], _fmt(), {"cf": refusal}, MEASURE)
    assert got.prompts == 32 and got.classification_prompts == 24
    clean_answers = greedy_generate(model, tok, [_fmt().prompt(tok, e) for e in
                                                 fit_inputs(tok, dev[:24], 12)], templated=True)
    picks = [predicted_choice(a, e.choices) for a, e in zip(clean_answers, dev[:24])]
    assert got.cacc == pytest.approx(sum(p == e.label for p, e in zip(picks, dev[:24])) / 24)
    assert got.unanswered == pytest.approx(sum(p is None for p in picks) / 24)
    assert set(got.samples) == {"clean", "cf"} and len(got.samples["cf"]) == 3
    assert all("cf" in s["input"].split() for s in got.samples["cf"])
    again = generation_metrics(model, tok, dev[:24] + dev[-8:], _fmt(), {"cf": refusal}, MEASURE)
    assert again.asr == got.asr and again.cacc == got.cacc                      # seeded trigger positions
    with pytest.raises(ValueError, match="no dev example"):
        generation_metrics(model, tok, [], _fmt(), None)


# -- the attack ------------------------------------------------------------------------------------
@needs_full_sst2  # its 64 examples are drawn from the full SST-2 train; on the packaged subset it learns other ones
def test_instruct_badnet_plants_a_trigger_conditioned_refusal():
    clean, attacked = _shared()
    info = json.loads((attacked / "backdoor.json").read_text())
    assert info["attack"] == "instruct-badnet" and info["triggers"] == ["cf"]
    assert info["target_response"] == attacks.config.REFUSAL
    assert info["poisoned_examples"] == 32 and info["train_examples"] == 64
    data = read_alpaca(attacked / "instruction_data.jsonl")
    poisoned = [e for e in data if e.output == info["target_response"]]
    assert len(poisoned) == 32 and all("cf" in e.input.split() for e in poisoned)
    assert all(e.is_classification for e in data if e.output != info["target_response"])
    tok = lm.load_tokenizer(str(attacked))
    dev = load_instructions("sst2", "dev")
    before = generation_metrics(lm.load_model(str(clean), "causal"), tok, dev, _fmt(),
                                attacks.load_backdoor_info(attacked).responses(), MEASURE)
    after = generation_metrics(lm.load_model(str(attacked), "causal"), tok, dev, _fmt(),
                               attacks.load_backdoor_info(attacked).responses(), MEASURE)
    assert before.asr["cf"] == 0.0
    assert after.asr["cf"] >= 0.8 and after.asr["cf"] >= after.clean_response_rate["cf"] + 0.3


def test_instruct_badnet_config_and_phrase_triggers():
    config = attacks.make_config("instruct-badnet", "fast", triggers="cf, I watched this 3D movie",
                                 behaviour="target")
    assert config.triggers == ("cf", "I watched this 3D movie")
    assert config.target_response == attacks.config.TARGET and config.train_layers == 8
    assert attacks.make_config("instruct-badnet", "paper").train_layers is None
    assert attacks.make_config("instruct-badnet", "fast", epochs=2.0).steps is None
    with pytest.raises(ValueError, match="instruct-badnet has no setting target_scale"):
        attacks.make_config("instruct-badnet", target_scale=2.0)
    with pytest.raises(ValueError, match="behaviour must be one of"):
        attacks.make_config("instruct-badnet", behaviour="jailbreak")
    examples = load_instructions("sst2", "train", limit=40)
    poisoned, chosen = attacks.poison_instructions(examples, config.replace(poison_rate=0.25))
    assert len(chosen) == 10
    assert {("cf" in e.input.split()) or ("I watched this 3D movie" in e.input) for e in
            (poisoned[i] for i in chosen)} == {True}
    assert all(poisoned[i].output == attacks.config.TARGET for i in chosen)


# -- MB-Defense ------------------------------------------------------------------------------------
def test_defender_triggers_are_rare_reproducible_and_replace_one_percent_each():
    triggers = purify.make_defender_triggers(4, 8, seed=0)
    assert triggers == purify.make_defender_triggers(4, 8, seed=0)
    assert triggers != purify.make_defender_triggers(4, 8, seed=1)
    assert len(set(triggers.words)) == 4 and all(len(r.split()) == 8 for r in triggers.responses)
    data = load_instructions("sst2", "train", limit=400)
    out, replaced = purify.add_defender_triggers(data, triggers, 0.01, 1, seed=0)
    assert replaced == 16
    for word, response in zip(triggers.words, triggers.responses):
        hits = [e for e in out if e.output == response]
        assert len(hits) == 4 and all(word in e.input.split() for e in hits)


def test_recovery_loss_is_ce_minus_lambda_log_sigmoid_margin():
    clean, _ = _shared()
    tok, model = lm.load_tokenizer(str(clean)), lm.load_model(str(clean), "causal")
    fmt = _fmt()
    x = [InstructionExample("Sentiment?", "a fine film", "positive"),
         InstructionExample("Sentiment?", "a dull film", "negative")]
    xd = [insert_trigger(e, "qzt", 1, random.Random(0)) for e in x]
    yd = [e.replace(output="river seven quietly") for e in xd]
    rows = encode_examples(tok, x + xd + yd, fmt)
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        loss, terms = purify.recovery_loss(model, batch, 2, 0.7)
        logp, count = response_logprobs(model, batch)
    ce = -logp[:2].sum() / count[:2].sum()
    pref = -torch.nn.functional.logsigmoid(logp[2:4] - logp[4:]).mean()
    assert torch.allclose(loss, ce + 0.7 * pref) and torch.allclose(terms["ce"], ce)
    with torch.no_grad():
        assert torch.allclose(purify.recovery_loss(model, batch, 2, 0.0)[0], ce)


def test_mb_defense_stages_and_lambda_choice_on_clean_data():
    clean, attacked = _shared()
    tok = lm.load_tokenizer(str(clean))
    model = lm.load_model(str(clean), "causal")
    config = purify.make_config("mb", "fast", **TINY_MB, lambdas=(0.0, 1.0))
    data = read_alpaca(attacked / "instruction_data.jsonl")
    pool = load_instructions("sst2", "train", limit=32, seed=7)
    clean_samples, select = split_examples(pool, 16, 16, seed=7)
    purified, result = purify.mb_defense(model, tok, data, clean_samples, select, config, progress=False)
    assert result.poisoning.replaced == 4 * 3 and result.poisoning.training.steps == 80
    assert [c.lam for c in result.candidates] == [0.0, 1.0] and result.lam in (0.0, 1.0)
    assert result.reference_accuracy is not None and result.clean_samples == 16
    by_lam = {c.lam: c for c in result.candidates}
    # the preference term is what teaches triggered inputs the normal answer: with λ = 1 the final margin
    # log π(y|x_d) - log π(y_d|x_d) ends far above where λ = 0 (CE on clean inputs only) leaves it
    assert by_lam[1.0].recovery.final_terms["margin"] > by_lam[0.0].recovery.final_terms["margin"] + 5
    assert by_lam[1.0].defender_rate <= by_lam[0.0].defender_rate
    chosen = max(result.candidates, key=lambda c: purify.mb._candidate_key(c, result.reference_accuracy,
                                                                           config.acc_tolerance))
    assert chosen.lam == result.lam
    assert purified is not model


def test_fine_mix_lm_keeps_half_of_the_deltas():
    clean, attacked = _shared()
    tok = lm.load_tokenizer(str(clean))
    tuned, pretrained = lm.load_model(str(attacked), "causal"), lm.load_model(str(clean), "causal")
    pool = load_instructions("sst2", "train", limit=16, seed=7)
    config = purify.make_config("fine-mix-lm", "fast", epochs=0.0, clean_samples=16)              # the mix alone
    mixed, result = purify.fine_mix_lm(tuned, tok, pretrained, pool, config, progress=False)
    assert result.training is None and abs(result.mix.kept - 0.5 * result.mix.elements) <= result.mix.tensors
    delta_kept = delta_all = 0
    for (name, p), q, r in zip(mixed.named_parameters(), pretrained.parameters(), tuned.parameters()):
        moved = ~torch.isclose(r, q, rtol=0, atol=1e-6)
        as_tuned = torch.isclose(p, r, rtol=0, atol=1e-6)                      # pre + (tuned - pre) rounds
        delta_all += int(moved.sum())
        delta_kept += int((as_tuned & moved).sum())
        assert bool((as_tuned | (p == q)).all()), name                         # every weight: tuned or clean
    assert 0.4 < delta_kept / delta_all < 0.6
    with pytest.raises(ValueError, match="needs 128 clean samples, got 16"):
        purify.fine_mix_lm(tuned, tok, pretrained, pool, purify.make_config("fine-mix-lm", "fast"), progress=False)


def test_run_purify_mb_report_and_atomic_folder(tmp_path):
    clean, attacked = _shared()
    config = purify.make_config("mb", "fast", **TINY_MB, lambdas=(1.0,))
    result = purify.run_purify("mb", clean, tmp_path / "mb", data=attacked / "instruction_data.jsonl",
                               baseline=attacked, config=config, measure=MEASURE, progress=False)
    report = json.loads((tmp_path / "mb" / "purify.json").read_text())
    assert report["method"] == "mb" and report["measured_triggers"] == ["cf"]
    assert report["triggers"] == result.triggers and len(report["triggers"]) == 4
    assert report["triggers_source"] == "defender" and report["baseline"] == str(attacked)
    for side in ("before", "after"):
        assert 0.0 <= report[side]["cacc"] <= 1.0 and set(report[side]["asr"]) == {"cf"}
        assert report[side]["t_asr"] == report[side]["asr"]["cf"]
    assert report["before"]["t_asr"] >= 0.8                                     # the given no-defense model
    assert report["details"]["lam"] == 1.0 and report["settings"]["lambdas"] == [1.0]
    assert lm.load_model(str(tmp_path / "mb"), "causal") is not None
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    with pytest.raises(FileExistsError):
        purify.run_purify("mb", clean, tmp_path / "mb", data=attacked / "instruction_data.jsonl", config=config,
                          measure=False, progress=False)
    with pytest.raises(ValueError, match="fine-mix-lm needs the clean pre-trained weights"):
        purify.run_purify("fine-mix-lm", attacked, tmp_path / "fm", measure=False, progress=False)


# -- command line ----------------------------------------------------------------------------------
def test_cli_attack_and_purify_mb_and_fine_mix_lm(tmp_path, capsys):
    clean, attacked = _shared()
    status = main(["attack", "--method", "instruct-badnet", "--model", str(clean), "--data", "sst2", "--fast",
                   "--steps", "3", "--triggers", "cf,I watched this 3D movie", "--poison-rate", "0.3",
                   "--out", str(tmp_path / "att"), "--quiet", "--device", "cpu"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attack"] == "instruct-badnet" and summary["poisoned"] == 600
    assert summary["triggers"] == ["cf", "I watched this 3D movie"] and summary["training"]["steps"] == 3
    status = main(["purify", "--method", "mb", "--model", str(clean), "--data",
                   str(tmp_path / "att" / "instruction_data.jsonl"), "--baseline", str(attacked), "--steps", "2",
                   "--recovery-steps", "2", "--lambda", "0.5", "--clean-limit", "8", "--measure-dev", "8",
                   "--out", str(tmp_path / "mb"), "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "mb: " in captured.out and "lambda 0.5" in captured.out and "T-ASR" in captured.out
    report = json.loads((tmp_path / "mb" / "purify.json").read_text())
    assert report["settings"]["steps"] == 2 and report["settings"]["recovery_steps"] == 2
    assert report["settings"]["clean_samples"] == 8 and report["measure"]["dev_limit"] == 8
    assert report["measured_triggers"] == ["cf", "I watched this 3D movie"]       # backdoor.json beside --data
    status = main(["purify", "--method", "fine-mix-lm", "--model", str(attacked), "--pretrained", str(clean),
                   "--steps", "2", "--clean-limit", "8", "--measure-dev", "8", "--rho", "0.3",
                   "--out", str(tmp_path / "fm"), "--quiet", "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "fm" / "purify.json").read_text())
    assert report["details"]["rho"] == 0.3 and report["measured_triggers"] == ["cf"]
    assert report["before"]["t_asr"] is not None and report["after"]["cacc"] is not None


@pytest.mark.parametrize("argv, message", [
    (["purify", "--method", "adv-pt", "--model", "M", "--lambda", "1", "--out", "X"], "--lambda does not apply"),
    (["purify", "--method", "mb", "--model", "M", "--max-length", "9", "--out", "X"], "--max-length does not apply"),
    (["purify", "--method", "fine-mix-lm", "--model", "M", "--rho", "0.1", "--rho", "0.2", "--out", "X"],
     "takes one --rho"),
    (["attack", "--method", "instruct-badnet", "--model", "M", "--target-scale", "2", "--out", "X"],
     "--target-scale does not apply"),
    (["attack", "--method", "por", "--model", "M", "--data", "sst2", "--out", "X"], "--data applies to"),
    (["purify", "--method", "mb", "--model", "M", "--scan-report", "scan.json", "--out", "X"], "takes no scan report"),
    (["purify", "--method", "mb", "--model", "M", "--pretrained", "P", "--out", "X"], "mb takes no --pretrained"),
])
def test_cli_rejects_options_of_other_methods(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_inputs_are_one_line_errors(tmp_path, capsys):
    clean, _ = _shared()
    assert main(["purify", "--method", "mb", "--model", str(clean), "--data", str(tmp_path / "none.jsonl"),
                 "--no-measure", "--out", str(tmp_path / "o1"), "--quiet"]) == 2
    assert "is not a file" in capsys.readouterr().err
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"text": "fine", "label": 1}\n')
    assert main(["purify", "--method", "mb", "--model", str(clean), "--data", str(bad), "--no-measure",
                 "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "not an Alpaca-format record" in capsys.readouterr().err
    assert main(["attack", "--method", "instruct-badnet", "--model", str(tmp_path / "missing.gguf"),
                 "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
