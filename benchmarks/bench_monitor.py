"""Latency of the monitors on all-MiniLM-L6-v2 (CPU): monitored check vs the bare serving forward.

Two faces, same cases:

* ``python benchmarks/bench_monitor.py [--threads 1] [--rounds-1 40] [--rounds-64 20] [--profile]``
  times every setup of a batch size round-robin in one process (background
  load hits all setups alike), prints medians and the added cost over the bare
  forward, the lexical check throughput, and (``--profile``) where the input
  monitor's time goes; writes ``benchmarks/results/bench_monitor_<time>.json``
  and exits 1 when a target is missed.
* ``python -m pytest benchmarks/bench_monitor.py`` is the pytest-benchmark suite
  (one benchmark per batch size and setup, the lexical throughput, and one
  round-robin test per batch size that prints the added cost of each setup
  over the bare forward *measured in the same run*; set
  ``PATRONUS_BENCH_STRICT=1`` to make it fail when a target is missed).

Subject: the packaged clean all-MiniLM-L6-v2 (timing only: the monitors' cost
does not depend on whether the weights carry a backdoor).  The report and bank
are synthesised: 4 trigger words (``dq rq qb fk``, single WordPiece tokens) as
a scan report would list them, and a bank of 4 random unit vectors (d=384,
``torch.Generator`` seed 0); nothing is flagged on clean dev text, which is the
common serving case.  Inputs: SST-2 dev sentences; batch 1 cycles over the
first 64 dev sentences (one per call), batch 64 is the first 64 sentences;
``max_length`` 128 (no sentence is cut).  At batch 1 one timed sample is 10
calls in a row (the garbage collection ``time_round_robin`` runs before each
sample costs more than one batch-1 forward), the setups still alternate.

Setups: ``bare`` = tokenize + model forward (what serving costs without
monitoring); ``fwd_hidden`` = :meth:`MonitoredModel.forward` (tokenize + forward
with ``output_hidden_states`` + representation; no check); ``input``,
``output``, ``both`` = :meth:`MonitoredModel.check` (action ``flag``) with the
input monitor, the output monitor (sign rule, 0.8), or both.  Added cost =
median(setup) / median(bare) - 1.  ``monitor_only``: the monitors' own work
timed alone on a prepared encoding / representation (no forward), as a share
of the bare forward; less noisy than the difference of two medians.

``<setup>_decide``: :meth:`MonitoredModel.decide` on the forward's own outputs,
i.e. everything a check adds to the serving forward (matching, scoring, reasons,
decisions).

Targets (issue 11): added cost of the input monitor <= 2% of the bare forward
at batch 1 and at batch 64, of the output monitor <= 2% too: judged on the
``_decide`` share (the end-to-end medians of two ~10 ms forwards wander by a few
percent between runs on a shared machine), with the end-to-end paired ratio
checked against 2% + the bare forward's interquartile spread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

import torch

try:  # the package when run from a checkout without installing
    from patronus_ext import lm
    from patronus_ext.data import corpora as data
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from patronus_ext import lm
    from patronus_ext.data import corpora as data
from patronus_ext.data.triggers import match_triggers
from patronus_ext.formats.bank import AttackBank
from patronus_ext.monitor import InputMonitor, MonitoredModel, OutputMonitor

from _common import load_average, machine_facts, medians, report_targets, results_path, time_round_robin

TRIGGERS = ("dq", "rq", "qb", "fk")
BATCHES = (1, 64)
MAX_LENGTH = 128
#: Added cost over the bare forward the monitors may take (issue 11).
MAX_ADDED = 0.02
SETUPS = ("bare", "fwd_hidden", "input", "output", "both")
TARGETED = ("input", "output")


class Subject:
    """The model, the monitors and the inputs every case shares (built once)."""

    def __init__(self, texts: list[str] | None = None):
        self.adapter = lm.load_adapter(lm.DEFAULT_MODEL, device="cpu", max_length=MAX_LENGTH)
        self.model = self.adapter.model.eval()
        self.tokenizer = self.adapter.tokenizer
        report = {"triggers": [{"text": t, "token_ids": self.tokenizer.convert_tokens_to_ids([t]), "group": i}
                               for i, t in enumerate(TRIGGERS)]}
        self.input_monitor = InputMonitor.from_report(report, self.tokenizer)
        gen = torch.Generator().manual_seed(0)
        vectors = torch.nn.functional.normalize(torch.randn(len(TRIGGERS), self.adapter.hidden_size, generator=gen),
                                                dim=1)
        self.bank = AttackBank(vectors, lm.DEFAULT_MODEL, self.adapter.position, "synthetic",
                               [f"group-{i}" for i in range(len(TRIGGERS))])
        self.output_monitor = OutputMonitor(self.bank)
        kw = dict(action="flag", max_length=MAX_LENGTH)
        self.monitored = {
            "input": MonitoredModel(self.model, self.tokenizer, input_monitor=self.input_monitor, **kw),
            "output": MonitoredModel(self.model, self.tokenizer, output_monitor=self.output_monitor, **kw),
            "both": MonitoredModel(self.model, self.tokenizer, input_monitor=self.input_monitor,
                                   output_monitor=self.output_monitor, **kw),
        }
        self.texts = texts if texts is not None else data.read_task("sst2", "dev").texts
        self.dev_size = len(self.texts)

    def batches(self, size: int):
        """An endless supply of batches: batch 1 cycles over the first 64 sentences, batch 64 repeats them."""
        if size == 1:
            return itertools.cycle([[t] for t in self.texts[:64]])
        return itertools.repeat(self.texts[:size])

    @torch.no_grad()
    def bare(self, texts: list[str]):
        enc = self.adapter.tokenize(texts, MAX_LENGTH)
        return self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], return_dict=True)

    def setups(self, size: int) -> dict:
        """Zero-argument callables per setup, each drawing its next batch from its own cycle."""
        out = {}
        for name in SETUPS:
            batches = self.batches(size)
            if name == "bare":
                out[name] = (lambda b=batches: self.bare(next(b)))
            elif name == "fwd_hidden":
                out[name] = (lambda b=batches: self.monitored["input"].forward(next(b)))
            else:
                out[name] = (lambda b=batches, m=self.monitored[name]: m.check(next(b)))
        return out

    def monitor_only(self, size: int) -> dict:
        """The monitors' own work on a prepared encoding / representation (no forward)."""
        texts = self.texts[:size]
        enc, reps, _ = self.monitored["input"].forward(texts)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        out = {
            "input_match": lambda: self.input_monitor.matches(self.input_monitor.match(ids, mask)),
            "output_check": lambda: self.output_monitor.check(reps),
        }
        # Everything check() adds to the forward (matching, scoring, reasons, Decision objects), on the
        # forward's own outputs: the monitors' whole added work, without the noise of two forwards' medians.
        for name in TARGETED + ("both",):
            out[f"{name}_decide"] = (lambda m=self.monitored[name]: m.decide(texts, enc, reps, None))
        return out

    def profile_input(self, size: int) -> dict:
        """The input monitor's steps one by one, on one prepared encoding."""
        enc, _, _ = self.monitored["input"].forward(self.texts[:size])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        mon = self.input_monitor
        starts = mon.table.word_starts(ids)
        pats = mon._patterns_on(ids.device)
        hits = mon.match(ids, mask)
        return {
            "word_starts": lambda: mon.table.word_starts(ids),
            "match_triggers": lambda: match_triggers(ids, pats, word_start=starts),
            "masked_fill": lambda: hits.masked_fill(~mask.bool(), -1),
            "match (all three)": lambda: mon.match(ids, mask),
            "matches (nonzero+tolist)": lambda: mon.matches(hits),
            "any-flag only": lambda: bool((hits >= 0).any()),
        }

    def lexical_batches(self, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The whole dev set pre-tokenised into batches of ``size`` (for throughput)."""
        out = []
        for start in range(0, self.dev_size, size):
            enc = self.adapter.tokenize(self.texts[start:start + size], MAX_LENGTH)
            out.append((enc["input_ids"], enc["attention_mask"]))
        return out

    def lexical_pass(self, batches) -> int:
        flagged = 0
        for ids, mask in batches:
            flagged += sum(bool(m) for m in self.input_monitor.matches(self.input_monitor.match(ids, mask)))
        return flagged


def chunked(variants: dict, calls: int) -> dict:
    """Each variant called ``calls`` times per timed sample: ``time_round_robin`` collects garbage before
    every sample, which costs more than a batch-1 forward; divide the samples by ``calls``."""
    if calls == 1:
        return variants

    def repeat(fn):
        def call():
            for _ in range(calls):
                fn()
        return call
    return {name: repeat(fn) for name, fn in variants.items()}


def timed(variants: dict, rounds: int, calls: int = 1, warmup: int = 1) -> dict[str, list[float]]:
    """Round-robin seconds per call (each sample = ``calls`` calls in a row, divided by ``calls``)."""
    samples = time_round_robin(chunked(variants, calls), rounds, warmup=warmup)
    return {name: [t / calls for t in times] for name, times in samples.items()}


def added_costs(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per setup: median seconds, ratio of medians to bare, median of the paired per-round ratios."""
    med = medians(samples)
    out = {}
    for name, times in samples.items():
        paired = [t / b for t, b in zip(times, samples["bare"])]
        out[name] = {"median_s": med[name], "over_bare": med[name] / med["bare"] - 1.0,
                     "paired_over_bare": statistics.median(paired) - 1.0, "rounds": len(times)}
    return out


def check_targets(results: dict) -> list[str]:
    """One line per missed latency target in ``results`` (the dict :func:`run` returns).

    The target is judged on the monitors' added work timed on the forward's own outputs (``<setup>_decide``
    over the bare forward's median): the difference of two end-to-end medians of ~10 ms forwards moves by
    a few percent between runs on a shared machine, more than the 2% it would have to resolve.  The
    end-to-end paired ratios are reported beside it and checked against a looser bound (2% + their
    own spread), so a real regression in the forward path (say, asking for every hidden state) still fails.
    """
    missed = []
    for batch, entry in results["batches"].items():
        spread = entry.get("noise", {}).get("bare_iqr_share", 0.0)
        for name in TARGETED:
            share = entry.get("monitor_only_share_of_bare", {}).get(f"{name}_decide")
            if share is not None and share > MAX_ADDED:
                missed.append(f"batch {batch}: the {name} monitor's work is {100 * share:.2f}% of the bare "
                              f"forward > {100 * MAX_ADDED:.0f}%")
            cost = entry["added"][name]
            if cost["paired_over_bare"] > MAX_ADDED + spread:
                missed.append(f"batch {batch}: {name} monitor adds {100 * cost['paired_over_bare']:.2f}% end to "
                              f"end (paired median; ratio of medians {100 * cost['over_bare']:.2f}%) > "
                              f"{100 * MAX_ADDED:.0f}% + the bare forward's spread {100 * spread:.2f}%")
    return missed


def noise(samples: dict[str, list[float]]) -> dict[str, float]:
    """The bare forward's interquartile range as a share of its median: how far two medians wander."""
    bare = sorted(samples["bare"])
    q1, q3 = bare[len(bare) // 4], bare[(3 * len(bare)) // 4]
    return {"bare_iqr_share": (q3 - q1) / statistics.median(bare)}


def run(rounds: dict[int, int], profile: bool = False, subject: Subject | None = None) -> dict:
    subject = subject or Subject()
    results: dict = {"batches": {}, "load_before": load_average()}
    for size in BATCHES:
        calls = 10 if size == 1 else 1
        samples = timed(subject.setups(size), rounds[size], calls)
        only = medians(timed(subject.monitor_only(size), 30, 100 if size == 1 else 10))
        entry = {"added": added_costs(samples), "noise": noise(samples),
                 "monitor_only_s": only,
                 "monitor_only_share_of_bare": {k: v / medians(samples)["bare"] for k, v in only.items()},
                 "rounds": rounds[size], "calls_per_sample": calls,
                 "shape": list(subject.adapter.tokenize(subject.texts[:size], MAX_LENGTH)["input_ids"].shape)
                 if size > 1 else _batch1_shape(subject)}
        if profile:
            entry["input_profile_s"] = medians(timed(subject.profile_input(size), 30, 100 if size == 1 else 10))
        results["batches"][size] = entry
        print(table_batch(size, entry), flush=True)
    lex = subject.lexical_batches(64)
    samples = time_round_robin({"lexical": lambda: subject.lexical_pass(lex)}, 15, warmup=2)["lexical"]
    results["lexical"] = {"texts": subject.dev_size, "batch": 64, "median_s": statistics.median(samples),
                          "texts_per_s": subject.dev_size / statistics.median(samples),
                          "tokens_per_s": sum(int(m.sum()) for _, m in lex) / statistics.median(samples)}
    print(f"lexical check (InputMonitor.match + matches, pre-tokenised, batches of 64): "
          f"{results['lexical']['texts_per_s']:,.0f} texts/s ({results['lexical']['tokens_per_s']:,.0f} tokens/s)")
    results["load_after"] = load_average()
    return results


def _batch1_shape(subject: Subject) -> str:
    lengths = sorted(int(subject.adapter.tokenize([t], MAX_LENGTH)["attention_mask"].sum()) for t in subject.texts[:64])
    return f"1 x ({lengths[0]}..{lengths[-1]} tokens, median {lengths[len(lengths) // 2]}; cycling over 64 sentences)"


def table_batch(size: int, entry: dict) -> str:
    lines = [f"batch {size} (input_ids {entry['shape']}):",
             f"  {'setup':12} {'median ms':>10} {'vs bare (medians)':>18} {'vs bare (paired)':>17}"]
    for name, cost in entry["added"].items():
        lines.append(f"  {name:12} {cost['median_s'] * 1e3:10.3f} {100 * cost['over_bare']:17.2f}% "
                     f"{100 * cost['paired_over_bare']:16.2f}%")
    lines.append(f"  bare forward spread (IQR / median): {100 * entry['noise']['bare_iqr_share']:.2f}%")
    for name, seconds in entry["monitor_only_s"].items():
        lines.append(f"  monitor work alone: {name:13} {seconds * 1e6:9.1f} us = "
                     f"{100 * entry['monitor_only_share_of_bare'][name]:.2f}% of bare")
    for name, seconds in entry.get("input_profile_s", {}).items():
        lines.append(f"  input profile: {name:26} {seconds * 1e6:9.1f} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds-1", type=int, default=40, help="samples of 10 calls each")
    parser.add_argument("--rounds-64", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="time the input monitor's steps one by one")
    parser.add_argument("--json", type=Path, help="write the results here (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run({1: args.rounds_1, 64: args.rounds_64}, profile=args.profile)
    missed = check_targets(results)
    results.update({"machine": machine_facts(), "threads": args.threads, "model": lm.DEFAULT_MODEL,
                    "triggers": TRIGGERS, "bank": "4 random unit vectors, d=384, seed 0 (timing only)",
                    "max_length": MAX_LENGTH, "missed_targets": missed})
    path = args.json or results_path("bench_monitor")
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"saved {path}")
    return report_targets("bench_monitor", missed)


# -- pytest-benchmark face ---------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def subject():
        return Subject()

    @pytest.mark.parametrize("setup", SETUPS)
    @pytest.mark.parametrize("batch", BATCHES)
    def test_latency(benchmark, subject, batch, setup):
        fn = subject.setups(batch)[setup]
        benchmark.extra_info.update({"batch": batch, "setup": setup})
        benchmark.pedantic(fn, rounds=200 if batch == 1 else 20, iterations=1, warmup_rounds=3)

    def test_lexical_throughput(benchmark, subject):
        lex = subject.lexical_batches(64)
        benchmark.pedantic(subject.lexical_pass, args=(lex,), rounds=10, iterations=1, warmup_rounds=1)
        benchmark.extra_info["texts_per_s"] = subject.dev_size / benchmark.stats.stats.median

    @pytest.mark.parametrize("batch", BATCHES)
    def test_added_cost_same_run(subject, batch, capsys):
        """Round-robin over the setups in this one test: the added cost of each monitor over the bare forward."""
        samples = timed(subject.setups(batch), 40 if batch == 1 else 20, 10 if batch == 1 else 1)
        costs = added_costs(samples)
        with capsys.disabled():
            print()
            for name, cost in costs.items():
                print(f"batch {batch} {name:10} median {cost['median_s'] * 1e3:8.3f} ms  added "
                      f"{100 * cost['over_bare']:6.2f}% (medians) {100 * cost['paired_over_bare']:6.2f}% (paired)")
        path = results_path(f"bench_monitor_pytest_b{batch}")
        path.write_text(json.dumps({"machine": machine_facts(), "batch": batch, "added": costs}, indent=2,
                                   default=str))
        if os.environ.get("PATRONUS_BENCH_STRICT") == "1":
            missed = check_targets({"batches": {batch: {"added": costs}}})
            assert not missed, missed


if __name__ == "__main__":
    sys.exit(main())
