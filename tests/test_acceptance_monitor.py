"""The target checks that decide the exit status of benchmarks/acceptance_monitor.py and
benchmarks/bench_monitor.py, and the counting they rest on (no model is run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import acceptance_monitor  # noqa: E402
import bench_monitor  # noqa: E402


def _stage(name, far=(0, 872), frr=(0, 872)):
    def r(count, n):
        return {"count": count, "n": n, "rate": count / n}
    return {"stage": name, "monitors": {"input": {"all_dev": {"FAR": r(*far), "FRR": r(*frr)}}}}


def test_far_frr_counts():
    clean = [False, True, False, False]
    triggered = [True, False, True, True]
    out = acceptance_monitor.far_frr(clean, triggered, [0, 1, 2, 3])
    assert out["FRR"] == {"count": 1, "n": 4, "rate": 0.25}
    assert out["FAR"] == {"count": 1, "n": 4, "rate": 0.25}
    half = acceptance_monitor.far_frr(clean, triggered, [0, 2])
    assert half["FRR"]["count"] == 0 and half["FAR"]["count"] == 0 and half["FAR"]["n"] == 2


def test_input_targets_met_at_the_limit():
    # 8/872 = 0.92% <= 1%: met, before and after fine-tuning.
    assert acceptance_monitor.check_targets([_stage("pretrained", far=(8, 872)), _stage("finetuned", frr=(8, 872))]) == []


def test_input_targets_missed_are_each_named():
    missed = acceptance_monitor.check_targets([_stage("pretrained", far=(9, 872)), _stage("finetuned", frr=(20, 872))])
    assert len(missed) == 2
    assert missed[0].startswith("pretrained: input monitor FAR 9/872")
    assert missed[1].startswith("finetuned: input monitor FRR 20/872")


def test_inputs_are_the_dev_set_with_planted_triggers_inserted_1_to_3_times():
    inputs = acceptance_monitor.make_inputs(0)
    n = len(inputs["clean"])
    assert n == 872 and len(inputs["triggered"]) == n
    assert sorted(inputs["calib"] + inputs["eval"]) == list(range(n))
    assert not set(inputs["calib"]) & set(inputs["eval"])
    for text, trig, trigger, count in zip(inputs["clean"], inputs["triggered"], inputs["trigger"], inputs["count"]):
        assert trigger in acceptance_monitor.TRIGGERS and 1 <= count <= 3
        words = trig.split()
        assert words.count(trigger) - text.split().count(trigger) == count
    assert inputs == acceptance_monitor.make_inputs(0)          # reproducible


def test_bench_added_costs_and_targets():
    samples = {"bare": [1.0, 1.0, 1.0], "input": [1.01, 1.01, 1.01], "output": [1.05, 1.05, 1.05],
               "both": [1.06, 1.06, 1.06], "fwd_hidden": [1.0, 1.0, 1.0]}
    costs = bench_monitor.added_costs(samples)
    assert costs["input"]["paired_over_bare"] == pytest.approx(0.01)
    missed = bench_monitor.check_targets({"batches": {1: {"added": costs}, 64: {"added": costs}}})
    assert len(missed) == 2 and all("output monitor adds 5.00%" in m for m in missed)
