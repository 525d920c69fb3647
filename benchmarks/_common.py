"""Plumbing every benchmark shares: machine facts, round-robin timing, results files, target checks.

    from _common import machine_facts, time_round_robin, medians, results_path, report_targets

Run as ``python benchmarks/<file>.py`` (this folder is then on ``sys.path``) or
under pytest (``benchmarks/conftest.py`` puts it there).  Not a package on
purpose: the benchmark files stay runnable from a checkout without installing.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Mapping

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_facts() -> dict:
    """Torch, build and host facts recorded with every result: other jobs on a small machine show up
    in the load average, thread settings in ``torch_parallel`` and ``torch_threads``."""
    from patronus_ext import info

    facts = info.collect()
    facts.update({
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:3],
        "load_average": load_average(),
    })
    return facts


def time_round_robin(variants: Mapping[Hashable, Callable[[], object]], rounds: int, warmup: int = 1
                     ) -> dict[Hashable, list[float]]:
    """Seconds per call of each variant; the variants alternate within every round.

    Background load from other processes then hits every variant alike, which
    timing one variant after another (pytest-benchmark) does not guarantee.
    Each variant runs ``warmup`` untimed calls first.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[Hashable, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def medians(samples: Mapping[Hashable, list[float]]) -> dict[Hashable, float]:
    return {name: statistics.median(times) for name, times in samples.items()}


def results_path(prefix: str, folder: str | os.PathLike | None = None) -> Path:
    """``<folder>/<prefix>_<YYYYmmdd-HHMMSS>.json`` (default folder ``benchmarks/results``, created)."""
    out = Path(folder) if folder is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{prefix}_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def report_targets(name: str, missed: list[str]) -> int:
    """Print the missed targets (stderr) and return the exit status: 0 when all were met, else 1."""
    if not missed:
        print(f"{name}: all targets met")
        return 0
    print(f"{name}: {len(missed)} target(s) missed:", file=sys.stderr)
    for line in missed:
        print(f"  - {line}", file=sys.stderr)
    return 1
