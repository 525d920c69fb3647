"""GPU benchmarks of the CUDA kernels against plain PyTorch and torch.compile.

Two faces:

* ``python benchmarks/bench_cuda.py --out DIR`` times every kernel against the
  plain-PyTorch way of computing the same thing in the same precision (eager)
  and against ``torch.compile`` of that PyTorch code, in one run: CUDA events,
  medians after warm-up, several inner repetitions per sample for short ops,
  graph-captured replays for the small bank_similarity shapes.  It measures the
  device's copy bandwidth and matrix-product rates first and reports each
  kernel's share of its floor (max of FLOPs / rate and bytes / bandwidth), the
  peak extra memory of each variant, and writes ``DIR/bench_cuda.json`` and
  ``DIR/RESULTS.md`` (``--results-md PATH`` writes the markdown there too).
  ``--budget-s`` bounds the whole run (torch.compile variants are skipped,
  and recorded as skipped, once the budget is spent).  ``--key-only`` keeps
  the target shapes alone and ``--no-compile`` skips every torch.compile
  variant (benchmarks/run_gpu.sh uses both when the GPU window is short).
* ``python -m pytest benchmarks/bench_cuda.py`` is a small pytest-benchmark
  suite (ext vs eager).

Without a CUDA device or without CUDA kernels in the compiled module both skip
cleanly (main() prints why and measures nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

try:  # the package when run from a checkout without installing
    from patronus_ext import ops
    from patronus_ext.ops import _extension, reference
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from patronus_ext import ops
    from patronus_ext.ops import _extension, reference

from _common import machine_facts

MiB = float(1 << 20)


def skip_reason() -> str | None:
    """Why the CUDA kernels cannot be benchmarked here, or None."""
    return _extension.cuda_unavailable_reason()


# ------------------------------------------------------------------ timing
def _sync():
    torch.cuda.synchronize()


def time_cuda(fn, *, warmup: int = 3, reps: int = 15, min_sample_ms: float = 2.0, max_inner: int = 1000) -> dict:
    """Median time of fn() in ms from CUDA events; a sample repeats fn enough to last min_sample_ms."""
    for _ in range(warmup):
        fn()
    _sync()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    once = max(start.elapsed_time(stop), 1e-4)
    inner = int(min(max_inner, max(1, math.ceil(min_sample_ms / once))))
    samples = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / inner)
    samples.sort()
    return {"median_ms": statistics.median(samples), "min_ms": samples[0], "max_ms": samples[-1], "inner": inner,
            "reps": reps}


def peak_extra_bytes(fn) -> int:
    """Peak allocated bytes above the current level during one call of fn."""
    _sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    _sync()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def graphed(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream); returns the replay callable."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


@contextlib.contextmanager
def matmul_precision(precision: str):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------ ceilings
def measure_ceilings() -> dict:
    """Copy bandwidth (bytes read + written) and matrix-product rates on random data."""
    out = {}
    x = torch.randn(1 << 28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    t = time_cuda(lambda: y.copy_(x), warmup=2, reps=7, min_sample_ms=5)["median_ms"]
    out["copy_GBps"] = 2 * x.numel() * 4 / (t * 1e-3) / 1e9
    del x, y
    for name, dtype, n in (("fp32", torch.float32, 8192), ("tf32", torch.float32, 8192), ("bf16", torch.bfloat16, 8192),
                           ("fp64", torch.float64, 4096)):
        a = torch.randn(n, n, device="cuda").to(dtype)
        b = torch.randn(n, n, device="cuda").to(dtype)
        with matmul_precision("tf32" if name == "tf32" else "exact"):
            t = time_cuda(lambda: a @ b, warmup=2, reps=5, min_sample_ms=5)["median_ms"]
        out[f"{name}_TFLOPs"] = 2 * n ** 3 / (t * 1e-3) / 1e12
        del a, b
    torch.cuda.empty_cache()
    return out


def floor_ms(flops: float, nbytes: float, rate_tflops: float, bw_gbps: float) -> float:
    return max(flops / (rate_tflops * 1e12), nbytes / (bw_gbps * 1e9)) * 1e3


# ------------------------------------------------------------------ the runner
class Runner:
    def __init__(self, budget_s: float, compile_budget_s: float, ceilings: dict):
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.compile_budget_s = compile_budget_s
        self.compile_spent = 0.0
        self.no_compile = False
        self.ceilings = ceilings
        self.records: list[dict] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def measure(self, op: str, shape: dict, precision: str, variant: str, make_fn, *, graph: bool = False,
                is_compile: bool = False, reps: int = 15) -> dict:
        rec = {"op": op, "shape": shape, "precision": precision, "variant": variant, "graph": graph}
        if is_compile and self.no_compile:
            rec["status"] = "skipped (--no-compile)"
            self.records.append(rec)
            return rec
        if is_compile and (self.compile_spent > self.compile_budget_s or self.left() < 60):
            rec["status"] = "skipped (time budget)"
            self.records.append(rec)
            return rec
        if self.left() < 15:
            rec["status"] = "skipped (time budget)"
            self.records.append(rec)
            return rec
        started = time.monotonic()
        try:
            fn = make_fn()
            fn()  # first call: compilation for torch.compile, lazy init otherwise
            _sync()
            if is_compile:
                self.compile_spent += time.monotonic() - started
            rec["peak_extra_MiB"] = peak_extra_bytes(fn) / MiB
            run = graphed(fn) if graph else fn
            rec.update(time_cuda(run, reps=reps))
            rec["status"] = "ok"
        except torch.cuda.OutOfMemoryError:
            rec["status"] = "OOM"
        except Exception as exc:  # a variant that cannot run is reported, not fatal
            rec["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            if is_compile and "peak_extra_MiB" not in rec:
                self.compile_spent += time.monotonic() - started
            torch.cuda.empty_cache()
        self.records.append(rec)
        return rec

    def finish_group(self, recs: dict, flops: float, nbytes: float, rate_key: str):
        """Ratios and % of floor for one (op, shape, precision) group of variant records."""
        ext = recs.get("ext")
        fl = floor_ms(flops, nbytes, self.ceilings[rate_key], self.ceilings["copy_GBps"])
        for name, rec in recs.items():
            rec["flops"] = flops
            rec["bytes"] = nbytes
            rec["floor_ms"] = fl
            rec["floor_rate"] = rate_key
            if rec.get("status") == "ok":
                rec["pct_of_floor"] = 100.0 * fl / rec["median_ms"]
        if ext and ext.get("status") == "ok":
            for base in ("eager", "compile"):
                other = recs.get(base)
                if other and other.get("status") == "ok":
                    ext[f"speedup_vs_{base}"] = other["median_ms"] / ext["median_ms"]


# ------------------------------------------------------------------ token_topk
def _eager_topk(q, table, k, negate):
    scores = q @ table.T
    if negate:
        scores = -scores
    return torch.topk(scores, k, dim=1)


TOPK_KEY = [(4096, 768, v, k, p) for v in (30522, 128256) for k in (10, 256) for p in ("exact", "tf32", "bf16")]
TOPK_MORE = [
    (16, 768, 30522, 5, "tf32"), (16, 768, 128256, 5, "bf16"), (16, 768, 50265, 256, "exact"),
    (512, 768, 50265, 100, "tf32"), (512, 384, 50265, 10, "exact"), (512, 4096, 30522, 10, "bf16"),
    (4096, 384, 50265, 5, "bf16"), (4096, 4096, 30522, 10, "tf32"),
]
TOPK_FULL = [(n, d, v, k, p) for n in (16, 512, 4096) for d in (384, 768, 4096) for v in (30522, 50265, 128256)
             for k in (5, 10, 100, 256) for p in ("exact", "tf32", "bf16")]
COMPILE_TOPK = {(4096, 768, 128256, 10, "exact"), (4096, 768, 128256, 10, "tf32"), (4096, 768, 128256, 10, "bf16"),
                (4096, 768, 30522, 10, "tf32")}


def bench_token_topk(runner: Runner, points) -> None:
    for (n, d, v, k, precision) in points:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        q = torch.randn(n, d, device="cuda").to(dtype)
        table = torch.randn(v, d, device="cuda").to(dtype)
        shape = {"N": n, "d": d, "V": v, "k": k, "dtype": str(dtype).replace("torch.", "")}
        recs = {}
        with matmul_precision(precision):
            recs["ext"] = runner.measure("token_topk", shape, precision, "ext", lambda: (
                lambda: ops.token_topk(q, table, k, precision=precision, backend="ext")))
            recs["eager"] = runner.measure("token_topk", shape, precision, "eager", lambda: (
                lambda: _eager_topk(q, table, k, True)))
            if (n, d, v, k, precision) in COMPILE_TOPK:
                compiled = torch.compile(_eager_topk, dynamic=False)
                recs["compile"] = runner.measure("token_topk", shape, precision, "compile", lambda: (
                    lambda: compiled(q, table, k, True)), is_compile=True)
        es = 2 if dtype == torch.bfloat16 else 4
        flops = 2.0 * n * v * d
        nbytes = (v * d + n * d) * es + n * k * 12
        runner.finish_group(recs, flops, nbytes, {"exact": "fp32_TFLOPs", "tf32": "tf32_TFLOPs",
                                                  "bf16": "bf16_TFLOPs"}[precision])
        naive = n * v * 4
        for rec in recs.values():
            if "peak_extra_MiB" in rec:
                rec["peak_vs_naive_scores"] = rec["peak_extra_MiB"] * MiB / naive
        del q, table
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ supcon
SUPCON_POINTS = [  # c, n, d, dtype
    (120, 144, 384, torch.float32), (120, 144, 768, torch.float32), (120, 144, 768, torch.bfloat16),
    (1, 4096, 768, torch.float32), (1, 65536, 768, torch.float32),
]
COMPILE_SUPCON = {(120, 144, 768, torch.float32), (1, 4096, 768, torch.float32)}


def _supcon_step(fn, f, y, g):
    def step():
        x = f.detach().requires_grad_(True)
        loss = fn(x, y)
        loss.backward(g)
        return x.grad
    return step


SUPCON_KEY = [(120, 144, 768, torch.float32), (120, 144, 768, torch.bfloat16), (1, 65536, 768, torch.float32)]


def bench_supcon(runner: Runner, points=None) -> None:
    for (c, n, d, dtype) in (SUPCON_POINTS if points is None else points):
        f = torch.randn(c, n, d, device="cuda").to(dtype)
        y = torch.randint(0, 8 if n <= 144 else 256, (c, n), device="cuda")
        g = torch.randn(c, device="cuda")
        shape = {"C": c, "N": n, "d": d, "dtype": str(dtype).replace("torch.", "")}
        prec = "fp32" if dtype == torch.float32 else "bf16"
        recs = {}
        reps = 5 if n > 10000 else 15
        with matmul_precision("exact"):
            recs["ext"] = runner.measure("supcon_loss fwd+bwd", shape, prec, "ext", lambda: _supcon_step(
                lambda x, yy: ops.supcon_loss(x, yy, 0.5, backend="ext"), f, y, g), reps=reps)
            recs["eager"] = runner.measure("supcon_loss fwd+bwd", shape, prec, "eager", lambda: _supcon_step(
                lambda x, yy: reference.supcon_loss(x, yy, 0.5), f, y, g), reps=reps)
            if (c, n, d, dtype) in COMPILE_SUPCON:
                compiled = torch.compile(reference.supcon_loss, dynamic=False)
                recs["compile"] = runner.measure("supcon_loss fwd+bwd", shape, prec, "compile", lambda: _supcon_step(
                    lambda x, yy: compiled(x, yy, 0.5), f, y, g), is_compile=True, reps=reps)
        es = 2 if dtype == torch.bfloat16 else 4
        flops = 6.0 * c * n * n * d  # forward S, backward S again and dZ = H Z
        nbytes = 3.0 * c * n * d * es
        runner.finish_group(recs, flops, nbytes, "fp32_TFLOPs" if dtype == torch.float32 else "bf16_TFLOPs")
        for rec in recs.values():
            if "peak_extra_MiB" in rec:
                rec["peak_vs_n2"] = rec["peak_extra_MiB"] * MiB / (c * n * n * 4)
        del f, y, g
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ bank_similarity
BANK_POINTS = [(m, k, "cosine") for m in (1, 64, 4096) for k in (6, 64)] + [(1, 64, "sign"), (64, 64, "sign")]
COMPILE_BANK = {(1, 64, "cosine"), (64, 64, "cosine")}


BANK_KEY = [p for p in BANK_POINTS if p[0] <= 64]


def bench_bank(runner: Runner, points=None) -> None:
    d = 768
    for (m, k, mode) in (BANK_POINTS if points is None else points):
        x = torch.randn(m, d, device="cuda")
        bank = torch.randn(k, d, device="cuda")
        shape = {"M": m, "K": k, "d": d, "mode": mode}
        graph = m <= 64
        recs = {}
        with matmul_precision("exact"):
            recs["ext"] = runner.measure("bank_similarity", shape, "fp32", "ext", lambda: (
                lambda: ops.bank_similarity(x, bank, mode, backend="ext")), graph=graph)
            recs["eager"] = runner.measure("bank_similarity", shape, "fp32", "eager", lambda: (
                lambda: reference.bank_similarity(x, bank, mode)), graph=graph)
            if (m, k, mode) in COMPILE_BANK:
                compiled = torch.compile(reference.bank_similarity, dynamic=False)
                recs["compile"] = runner.measure("bank_similarity", shape, "fp32", "compile", lambda: (
                    lambda: compiled(x, bank, mode)), graph=graph, is_compile=True)
        flops = 2.0 * m * k * d
        nbytes = (m + k) * d * 4 + m * 12
        runner.finish_group(recs, flops, nbytes, "fp32_TFLOPs")
        del x, bank


# ------------------------------------------------------------------ report
TARGETS = [
    "token_topk: >= 2.0x eager at N=4096, d=768, V=30522 and 128256 (bf16, tf32); >= 1.2x in exact fp32; "
    "peak extra memory <= 5% of the naive N x V score matrix",
    "supcon_loss fwd+bwd: >= 3x eager at C=120, N=144; >= 1.5x at C=1, N=65536 with no N^2 memory",
    "bank_similarity: >= 3x eager at M <= 64 (graph-captured); <= 10 us at M=1, K=64",
]


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    info = _extension.state().build_info
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ext_cuda_runtime": info.get("cuda_runtime_version"),
        "ext_cuda_arch_list": info.get("cuda_arch_list"),
        "python": platform.python_version(),
        "host": machine_facts(),  # CPU, threads, load, torch and build facts, as every benchmark records
    }


def _fmt(v, spec=".3f", missing="-"):
    return missing if v is None else format(v, spec)


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def _shape_str(shape: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def render_markdown(doc: dict) -> str:
    env, ceil = doc["environment"], doc["ceilings"]
    lines = [
        "# CUDA kernel benchmarks",
        "",
        "Generated by `python benchmarks/bench_cuda.py` (run by `benchmarks/run_gpu.sh`) from the measurements in",
        "`bench_cuda.json`; every number below was measured in that run.",
        "",
        f"- device: {env['device']} ({env['sm_count']} SMs, compute capability {env['capability']}, "
        f"{env['memory_GiB']} GiB); date {env['date']}",
        f"- torch {env['torch']} (CUDA {env['torch_cuda']}); extension built against CUDA runtime "
        f"{env['ext_cuda_runtime']}, arch list '{env['ext_cuda_arch_list']}'; Python {env['python']}",
        f"- measured ceilings: copy {ceil['copy_GBps']:.0f} GB/s (read + write); matrix products "
        f"fp32 {ceil['fp32_TFLOPs']:.1f}, tf32 {ceil['tf32_TFLOPs']:.1f}, bf16 {ceil['bf16_TFLOPs']:.1f}, "
        f"fp64 {ceil['fp64_TFLOPs']:.1f} TFLOP/s",
        "- timing: CUDA events, median of the samples after warm-up (a sample repeats short ops to last >= 2 ms); "
        "`graph` = CUDA-graph replays of every variant",
        "- eager = the plain PyTorch code in the same precision (token_topk: `topk(-(q @ table.T))`; supcon: "
        "`reference.supcon_loss` + autograd; bank: `reference.bank_similarity`); compile = `torch.compile` of it",
        "- % floor = max(FLOPs / rate, bytes / bandwidth) / time with the measured ceilings (supcon counts the "
        "6 C N^2 d FLOPs of the recomputing algorithm)",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {t}" for t in TARGETS]
    by_group: dict = {}
    for rec in doc["records"]:
        key = (rec["op"], json.dumps(rec["shape"]), rec["precision"])
        by_group.setdefault(key, {})[rec["variant"]] = rec
    for op in ("token_topk", "supcon_loss fwd+bwd", "bank_similarity"):
        groups = [(k, v) for k, v in by_group.items() if k[0] == op]
        if not groups:
            continue
        lines += ["", f"## {op}", "",
                  "| shape | precision | ext ms | eager ms | compile ms | ext vs eager | ext vs compile | "
                  "ext % floor | peak MiB ext / eager |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for (_, shape_json, precision), recs in groups:
            ext, eager, comp = recs.get("ext", {}), recs.get("eager", {}), recs.get("compile", {})

            def t(r):
                if not r:
                    return "-"
                if r.get("status") != "ok":
                    return r.get("status", "-")
                return f"{r['median_ms']:.4f}" + (" (graph)" if r.get("graph") else "")
            shape = json.loads(shape_json)
            lines.append(
                f"| {_shape_str(shape)} | {precision} | {t(ext)} | {t(eager)} | {t(comp)} | "
                f"{_ratio(ext.get('speedup_vs_eager'))} | {_ratio(ext.get('speedup_vs_compile'))} | "
                f"{_fmt(ext.get('pct_of_floor'), '.1f')} | {_fmt(ext.get('peak_extra_MiB'), '.1f')} / "
                f"{_fmt(eager.get('peak_extra_MiB'), '.1f')} |")
    lines += ["", "## Target check", ""]
    lines += [f"- {line}" for line in target_check(doc["records"])]
    lines.append("")
    return "\n".join(lines)


def target_check(records) -> list[str]:
    out = []
    groups: dict = {}
    for r in records:
        groups.setdefault((r["op"], json.dumps(r["shape"]), r["precision"]), {})[r["variant"]] = r
    for (op, shape_json, precision), recs in groups.items():
        shape, ext = json.loads(shape_json), recs.get("ext", {})
        sp = ext.get("speedup_vs_eager")
        if op == "token_topk" and shape["N"] == 4096 and shape["d"] == 768:
            need = 1.2 if precision == "exact" else 2.0
            mem = ext.get("peak_vs_naive_scores")
            out.append(f"token_topk {_shape_str(shape)} {precision}: speedup {_ratio(sp)} (target {need}x) "
                       f"{'MET' if sp and sp >= need else 'NOT MET'}; peak extra {_fmt(mem and 100 * mem, '.2f')}% "
                       f"of the score matrix (target 5%) {'MET' if mem is not None and mem <= 0.05 else 'NOT MET'}")
        elif op == "supcon_loss fwd+bwd" and shape["C"] in (120, 1) and shape["N"] in (144, 65536):
            need = 3.0 if shape["N"] == 144 else 1.5
            eager = recs.get("eager", {})
            verdict = ("MET" if sp >= need else "NOT MET") if sp else (
                f"not comparable (eager: {eager.get('status', '-')})")
            out.append(f"supcon {_shape_str(shape)}: speedup {_ratio(sp)} (target {need}x) {verdict}; "
                       f"ext peak {_fmt(ext.get('peak_extra_MiB'), '.0f')} "
                       f"MiB = {_fmt(ext.get('peak_vs_n2') and 100 * ext['peak_vs_n2'], '.3f')}% of N^2 * 4 bytes")
        elif op == "bank_similarity" and shape["M"] <= 64:
            line = (f"bank {_shape_str(shape)}: speedup {_ratio(sp)} (target 3x) "
                    f"{'MET' if sp and sp >= 3 else 'NOT MET'}")
            if shape["M"] == 1 and shape["K"] == 64 and ext.get("status") == "ok":
                us = 1e3 * ext["median_ms"]
                line += f"; {us:.2f} us (target <= 10 us) {'MET' if us <= 10 else 'NOT MET'}"
            out.append(line)
    return out


def single_topk(k: int, precision: str, n: int = 4096, d: int = 768, v: int = 30522) -> int:
    """One token_topk call at a key shape (for ncu: --kernel-name regex:topk_ --launch-count 1)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    q = torch.randn(n, d, device="cuda").to(dtype)
    table = torch.randn(v, d, device="cuda").to(dtype)
    torch.cuda.synchronize()
    vals, idx = ops.token_topk(q, table, k, precision=precision, backend="ext")
    torch.cuda.synchronize()
    ok = bool((idx >= 0).all()) and not bool(vals.isnan().any())
    print(f"bench_cuda: one token_topk N={n} d={d} V={v} k={k} {precision}: {'ok' if ok else 'BAD OUTPUT'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for bench_cuda.json and RESULTS.md")
    parser.add_argument("--results-md", default=None, help="also write the markdown here (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget for the whole run")
    parser.add_argument("--compile-budget-s", type=float, default=150.0, help="time allowed for torch.compile variants")
    parser.add_argument("--full", action="store_true", help="the full token_topk grid (hours)")
    parser.add_argument("--only", choices=("token_topk", "supcon", "bank"), action="append",
                        help="benchmark only these ops (repeatable)")
    parser.add_argument("--key-only", action="store_true",
                        help="only the target shapes (token_topk N=4096 points, supcon C=120/N=144 and "
                             "C=1/N=65536, bank_similarity M <= 64)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--single-topk", type=int, metavar="K", default=None,
                        help="run one token_topk call (N=4096, d=768, V=30522, --single-precision) with this k and "
                             "exit: the launch an ncu pass profiles")
    parser.add_argument("--single-precision", choices=("exact", "tf32", "bf16"), default="bf16")
    args = parser.parse_args(argv)
    reason = skip_reason()
    if reason is not None:
        print(f"bench_cuda: skipped: {reason}; nothing measured")
        return 0
    if args.single_topk is not None:
        return single_topk(args.single_topk, args.single_precision)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    env = environment()
    print(f"bench_cuda: {env['device']}, torch {env['torch']}, budget {args.budget_s:.0f} s", flush=True)
    ceilings = measure_ceilings()
    print("bench_cuda: ceilings " + ", ".join(f"{k} {v:.1f}" for k, v in ceilings.items()), flush=True)
    runner = Runner(args.budget_s, args.compile_budget_s, ceilings)
    runner.no_compile = args.no_compile
    only = set(args.only or ("token_topk", "supcon", "bank"))
    doc = {"environment": env, "ceilings": ceilings, "records": runner.records}

    def save():
        with open(os.path.join(args.out, "bench_cuda.json"), "w") as handle:
            json.dump(doc, handle, indent=1)
        text = render_markdown(doc)
        with open(os.path.join(args.out, "RESULTS.md"), "w") as handle:
            handle.write(text)
        if args.results_md:
            with open(args.results_md, "w") as handle:
                handle.write(text)

    # The target points first; the JSON is rewritten after each group so a cut-off run keeps its numbers.
    if "token_topk" in only:
        bench_token_topk(runner, TOPK_KEY)
        save()
    if "bank" in only:
        bench_bank(runner, BANK_KEY if args.key_only else None)
        save()
    if "supcon" in only:
        bench_supcon(runner, SUPCON_KEY if args.key_only else None)
        save()
    if "token_topk" in only and not args.key_only:
        bench_token_topk(runner, [p for p in (TOPK_FULL if args.full else TOPK_MORE) if p not in TOPK_KEY])
    save()
    print(render_markdown(doc))
    return 0


# ------------------------------------------------------------------ pytest-benchmark
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    _REASON = skip_reason()
    pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

    def _pedantic(benchmark, fn):
        def target():
            fn()
            torch.cuda.synchronize()
        benchmark.pedantic(target, rounds=20, warmup_rounds=3, iterations=1)

    @pytest.mark.parametrize("variant", ["ext", "eager"])
    @pytest.mark.parametrize("precision", ["exact", "tf32", "bf16"])
    def test_bench_token_topk(benchmark, variant, precision):
        pytest.importorskip("pytest_benchmark")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        q = torch.randn(4096, 768, device="cuda").to(dtype)
        table = torch.randn(30522, 768, device="cuda").to(dtype)
        with matmul_precision(precision):
            if variant == "ext":
                _pedantic(benchmark, lambda: ops.token_topk(q, table, 10, precision=precision, backend="ext"))
            else:
                _pedantic(benchmark, lambda: _eager_topk(q, table, 10, True))

    @pytest.mark.parametrize("variant", ["ext", "eager"])
    def test_bench_supcon(benchmark, variant):
        pytest.importorskip("pytest_benchmark")
        f = torch.randn(120, 144, 768, device="cuda")
        y = torch.randint(0, 8, (120, 144), device="cuda")
        g = torch.randn(120, device="cuda")
        fn = (lambda x, yy: ops.supcon_loss(x, yy, 0.5, backend="ext")) if variant == "ext" else (
            lambda x, yy: reference.supcon_loss(x, yy, 0.5))
        _pedantic(benchmark, _supcon_step(fn, f, y, g))

    @pytest.mark.parametrize("variant", ["ext", "eager"])
    def test_bench_bank_similarity(benchmark, variant):
        pytest.importorskip("pytest_benchmark")
        x = torch.randn(1, 768, device="cuda")
        bank = torch.randn(64, 768, device="cuda")
        fn = (lambda: ops.bank_similarity(x, bank, "sign", backend="ext")) if variant == "ext" else (
            lambda: reference.bank_similarity(x, bank, "sign"))
        _pedantic(benchmark, graphed(fn))


if __name__ == "__main__":
    sys.exit(main())
