"""pytest-benchmark glue for benchmarks/: machine facts, ext-vs-other ratios, a JSON per run.

Benchmarks parametrised by ``variant`` (``ext`` and its baselines) are paired
by test name and remaining parameters; the terminal summary prints each
baseline's median over the ext median, and the run is saved to
``benchmarks/results/pytest_<time>.json`` with torch, build and CPU facts
(``--benchmark-json PATH`` still writes pytest-benchmark's own file, which
gets the same facts under ``machine_info.patronus``).

pytest-benchmark times one variant after another, so load from other processes
can favour either side of a ratio; ``python benchmarks/bench_ops.py`` alternates
the variants round by round and is the one to quote on a shared machine.
"""

from __future__ import annotations

import json
import sys

import pytest

from _common import machine_facts, results_path

_RECORDS: dict = {"token_topk_memory": []}


@pytest.fixture(scope="session")
def benchmark_records() -> dict:
    """Results that are not timings (peak memory), reported and saved with the run."""
    return _RECORDS


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["patronus"] = machine_facts()


def _timings(config) -> list[dict]:
    session = getattr(config, "_benchmarksession", None)
    rows = []
    for bench in getattr(session, "benchmarks", []) or []:
        if not bench:
            continue
        params = dict(bench.params or {})
        variant = params.pop("variant", None)
        rows.append({"test": bench.name.split("[")[0], "params": params, "variant": variant,
                     "median_s": bench.stats.median, "min_s": bench.stats.min, "max_s": bench.stats.max,
                     "rounds": bench.stats.rounds, "extra_info": dict(bench.extra_info)})
    return rows


def _ratios(rows: list[dict]) -> list[dict]:
    """For every case with an ext variant: each other variant's median / ext median."""
    cases: dict = {}
    for row in rows:
        if row["variant"] is not None:
            key = (row["test"], json.dumps(row["params"], sort_keys=True))
            cases.setdefault(key, {})[row["variant"]] = row["median_s"]
    ratios = []
    for (test, params), medians in sorted(cases.items()):
        if "ext" not in medians:
            continue
        for variant, median in sorted(medians.items()):
            if variant != "ext":
                ratios.append({"test": test, "params": json.loads(params), "variant": variant,
                               "ext_median_s": medians["ext"], "variant_median_s": median,
                               "variant_over_ext": median / medians["ext"]})
    return ratios


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = _timings(config)
    ratios = _ratios(rows)
    memory = _RECORDS["token_topk_memory"]
    if not rows and not memory:
        return
    write = terminalreporter.write_line
    terminalreporter.section("patronus: ext vs baselines (median / ext median; > 1 means ext is faster)")
    for r in ratios:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        write(f"{r['test']:<32} {params:<16} {r['variant']:<10} {r['variant_median_s'] * 1e3:>9.1f} ms / "
              f"{r['ext_median_s'] * 1e3:>9.1f} ms = {r['variant_over_ext']:.2f}x")
    for m in memory:
        write(f"token_topk peak extra memory d={m['dim']} {m['variant']:<10} {m['extra_bytes'] / 2**20:8.1f} MiB "
              f"= {100 * m['fraction_of_nv_matrix']:.2f}% of the N x V float32 matrix")
    path = results_path("pytest")
    path.write_text(json.dumps({"machine": machine_facts(), "argv": sys.argv, "timings": rows, "ratios": ratios,
                                "token_topk_memory": memory}, indent=2, default=str))
    write(f"saved {path}")
