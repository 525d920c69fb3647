"""CPU benchmarks of the kernel ops: the compiled kernels against the reference and plain torch.

Two faces, same cases:

* ``python benchmarks/bench_ops.py [--rounds 5] [--only token_topk|supcon|bank] [--no-memory]``
  times every variant of a case round-robin in one process (so background load
  hits all variants alike), reports medians and ratios, measures the peak extra
  memory of token_topk in fresh processes, and writes
  ``benchmarks/results/bench_ops_<time>.json`` with the machine, torch and
  build facts.
* ``python -m pytest benchmarks/bench_ops.py`` is the pytest-benchmark suite;
  ``benchmarks/conftest.py`` prints ext-vs-other ratios and writes the JSON.

Cases and targets (2-core CPU):

* token_topk, N=4096 queries, V=30522, d in {384, 768}, k=10, float32:
  ``ext`` vs ``torch`` = ``torch.topk(q @ table.T, k, largest=False)`` (the
  negated ranking without an extra pass) and ``reference`` (the tiled fallback).
  Target: ext time <= 1.1x torch; ext peak extra memory <= 5% of the N x V
  float32 score matrix torch materialises.
* supcon_loss forward + backward, C=120 candidate sets, N=144 (16 clean + 8
  triggers x 16 poisoned, the Patronus batch), d=384: ``ext`` vs
  ``reference`` (autograd through the pure-PyTorch loss).  Target: ext >= 1.5x faster.
* bank_similarity, M=512 outputs vs K=64 bank vectors, d=384, cosine and sign (no target).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

try:  # the package when run from a checkout without installing
    from patronus_ext import ops
    from patronus_ext.ops import _extension
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from patronus_ext import ops
    from patronus_ext.ops import _extension

from _common import load_average, machine_facts, medians, results_path, time_round_robin

TOPK_N, TOPK_V, TOPK_K = 4096, 30522, 10
TOPK_DIMS = (384, 768)
SUPCON_C, SUPCON_D, SUPCON_CLEAN, SUPCON_TRIGGERS, SUPCON_PER_TRIGGER = 120, 384, 16, 8, 16
BANK_M, BANK_K, BANK_D = 512, 64, 384

TARGETS = {
    "token_topk": "ext time <= 1.1 x torch; ext peak extra memory <= 5% of the N x V float32 matrix",
    "supcon_loss fwd+bwd": "ext >= 1.5 x faster than reference",
}


def ext_available() -> bool:
    return _extension.state().loaded


# --------------------------------------------------------------------------- cases

def topk_inputs(dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(TOPK_N, dim, generator=generator)
    table = torch.randn(TOPK_V, dim, generator=generator)
    return queries, table


def topk_variants(queries, table, k=TOPK_K) -> dict:
    variants = {
        "torch": lambda: torch.topk(queries @ table.T, k, dim=1, largest=False),
        "reference": lambda: ops.token_topk(queries, table, k, backend="reference"),
    }
    if ext_available():
        variants["ext"] = lambda: ops.token_topk(queries, table, k, backend="ext")
    return variants


def supcon_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(SUPCON_CLEAN, dtype=torch.long),
                        torch.arange(1, SUPCON_TRIGGERS + 1).repeat_interleave(SUPCON_PER_TRIGGER)])
    n = labels.numel()
    features = torch.randn(SUPCON_C, n, SUPCON_D, generator=generator).requires_grad_()
    grad_loss = torch.rand(SUPCON_C, generator=generator) + 0.5
    return features, labels, grad_loss


def supcon_variants(features, labels, grad_loss) -> dict:
    def step(backend):
        def run():
            loss = ops.supcon_loss(features, labels, 0.5, backend=backend)
            (grad,) = torch.autograd.grad(loss, features, grad_loss)
            return grad
        return run

    variants = {"reference": step("reference")}
    if ext_available():
        variants["ext"] = step("ext")
    return variants


def bank_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BANK_M, BANK_D, generator=generator), torch.randn(BANK_K, BANK_D, generator=generator)


def bank_variants(x, bank, mode) -> dict:
    variants = {"reference": lambda: ops.bank_similarity(x, bank, mode, backend="reference")}
    if ext_available():
        variants["ext"] = lambda: ops.bank_similarity(x, bank, mode, backend="ext")
    return variants


# --------------------------------------------------------------------------- peak memory

def read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe_topk_memory(variant: str, dim: int) -> dict:
    """In this process: the RSS high-water mark of one call above the RSS before it.

    The variant first runs once on a few query rows, so thread pools and BLAS
    buffers exist before the measurement; freed heap memory is then returned to
    the system (malloc_trim), so a buffer the call needs must show up as new
    resident pages, and VmHWM is reset to the current RSS (``5`` > clear_refs).
    """
    queries, table = topk_inputs(dim)
    topk_variants(queries[:64], table)[variant]()
    fn = topk_variants(queries, table)[variant]
    gc.collect()
    _trim_heap()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = read_status_kib("VmHWM")
    result = fn()
    peak = read_status_kib("VmHWM")
    del result
    return {"variant": variant, "dim": dim, "extra_bytes": (peak - before) * 1024,
            "baseline_bytes": before * 1024}


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory may hide part of a peak
        pass


def measure_topk_memory(variant: str, dim: int) -> dict:
    """probe_topk_memory in a fresh process (so other cases' allocations cannot hide a peak)."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", f"{variant}:{dim}"],
                          capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    matrix = TOPK_N * TOPK_V * 4
    measured.update({"n": TOPK_N, "v": TOPK_V, "k": TOPK_K, "nv_matrix_bytes": matrix,
                     "fraction_of_nv_matrix": measured["extra_bytes"] / matrix})
    return measured


def memory_supported() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


# --------------------------------------------------------------------------- the standalone run

def summarize(case: str, shape: str, samples: dict) -> list[dict]:
    middle = medians(samples)
    rows = []
    for name, times in samples.items():
        rows.append({"case": case, "shape": shape, "variant": name, "median_s": middle[name],
                     "min_s": min(times), "max_s": max(times), "rounds": len(times),
                     "ext_speedup": (middle[name] / middle["ext"]) if "ext" in middle else None})
    return rows


def render(rows: list[dict], memory: list[dict]) -> str:
    lines = [f"{'case':<22} {'shape':<32} {'variant':<10} {'median':>10} {'min':>10} {'max':>10}  "
             f"{'variant/ext':>11}"]
    for row in rows:
        ratio = f"{row['ext_speedup']:.2f}x" if row["ext_speedup"] is not None else "-"
        lines.append(f"{row['case']:<22} {row['shape']:<32} {row['variant']:<10} {row['median_s'] * 1e3:>8.1f}ms "
                     f"{row['min_s'] * 1e3:>8.1f}ms {row['max_s'] * 1e3:>8.1f}ms  {ratio:>11}")
    if memory:
        lines.append("")
        lines.append(f"token_topk peak extra memory (steady state, fresh process), vs the N x V float32 matrix "
                     f"({TOPK_N}x{TOPK_V}x4 B = {TOPK_N * TOPK_V * 4 / 2**20:.0f} MiB):")
        for m in memory:
            lines.append(f"  d={m['dim']:<4} {m['variant']:<10} {m['extra_bytes'] / 2**20:>9.1f} MiB  "
                         f"{100 * m['fraction_of_nv_matrix']:>6.2f}%")
    lines.append("")
    lines.append("targets: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per variant (token_topk: min(rounds, 5))")
    parser.add_argument("--only", action="append", choices=["token_topk", "supcon", "bank"],
                        help="run only these cases (repeatable)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--out", default=None, help="folder for the JSON (default: benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # VARIANT:DIM, internal
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        variant, dim = args.memory_probe.split(":")
        print(json.dumps(probe_topk_memory(variant, int(dim))))
        return 0

    only = set(args.only or ["token_topk", "supcon", "bank"])
    rows, memory = [], []
    # Other processes on a small machine distort every timing: record the load around the run.
    load_before = load_average()
    if not ext_available():
        print(f"note: compiled module not loaded ({_extension.state().reason}); timing the reference only")
    if "supcon" in only:
        features, labels, grad_loss = supcon_inputs()
        shape = f"C={SUPCON_C} N={labels.numel()} d={SUPCON_D}"
        rows += summarize("supcon_loss fwd+bwd", shape,
                          time_round_robin(supcon_variants(features, labels, grad_loss), max(args.rounds, 20)))
    if "bank" in only:
        x, bank = bank_inputs()
        for mode in ("cosine", "sign"):
            rows += summarize(f"bank_similarity {mode}", f"M={BANK_M} K={BANK_K} d={BANK_D}",
                              time_round_robin(bank_variants(x, bank, mode), max(args.rounds, 20)))
    if "token_topk" in only:
        for dim in TOPK_DIMS:
            queries, table = topk_inputs(dim)
            rows += summarize("token_topk", f"N={TOPK_N} V={TOPK_V} d={dim} k={TOPK_K}",
                              time_round_robin(topk_variants(queries, table), min(args.rounds, 5)))
            del queries, table
        if not args.no_memory and memory_supported():
            for dim in TOPK_DIMS:
                for variant in (["ext"] if ext_available() else []) + ["torch", "reference"]:
                    memory.append(measure_topk_memory(variant, dim))

    print(render(rows, memory))
    if load_before is not None:
        print(f"load average (1, 5, 15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
              f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    path = results_path("bench_ops", args.out)
    path.write_text(json.dumps({"machine": machine_facts(), "load_average_before": load_before,
                                "targets": TARGETS, "timings": rows, "token_topk_memory": memory}, indent=2))
    print(f"\nwrote {path}")
    return 0


# --------------------------------------------------------------------------- pytest-benchmark face

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    def _variants_or_skip(variants: dict, variant: str):
        if variant not in variants:
            pytest.skip(f"compiled module not loaded: {_extension.state().reason}")
        return variants[variant]

    @pytest.mark.parametrize("dim", TOPK_DIMS)
    @pytest.mark.parametrize("variant", ["ext", "torch", "reference"])
    def test_token_topk(benchmark, variant, dim):
        queries, table = topk_inputs(dim)
        fn = _variants_or_skip(topk_variants(queries, table), variant)
        benchmark.extra_info.update(n=TOPK_N, v=TOPK_V, d=dim, k=TOPK_K)
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)

    @pytest.mark.parametrize("variant", ["ext", "reference"])
    def test_supcon_fwd_bwd(benchmark, variant):
        features, labels, grad_loss = supcon_inputs()
        fn = _variants_or_skip(supcon_variants(features, labels, grad_loss), variant)
        benchmark.extra_info.update(c=SUPCON_C, n=labels.numel(), d=SUPCON_D)
        benchmark.pedantic(fn, rounds=30, warmup_rounds=2, iterations=1)

    @pytest.mark.parametrize("mode", ["cosine", "sign"])
    @pytest.mark.parametrize("variant", ["ext", "reference"])
    def test_bank_similarity(benchmark, variant, mode):
        x, bank = bank_inputs()
        fn = _variants_or_skip(bank_variants(x, bank, mode), variant)
        benchmark.extra_info.update(m=BANK_M, k=BANK_K, d=BANK_D)
        benchmark.pedantic(fn, rounds=30, warmup_rounds=2, iterations=1)

    @pytest.mark.skipif(not memory_supported(), reason="needs Linux /proc/self/clear_refs")
    @pytest.mark.parametrize("dim", TOPK_DIMS)
    @pytest.mark.parametrize("variant", ["ext", "torch"])
    def test_token_topk_peak_memory(variant, dim, benchmark_records):
        if variant == "ext" and not ext_available():
            pytest.skip("compiled module not loaded")
        benchmark_records["token_topk_memory"].append(measure_topk_memory(variant, dim))


if __name__ == "__main__":
    sys.exit(main())
