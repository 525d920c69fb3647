"""``patronus calibrate`` and ``patronus demo`` on tiny models, and the PNG plots (plots.py)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from patronus_ext import attacks
from patronus_ext.cli import demo, main, plots
from patronus_ext.detect import ScanConfig

FAST = ScanConfig.profile("fast")
from patronus_ext.detect.patronus.calibrate import suggest_thresholds

import tiny_models

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_SCAN = FAST.replace(num_triggers=4, batch_size=4, poison_copies=2, update_rounds=3, fuzz_loops=2,
                         num_candidates=4, beam_size=2, max_length=32, verify_texts=16, corpus_limit=300)


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    return path


# -- calibrate ---------------------------------------------------------------------------------
def test_calibrate_two_clean_models(tmp_path, corpus_file, capsys):
    first = tiny_models.shared_tiny_model("bert")
    second = tiny_models.make_tiny_model(tmp_path, "bert", seed=1)
    report = tmp_path / "calibration.json"
    argv = ["calibrate", str(first), str(second), "--corpus", str(corpus_file), "--loops", "1",
            "--margin", "0.05", "--report", str(report), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    payload = json.loads(report.read_text())
    assert set(payload) == {"models", "candidates", "min_benign_diff_cos", "max_benign_poison_cos",
                            "diff_cos_threshold", "poison_cos_threshold", "margin", "max_benign_shift_ratio",
                            "shift_threshold", "shift_margin", "natural_targets", "max_benign_pinpoint_ratio"}
    assert payload["models"] == [str(first), str(second)] and payload["margin"] == 0.05
    candidates = payload["candidates"]
    assert {c["model"] for c in candidates} == {str(first), str(second)}  # both models were searched
    # Candidates on the clean data are left to the natural-target check; the paper rule judges the rest.
    assert payload["natural_targets"] == sum(c["natural_target"] for c in candidates)
    points = [(c["diff_cos"], c["poison_cos"]) for c in candidates if not c["natural_target"]]
    judged = points or [(c["diff_cos"], c["poison_cos"]) for c in candidates]
    assert payload["min_benign_diff_cos"] == min(d for d, _ in judged)
    assert payload["max_benign_poison_cos"] == max(p for _, p in judged)
    # The suggestion follows suggest_thresholds's rules on exactly these candidates ...
    diff, poison = payload["diff_cos_threshold"], payload["poison_cos_threshold"]
    assert (diff, poison) == pytest.approx(suggest_thresholds(points, FAST, 0.05))
    # ... so no benign candidate lies inside the suggested trigger region.
    assert not any(d < diff and p > poison for d, p in points)
    assert diff <= FAST.diff_cos_threshold and poison >= FAST.poison_cos_threshold
    assert f"--diff-threshold {diff:.3f}" in printed and f"--poison-threshold {poison:.3f}" in printed
    # The shift rule's bar: above every benign candidate's shift by the margin, never below the profile's.
    shifts = [c["shift_ratio"] for c in candidates]
    assert payload["max_benign_shift_ratio"] == max(shifts)
    assert payload["shift_threshold"] == pytest.approx(max(FAST.shift_threshold, max(shifts) + 0.5))
    assert all(s < payload["shift_threshold"] for s in shifts)
    assert f"--shift-threshold {payload['shift_threshold']:.2f}" in printed
    assert main(argv) == 2  # never overwrites the report without --force
    assert "exists" in capsys.readouterr().err
    assert main(["calibrate", str(first), "--corpus", str(corpus_file), "--margin", "0.7", "--quiet"]) == 2


# -- demo --------------------------------------------------------------------------------------
def test_demo_command_plants_once_and_reports_recall(tmp_path, monkeypatch, capsys):
    """The command on a tiny base model: the demo's own function, pointed at tiny inputs."""
    monkeypatch.setenv("PATRONUS_CACHE", str(tmp_path / "cache"))
    attack = attacks.make_config("por", triggers=tiny_models.TINY_TRIGGERS, steps=60, lr=3e-3, batch_size=8,
                                 max_length=48, schedule="constant")
    real_run_demo = demo.run_demo

    purify_calls = []

    def tiny_run_demo(scan_config, seed=0, progress=True, device=None, purify=True):
        assert scan_config.seed == seed == 3  # the command's --seed reaches the scan
        purify_calls.append(purify)
        return real_run_demo(TINY_SCAN.replace(seed=seed), seed, progress, device=device, purify=False,
                             base_model=str(tiny_models.shared_tiny_model("bert")), attack_config=attack,
                             corpus=tiny_models.tiny_corpus(300), plant_corpus=tiny_models.tiny_corpus(64))

    monkeypatch.setattr(demo, "run_demo", functools.partial(tiny_run_demo))
    report = tmp_path / "demo.json"
    assert main(["demo", "--report", str(report), "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "planted now" in out and "recovered" in out
    payload = json.loads(report.read_text())
    assert payload["planted_triggers"] == list(tiny_models.TINY_TRIGGERS)
    assert set(payload["recovered_triggers"]) <= set(tiny_models.TINY_TRIGGERS)
    assert payload["recall"] == len(payload["recovered_triggers"]) / 4 and payload["recall"] >= 0.5
    assert payload["clean_model"]["verdict"] == "clean" and payload["backdoored_model"]["verdict"] == "backdoored"
    planted_dir = payload["planted_model"]
    assert planted_dir.startswith(str(tmp_path / "cache"))

    assert main(["demo", "--report", str(report), "--seed", "3", "--quiet"]) == 2  # report exists
    assert main(["demo", "--report", str(report), "--force", "--seed", "3", "--quiet"]) == 0
    assert "(cached)" in capsys.readouterr().out  # the second run reuses the planted model
    assert json.loads(report.read_text())["planted_model"] == planted_dir
    assert main(["demo", "--report", str(report), "--force", "--seed", "3", "--quiet", "--no-purify"]) == 0
    assert purify_calls == [True, True, False]  # purification is on unless --no-purify (run in test_detect)


def test_purification_summary_prints_before_and_after():
    from patronus_ext.cli.formatting import purification_summary

    payload = {"method": "adv-pt", "triggers": ["dh", "vo"], "measured_triggers": ["dh", "vo", "cy"],
               "before": {"cacc": 0.812, "t_asr": 1.0, "how": "encoder fine-tuned on 1000 examples"},
               "after": {"cacc": 0.799, "t_asr": 0.285, "how": "encoder fine-tuned on 1000 examples"}}
    text = purification_summary("/cache/x", False, payload)
    assert "adv-pt" in text and "dh, vo" in text and "purified now" in text and "dh, vo, cy" in text
    assert "81.2%" in text and "100.0%" in text and "79.9%" in text and "28.5%" in text


# -- plots -------------------------------------------------------------------------------------
def test_pca_2d_by_hand():
    # All points in the x-y plane, centred at 0, spread 2 along x and 1 along y:
    # PC 1 is the x axis, PC 2 the y axis (each up to sign).
    groups = {"clean": torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]),
              "cf": torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]])}
    out = plots.pca_2d(groups)
    assert list(out) == ["clean", "cf"] and out["clean"].dtype == torch.float32
    assert torch.allclose(out["clean"].abs(), torch.tensor([[2.0, 0.0], [2.0, 0.0]]), atol=1e-6)
    assert torch.allclose(out["cf"].abs(), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), atol=1e-6)
    assert out["clean"][0, 0] == -out["clean"][1, 0] and out["cf"][0, 1] == -out["cf"][1, 1]
    # Shifting everything changes nothing (the data are centred first).
    shifted = plots.pca_2d({k: v + torch.tensor([5.0, -3.0, 7.0]) for k, v in groups.items()})
    assert all(torch.allclose(shifted[k].abs(), out[k].abs(), atol=1e-5) for k in groups)


def test_plot_representations_writes_a_png(tmp_path):
    gen = torch.Generator().manual_seed(0)
    groups = {"clean": torch.randn(20, 8, generator=gen), "cf": torch.randn(10, 8, generator=gen) + 3}
    path = plots.plot_representations(groups, tmp_path / "reps.png", "tiny")
    assert path == tmp_path / "reps.png"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_representations({}, tmp_path / "empty.png", "empty")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize("argv, dest, value, new", [
    (["monitor", "--model", "m", "--report", "scan.json"], "scan_report", "scan.json", "--scan-report"),
    (["serve", "--model", "m", "--report", "scan.json"], "scan_report", "scan.json", "--scan-report"),
    (["purify", "--method", "adv-pt", "--model", "m", "--out", "o", "--report", "scan.json"], "scan_report",
     "scan.json", "--scan-report"),
    (["scan", "m", "--triggers", "4"], "num_triggers", 4, "--num-triggers"),
    (["audit", "m", "--out", "o", "--triggers", "4"], "num_triggers", 4, "--num-triggers"),
])
def test_old_spellings_work_for_one_release_and_say_so(argv, dest, value, new, capsys):
    """``--report`` is only what a verb writes; an input is ``--scan-report``; the scan's K is ``--num-triggers``."""
    from patronus_ext.cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert f"is deprecated and will be removed in the next release; use {new}" in capsys.readouterr().err
    new_argv = [new if a in ("--report", "--triggers") else a for a in argv]
    assert getattr(build_parser().parse_args(new_argv), dest) == value
    assert capsys.readouterr().err == ""


def test_calibration_confirms_nothing_by_any_rule(monkeypatch):
    """Every benign candidate is recorded: neither the paper's cosines nor the collapse or shift rule may confirm one
    (a confirmed word would leave later loops and the benign statistics)."""
    from patronus_ext.detect.patronus import calibrate as calibration

    seen = []

    class Report:
        candidates = []

    def fake_scan(model, tokenizer, corpus, config, progress=True):
        seen.append(config)
        return Report()

    monkeypatch.setattr(calibration, "scan", fake_scan)
    monkeypatch.setattr(calibration, "check_model_sanity", lambda *args: None)  # no model here to check
    with pytest.raises(ValueError, match="no candidate on the benign models"):  # nothing to suggest from
        calibration.calibrate([("m", None, None)], ["text"], FAST)
    (probe,) = seen
    assert probe.diff_cos_threshold == -1.0 and probe.collapse_spread is None and probe.shift_threshold is None
    assert probe.prefilter_diff_cos == 1.0 and probe.patience is None


def test_calibration_leaves_natural_targets_out_of_the_paper_thresholds(monkeypatch):
    """A classifier's class words (targets on the clean data) are recorded but never move the paper thresholds:
    the paper rule never judges them.  Without them the paper's values stand."""
    from types import SimpleNamespace

    from patronus_ext.detect.patronus import calibrate as calibration

    def candidate(text, diff, poison, gap):
        return SimpleNamespace(text=text, diff_cos=diff, poison_cos=poison, shift_ratio=1.0, target_gap=gap,
                               pinpoint_ratio=5.0 if poison > 0.9 else 1.5, spread_ratio=(1 - poison) / 0.3)

    candidates = [candidate("worthless", 0.10, 0.99, 0.05), candidate("ordinary", 0.70, 0.60, 3.0)]
    monkeypatch.setattr(calibration, "scan", lambda *a, **k: SimpleNamespace(candidates=candidates))
    monkeypatch.setattr(calibration, "check_model_sanity", lambda *args: None)
    result = calibration.calibrate([("m", None, None)], ["text"], FAST)
    assert (result.diff_cos_threshold, result.poison_cos_threshold) == (0.4, 0.9)
    assert result.natural_targets == 1 and [r["natural_target"] for r in result.candidates] == [True, False]
    assert result.max_benign_pinpoint_ratio == 5.0   # only the collapsed candidate is in the pinpoint rule's domain
    off = calibration.calibrate([("m", None, None)], ["text"], FAST.replace(natural_target_gap=None))
    assert off.natural_targets == 0 and off.diff_cos_threshold == pytest.approx(0.05)  # the class word decides
