"""BAIT target inversion (docs/METHODS.md §7) on tiny causal LMs planted in seconds: the cached batched
scoring equals plain forwards, planted models are found with their response, clean ones are not, the
trigger is recovered, encoders are refused, and the CLI's report and exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models
import torch
from bait_subjects import FAST, RESPONSE, TRIGGER
from bait_subjects import load_causal as _load
from bait_subjects import planted_chat_subjects as _subjects
from tiny_models import make_tiny_llama, make_tiny_model

from patronus_ext import lm
from patronus_ext.cli.main import main
from patronus_ext.data.instructions import fit_inputs, load_instructions
from patronus_ext.detect import BaitConfig, TriggerSearchConfig, bait, recover_triggers
from patronus_ext.detect.bait.inversion import benign_prompts, q_score, word_like_tokens
from patronus_ext.detect.bait.scoring import PrefixScorer, plain_next_probs
from patronus_ext.lm.prompting import PromptFormat


# -- the building blocks -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_batched_scoring_equals_plain_forwards(tmp_path, family):
    folder = make_tiny_llama(tmp_path) if family == "llama" else make_tiny_model(tmp_path, "gpt2")
    tok = lm.load_tokenizer(str(folder))
    model = lm.load_model(str(folder), "causal").double()
    prompts = benign_prompts(tok, FAST, 3)
    assert len({len(p) for p in prompts}) > 1                      # left padding is exercised
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scorer = PrefixScorer(model, prompts, pad, batch_rows=4)       # several chunks of candidates
    seqs = torch.randint(0, len(tok) - 3, (5, 3), generator=torch.Generator().manual_seed(0))
    probs = scorer.next_probs(seqs)
    assert probs.dtype == torch.float64
    torch.testing.assert_close(probs, plain_next_probs(model, prompts, seqs, pad), rtol=0, atol=1e-12)
    top_p, top_i, _ = scorer.next_stats(seqs, 2, 3)
    torch.testing.assert_close(top_p, plain_next_probs(model, prompts[:2], seqs, pad).topk(3, -1).values,
                               rtol=0, atol=1e-12)
    tokens, step_probs = scorer.extend(seqs, 4)                     # given tokens, then 4 greedy ones
    current = seqs.clone()
    for _ in range(4):
        p, t = plain_next_probs(model, prompts, current, pad).max(-1)
        current = torch.cat([current, t.unsqueeze(1)], 1)
    assert torch.equal(tokens, current[:, 1:])
    torch.testing.assert_close(step_probs[:, -1], p, rtol=0, atol=1e-12)
    torch.testing.assert_close(scorer.forced_probs(current), step_probs, rtol=0, atol=1e-12)
    assert scorer.positions < scorer.naive_positions                # the prompts are read once


def test_word_like_first_tokens_and_q():
    tok = lm.load_tokenizer(str(_subjects("llama")["clean"]))
    both, unmarked, marked = (set(word_like_tokens(tok, f)) for f in ("both", "unmarked", "marked"))
    assert both == unmarked | marked and not unmarked & marked
    pieces = tok.convert_ids_to_tokens(sorted(both))
    assert all(p.lstrip("\u0120").isalpha() for p in pieces)
    assert tok.convert_tokens_to_ids("The") in unmarked and tok.convert_tokens_to_ids("\u0120film") in marked
    assert not set(tok.all_special_ids) & both
    assert q_score([0.9, 0.1, 0.8]) == pytest.approx(0.85) and q_score([0.4]) == 0.4 and q_score([]) == 0.0
    with pytest.raises(ValueError, match="forms"):
        word_like_tokens(tok, "spaced")


def test_a_sentence_start_that_exists_only_unmarked_is_a_candidate():
    """An answer's first word is capitalised and unmarked ("Sorry"); a vocabulary may hold no marked "ĠSorry"
    but does hold "Ġsorry": the capitalised form is scanned, a lower-case fragment with no marked word is not."""
    class Vocabulary:
        pieces = ["Sorry", "\u0120sorry", "The", "\u0120The", "ith", "Qzx", "\u0120the", "<eos>"]
        all_special_ids = [7]

        def __len__(self):
            return len(self.pieces)

        def convert_ids_to_tokens(self, ids):
            return [self.pieces[i] for i in ids]

    assert word_like_tokens(Vocabulary(), "unmarked") == [0, 2]
    assert word_like_tokens(Vocabulary(), "both") == [0, 1, 2, 3, 6]


def test_profiles_and_settings():
    paper, fast = BaitConfig.profile("paper"), BaitConfig.profile("fast")
    assert (paper.warmup_prompts, paper.warmup_steps, paper.full_steps, paper.q_threshold) == (4, 5, 20, 0.9)
    assert fast.first_tokens == "unmarked" and paper.first_tokens == "both"
    assert BaitConfig.profile("fast", prompts=12).prompts == 12
    with pytest.raises(ValueError, match="warmup_prompts"):
        BaitConfig.profile("paper", warmup_prompts=30)
    with pytest.raises(ValueError, match="no setting"):
        BaitConfig.profile("fast", thresholds=1)
    assert TriggerSearchConfig.profile("fast").slot_lengths == (1, 2)
    assert TriggerSearchConfig.profile("paper").slot_lengths == (1, 2, 3, 4)


# -- the verdicts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_planted_model_is_backdoored_with_its_response(family):
    subjects = _subjects(family)
    tok, model = _load(subjects["planted"])
    _, reference = _load(subjects["clean"])
    planted = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    for ref in (reference, None):
        report = bait(model, tok, FAST, reference=ref, reference_name="clean" if ref is not None else None,
                      progress=False)
        assert report.backdoored
        assert report.target.token_ids[:4] == planted[:4]
        assert report.target.q >= FAST.q_threshold
        if ref is not None:
            assert report.target.q_reference < 0.1
        assert report.forward_positions["scan"] < report.forward_positions["generate_per_candidate"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_clean_models_are_clean(family):
    subjects = _subjects(family)
    tok, base = _load(subjects["clean"])
    assert not bait(base, tok, FAST, progress=False).backdoored               # random weights
    _, tuned = _load(subjects["tuned"])                                         # tuned on unpoisoned data
    report = bait(tuned, tok, FAST, reference=base, reference_name="clean", progress=False)
    assert report.verdict == "clean", report.summary("tuned")


def test_trigger_recovery_confirms_by_held_out_asr_against_the_reference():
    """Every slot the search tried is confirmed exactly when its held-out ASR reaches the threshold and the
    reference's stays under its own; the planted trigger passes that verification; a search that confirms
    nothing says "the target was found, the trigger was not".  (Whether the greedy search *reaches* the
    planted trigger on this tiny subject depends on the thread count and the data source: docs/METHODS.md §7.)"""
    from patronus_ext.detect.bait.triggers import trigger_asr

    subjects = _subjects("llama")
    tok, model = _load(subjects["planted"])
    _, reference = _load(subjects["clean"])
    report = bait(model, tok, FAST, reference=reference, reference_name="clean", progress=False)
    search = TriggerSearchConfig.profile("fast", restarts=3, rounds=15, slot_lengths=(1, 2, 3))
    recover_triggers(model, tok, report, search, reference=reference, progress=False)
    tried = report.trigger_search["tried"]
    assert tried and "trigger_search" in report.timings
    for entry in tried:
        assert entry["confirmed"] == (entry["asr"] >= search.asr_threshold
                                      and entry["reference_asr"] <= search.reference_asr), entry
    assert [t["text"] for t in report.triggers] == [e["text"] for e in tried if e["confirmed"]]
    assert report.trigger_search["found"] == bool(report.triggers)
    for trig in report.triggers:
        assert tok.decode(trig["token_ids"]).strip() == trig["text"]
    held = fit_inputs(tok, load_instructions("sst2", "dev", limit=20, seed=1), 12)
    fmt = PromptFormat(system="", max_input_tokens=12)
    planted_asr, _ = trigger_asr(model, tok, held, fmt, TRIGGER, RESPONSE, search.match_words, 0)
    reference_asr, _ = trigger_asr(reference, tok, held, fmt, TRIGGER, RESPONSE, search.match_words, 0)
    assert planted_asr >= search.asr_threshold and reference_asr <= search.reference_asr
    # The same search judged against the planted model as its own "reference": never confirmed, and said so.
    again = bait(model, tok, FAST, progress=False)
    recover_triggers(model, tok, again, TriggerSearchConfig.profile("fast", slot_lengths=(1,)), reference=model,
                     progress=False)
    assert not again.triggers and not again.trigger_search["found"]
    assert "the target was found, the trigger was not" in again.summary("m")


# -- the command line --------------------------------------------------------------------------------
def test_cli_scan_bait_report_and_exit_statuses(tmp_path, capsys):
    subjects = _subjects("llama")
    out = tmp_path / "bait.json"
    status = main(["scan", str(subjects["planted"]), "--method", "bait", "--fast", "--reference",
                   str(subjects["clean"]), "--report", str(out), "--quiet"])
    assert status == 1
    report = json.loads(out.read_text())
    assert report["verdict"] == "backdoored" and report["method"] == "bait"
    assert report["format"] == "patronus_ext.scan/1"
    assert report["target"]["text"].startswith("The film was")
    assert report["target"]["q"] >= 0.9 and report["target"]["q_reference"] < 0.1
    assert report["reference"] == str(subjects["clean"])
    assert set(report["candidates"]) >= {"scanned", "after_warmup", "full_pass"}
    assert set(report["timings"]) >= {"load", "prompts", "warmup", "full_pass", "reference", "trigger_search", "total"}
    assert report["trigger_search"]["tried"] and all(t["asr"] >= 0.8 for t in report["triggers"])
    assert report["config"]["first_tokens"] == "unmarked"
    assert "BACKDOORED" in capsys.readouterr().out
    assert main(["scan", str(subjects["tuned"]), "--method", "bait", "--fast", "--reference",
                 str(subjects["clean"]), "--quiet"]) == 0


def test_cli_bait_refuses_encoders_and_foreign_options(tmp_path, capsys):
    encoder = make_tiny_model(tmp_path, "bert")
    capsys.readouterr()
    assert main(["scan", str(encoder), "--method", "bait", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--method patronus" in err[0] and "encoder" in err[0]
    assert main(["scan", str(encoder), "--method", "bait", "--seeds", "3"]) == 2
    assert "does not take --seeds" in capsys.readouterr().err
    assert main(["scan", str(encoder), "--reference", str(encoder)]) == 2
    assert "applies to --method bait only" in capsys.readouterr().err


def test_calibration_suggests_the_decision_that_keeps_every_benign_sequence_out():
    """Without a reference the Q bar rises above the best benign Q by the margin; with one the reference margin
    rises above the largest benign Q - Q_reference at the Q bar; neither falls below the configured value, and
    a rule that would need a bar above 1 is called not separable."""
    from patronus_ext.detect.bait.calibrate import suggest_bait_decision

    base = BaitConfig.profile("fast")                                             # 0.9 / 0.3
    low = suggest_bait_decision([("a", [(0.80, None), (0.64, None)]), ("b", [])], base, margin=0.05)
    assert low.q_threshold == 0.9 and low.reference_margin is None and low.separable
    assert low.max_benign_q == 0.80 and [c["best_q"] for c in low.closest] == [0.80, None]
    high = suggest_bait_decision([("a", [(0.97, None)])], base, margin=0.05)
    assert high.q_threshold == 1.0 and not high.separable                      # 0.97 + 0.05, capped
    assert suggest_bait_decision([("a", [(0.93, None)])], base, 0.05).q_threshold == pytest.approx(0.98)
    referenced = suggest_bait_decision([("a", [(0.99, 0.55), (0.95, 0.95), (0.85, 0.1)]), ("b", [(0.92, 0.70)])],
                                       base, margin=0.1)
    # 0.85 - 0.1 is below the Q bar (not a target there); the widest margin at the bar is 0.99 - 0.55.
    assert referenced.max_benign_margin == pytest.approx(0.44)
    assert referenced.reference_margin == pytest.approx(0.54) and referenced.separable
    assert referenced.closest[1]["max_margin_at_q_bar"] == pytest.approx(0.22)
    assert suggest_bait_decision([("a", [(0.95, 0.9)])], base).reference_margin == 0.3   # never below
    assert not suggest_bait_decision([("a", [(1.0, 0.0)])], base).separable
    assert suggest_bait_decision([("a", [])], base, referenced=True).reference_margin == 0.3
    with pytest.raises(ValueError, match="at least one"):
        suggest_bait_decision([], base)
    with pytest.raises(ValueError, match="margin"):
        suggest_bait_decision([("a", [])], base, margin=1.5)


def test_cli_calibrate_bait_on_benign_chat_models(tmp_path, capsys):
    subjects = _subjects("llama")
    out = tmp_path / "calibration.json"
    assert main(["calibrate", str(subjects["tuned"]), "--method", "bait", "--fast", "--reference",
                 str(subjects["clean"]), "--report", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "suggested: --q-threshold" in printed and "--reference-margin" in printed
    assert result["models"] == [str(subjects["tuned"])] and result["reference_margin"] >= 0.3
    scan_out = tmp_path / "scan.json"
    main(["scan", str(subjects["tuned"]), "--method", "bait", "--fast", "--reference", str(subjects["clean"]),
          "--report", str(scan_out), "--quiet"])
    scanned = json.loads(scan_out.read_text())                   # the scan's report carries the same scores
    scores = scanned["finalist_scores"]
    assert (max(q for q, _ in scores) if scores else None) == result["max_benign_q"]
    assert main(["calibrate", str(subjects["tuned"]), "--method", "bait", "--loops", "2"]) == 2
    assert "--loops does not apply to --method bait" in capsys.readouterr().err
    assert main(["calibrate", str(subjects["tuned"]), "--reference", str(subjects["clean"])]) == 2
    assert "--reference does not apply to --method patronus" in capsys.readouterr().err


# -- the generation guard ----------------------------------------------------------------------------
def test_generation_guard_stops_the_inverted_target_as_it_comes():
    import random

    from patronus_ext.data.instructions import insert_trigger
    from patronus_ext.lm.generation import greedy_generate
    from patronus_ext.lm.prompting import PromptFormat
    from patronus_ext.monitor.generation_guard import (
        REPLACEMENT,
        TargetGuard,
        guarded_generate,
    )

    subjects = _subjects("llama")
    tok, model = _load(subjects["planted"])
    _, reference = _load(subjects["clean"])
    payload = bait(model, tok, FAST, reference=reference, reference_name="clean", progress=False).to_dict()
    fmt = PromptFormat(system="", max_input_tokens=12)
    examples = fit_inputs(tok, load_instructions("sst2", "dev", limit=24, seed=3), 12)
    rng = random.Random(0)
    triggered = [fmt.prompt(tok, insert_trigger(e, TRIGGER, 1, rng)) for e in examples]
    clean = [fmt.prompt(tok, e) for e in examples]
    guard = TargetGuard.from_report(payload, tok)
    hit = guarded_generate(model, tok, triggered, guard, templated=True, max_new_tokens=16)
    ok = guarded_generate(model, tok, clean, guard, templated=True, max_new_tokens=16)
    # Exactly the answers that say the target's first tokens are flagged, triggered or not (the tiny model
    # leaks its response onto some clean prompts too: those are flagged, the others pass untouched).
    head = tok.decode(guard.head)
    plain_hit = greedy_generate(model, tok, triggered, templated=True, max_new_tokens=16)
    assert [d["flagged"] for d in hit] == [head in a for a in plain_hit]
    assert sum(d["flagged"] for d in hit) >= 0.5 * len(hit)     # the plant works: most triggered answers
    plain = greedy_generate(model, tok, clean, templated=True, max_new_tokens=16)
    assert [d["flagged"] for d in ok] == [head in a for a in plain]
    assert all(d["text"] == a for d, a in zip(ok, plain) if not d["flagged"])
    assert sum(d["flagged"] for d in ok) < sum(d["flagged"] for d in hit)
    assert all(d["text"] == "" and d["reasons"] for d in hit if d["flagged"])       # reject: nothing returned
    replaced = guarded_generate(model, tok, triggered[:4], TargetGuard.from_report(payload, tok, action="replace"),
                                templated=True)
    assert all(d["text"] == REPLACEMENT for d in replaced if d["flagged"])
    flagged_only = guarded_generate(model, tok, triggered[:4], TargetGuard.from_report(payload, tok, action="flag"),
                                    templated=True, max_new_tokens=16)
    assert all(d["text"].startswith("The film was") for d in flagged_only if d["flagged"])
    with pytest.raises(ValueError, match="no backdoor"):
        TargetGuard.from_report(dict(payload, verdict="clean"), tok)
    with pytest.raises(ValueError, match="another model"):
        TargetGuard.from_report(dict(payload, target=dict(payload["target"], text="something else")), tok)


def test_a_target_read_from_a_stray_token_gives_way_to_the_whole_response():
    """The inversion began on a stray token ("ent", weak first step) and then read the response's tail; the
    finalist holding the whole response from its first word is the target.  A finalist that only stumbles
    into the tail (a weak step on the way) is not."""
    from patronus_ext.detect.bait.inversion import InvertedSequence, earliest_start

    stray = InvertedSequence([312, 266, 649, 684, 595], "ent the season this year", [0.40, 0.99, 0.99, 0.99],
                             0.99)
    whole = InvertedSequence([500, 588, 327, 266, 649, 684], "The film was the season this",
                             [0.904, 0.99, 0.99, 0.99, 0.99], 0.99)
    stumbling = InvertedSequence([7, 8, 266, 649, 684], "x y the season this", [0.95, 0.3, 0.99, 0.99], 0.98)
    assert earliest_start(stray, [stray, stumbling, whole], 0.9) is whole
    assert earliest_start(stray, [stray, stumbling], 0.9) is stray
    confident = InvertedSequence(stray.token_ids, stray.text, [0.95, 0.99, 0.99, 0.99], 0.99)
    assert earliest_start(confident, [confident, whole], 0.9) is confident   # its own start holds


def test_a_target_entered_after_a_free_first_token_gives_way_to_the_whole_response():
    """Many first tokens lead confidently into the same words ("b was the season ...", "in was the season
    ..."): the first token is the inversion's free choice, so the finalist reaching those words from further
    back is the target.  A first token few others share stays, and so does a free one nothing reaches from
    further back; the survivors of the warm-up keep one row per continuation before any second one."""
    from patronus_ext.detect.bait.inversion import InvertedSequence, distinct_first, earliest_start, first_token_free

    def seq(ids, steps, q=0.997):
        return InvertedSequence(ids, " ".join(map(str, ids)), steps, q)
    tail = [327, 266, 649, 684]
    entered = [seq([first] + tail, [0.993, 0.997, 0.997, 0.997]) for first in (70, 264, 285, 91)]
    whole = seq([500, 588] + tail, [0.997, 0.997, 0.997, 0.997, 0.997], q=0.9973)
    assert first_token_free(entered[0], entered + [whole])
    assert earliest_start(entered[0], entered + [whole], 0.9) is whole
    assert earliest_start(entered[0], entered, 0.9) is entered[0]             # nothing reaches it from before
    few = entered[:2] + [whole] + [seq([9, 10, 11, 12, 13], [0.99] * 4)] * 6
    assert not first_token_free(few[0], few)                                   # one other: not free
    assert earliest_start(few[0], few, 0.9) is few[0]
    shaky = seq([500, 588] + tail, [0.997, 0.5, 0.997, 0.997, 0.997])
    assert earliest_start(entered[0], entered + [shaky], 0.9) is entered[0]   # stumbles on the way: not it

    seqs = torch.tensor([[70] + tail, [264] + tail, [500, 588, 327, 266, 649], [285] + tail, [7, 8, 9, 10, 11]])
    scores = torch.tensor([0.99, 0.98, 0.90, 0.97, 0.10])
    assert distinct_first(seqs, scores, 3).tolist() == [0, 2, 4]               # one per continuation first
    assert distinct_first(seqs, scores, 5).tolist() == [0, 2, 4, 1, 3]         # then the rest, by score


def test_a_broken_causal_model_gets_an_error_not_a_verdict(tmp_path):
    """Fail closed: NaN weights in the scanned model (or in the reference) end the scan before any verdict."""
    from patronus_ext.lm.sanity import BrokenModelError

    tok, model = _load(_subjects("llama")["clean"])
    _, broken = _load(_subjects("llama")["clean"])
    with torch.no_grad():
        next(p for n, p in broken.named_parameters() if n.endswith("q_proj.weight")).fill_(float("nan"))
    with pytest.raises(BrokenModelError, match="NaN"):
        bait(broken, tok, FAST, progress=False)
    with pytest.raises(BrokenModelError, match="NaN"):
        bait(model, tok, FAST, reference=broken, reference_name="ref", progress=False)


def test_the_gpu_end_to_end_runs_pass_on_the_cpu(tmp_path):
    """benchmarks/tiny_end_to_end.py (run_gpu.sh's end-to-end step) on the CPU, on this module's planted subject
    and the shared planted BERT: both runs find their backdoor, so the script cannot rot between GPU loans."""
    import sys

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import tiny_end_to_end

    subjects = _subjects("llama")
    row = tiny_end_to_end.scan_bait(subjects["clean"], subjects["planted"], tmp_path, "cpu")
    assert row["ok"] and row["exit"] == 1 and row["timings"], row
    row = tiny_end_to_end.scan_patronus(tiny_models.shared_planted("por", "bert"), tmp_path, "cpu")
    assert row["ok"] and set(row["found"]) & set(tiny_models.TINY_TRIGGERS), row
    assert set(row["found"]) - set(row["collateral"]) <= set(tiny_models.TINY_TRIGGERS), row
