"""Audit wall time: one-by-one ``patronus scan`` calls vs ``patronus audit`` (local runner) vs Ray, same models.

    python benchmarks/bench_audit.py --list models.txt [--profile fast] [--corpus wikitext2]
        [--threads 2] [--ray-cpus 2] [--cpus-per-scan 1] [--modes scan,local,ray] [--scan-args "--loops 2"]
        [--work-dir DIR] [--json out.json]

Every mode is what a user would type, run as a subprocess and timed from outside:

* ``scan``: ``patronus scan MODEL --report ...`` once per model, one after another,
  each with ``--threads`` torch threads (a fresh Python, torch import and corpus read each time);
* ``local``: ``patronus audit --ray local --cpus-per-scan THREADS`` (one process, one model at a time);
* ``ray``: ``patronus audit --ray auto --ray-cpus RAY_CPUS --cpus-per-scan CPUS_PER_SCAN``: a local
  Ray instance started by the command, ``RAY_CPUS / CPUS_PER_SCAN`` scans at once.

From the Ray audit's ``results.jsonl`` (timestamps taken inside each task and by the driver) the
script derives the per-model cost (load + scan, measured in the task) and the per-task overhead:
``slots x (last result - first submission) - sum(task time)``, spread over the tasks (worker
start-up, imports, idle tail), plus the median return latency (driver receipt - task end).  A
separate Ray session times ``--noop-tasks`` empty tasks: the scheduling cost of a task alone.
The table also states how the audit would scale on N nodes from these numbers.

Verdicts of the three modes are compared (the same models and settings must agree).  Writes a
JSON (``--json``, default ``benchmarks/results/bench_audit_<time>.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from patronus_ext.audit import load_results  # noqa: E402
from patronus_ext.audit.results import RESULTS_FILE  # noqa: E402

from _common import machine_facts, results_path  # noqa: E402

MODES = ("scan", "local", "ray")


def command_env(threads: int | None) -> dict:
    """The environment of a timed subprocess: this checkout importable; torch threads pinned when given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("RAY_ADDRESS", None)  # the ray mode times a local instance started by the command
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed(argv: list[str], env: dict) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, done.stderr


def run_scans(models: list[str], work: Path, common: list[str], threads: int) -> dict:
    """One ``patronus scan`` per model; verdicts from the exit status (0 clean, 1 backdoored, 2 error)."""
    env = command_env(threads)
    rows, total = [], 0.0
    for index, model in enumerate(models):
        report = work / f"scan-{index}.json"
        seconds, status, err = timed([sys.executable, "-m", "patronus_ext.cli", "scan", model, "--report",
                                      str(report), "--force", "--quiet", "--device", "cpu", *common], env)
        total += seconds
        verdict = {0: "clean", 1: "backdoored"}.get(status)
        scan_seconds = json.loads(report.read_text())["timings"]["total"] if verdict else None
        rows.append({"model": model, "verdict": verdict, "wall": seconds, "scan": scan_seconds,
                     "error": None if verdict else err.strip().splitlines()[-1:]})
        print(f"  scan {model}: {verdict or 'error'} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"wall": total, "models": rows}


def run_audit(models: list[str], work: Path, name: str, common: list[str], runner_args: list[str],
              threads: int | None) -> dict:
    out = work / f"audit-{name}"
    listing = work / "models.txt"
    listing.write_text("\n".join(models) + "\n")
    seconds, status, err = timed([sys.executable, "-m", "patronus_ext.cli", "audit", "--list", str(listing),
                                  "--out", str(out), "--quiet", *runner_args, *common], command_env(threads))
    if status not in (0, 1, 2) or not (out / RESULTS_FILE).is_file():
        raise RuntimeError(f"patronus audit ({name}) failed: {err.strip()[-2000:]}")
    records = load_results(out)
    print(f"  audit {name}: {len(records)} records in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"wall": seconds, "status": status, "records": records}


def overhead_stats(records: list[dict], slots: int) -> dict:
    """Per-model cost and per-task overhead from the timestamps of an audit's records (see the module doc)."""
    ran = [r for r in records if r.get("timings", {}).get("task") is not None and not r.get("same_content_as")]
    if not ran:
        return {}
    t = [r["timings"] for r in ran]
    first_submit = min(x["submitted_at"] for x in t)
    last_received = max(x["received_at"] for x in t)
    span = last_received - first_submit
    busy = sum(x["task"] for x in t)
    scanned = [x for x, r in zip(t, ran) if r.get("verdict") is not None] or t  # per-model cost: models with a verdict
    return {
        "tasks": len(ran), "slots": slots, "dispatch_span": span, "task_seconds_sum": busy,
        "slot_utilisation": busy / (slots * span) if span > 0 else None,
        "overhead_per_task": (slots * span - busy) / len(ran),
        "median_task": statistics.median(x["task"] for x in scanned),
        "median_load_plus_scan": statistics.median(x.get("load", 0) + x.get("scan", 0) for x in scanned),
        "median_in_task_other": statistics.median(x["task"] - x.get("load", 0) - x.get("scan", 0) for x in scanned),
        "median_return_latency": statistics.median(x["received_at"] - x["finished_at"] for x in t),
        "first_start_latency": min(x["started_at"] for x in t) - first_submit,
    }


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def noop_overhead(num_cpus: int, tasks: int) -> dict:
    """Ray start-up time and the round trip of empty tasks (submitted together, and one at a time)."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="warning")
    init_seconds = time.perf_counter() - started

    @ray.remote(num_cpus=1)
    def noop(x):
        return x

    ray.get([noop.remote(i) for i in range(num_cpus * 2)])  # workers started and warm
    started = time.perf_counter()
    ray.get([noop.remote(i) for i in range(tasks)])
    batch = (time.perf_counter() - started) / tasks
    started = time.perf_counter()
    for i in range(tasks):
        ray.get(noop.remote(i))
    serial = (time.perf_counter() - started) / tasks
    ray.shutdown()
    return {"ray_init_seconds": init_seconds, "noop_tasks": tasks, "noop_per_task_batched": batch,
            "noop_round_trip": serial}


def scaling_note(stats: dict, noop: dict | None, models: int) -> list[str]:
    """How an audit of ``models`` models would scale to N nodes from the measured numbers."""
    if not stats:
        return []
    cost = stats["median_task"]
    lines = [f"Measured: a model costs {cost:.1f} s in its task (median; load + scan "
             f"{stats['median_load_plus_scan']:.1f} s), the Ray audit lost {stats['overhead_per_task']:.2f} "
             f"slot-seconds per task to everything else (worker start-up, imports, idle tail; slot use "
             f"{(stats['slot_utilisation'] or 0) * 100:.0f}%), a result reached the driver "
             f"{stats['median_return_latency'] * 1000:.1f} ms after its task ended"
             + (f", an empty task costs {noop['noop_round_trip'] * 1000:.1f} ms round trip "
                f"({noop['noop_per_task_batched'] * 1000:.2f} ms each when submitted together), Ray starts in "
                f"{noop['ray_init_seconds']:.1f} s" if noop else "") + "."]
    slots = stats["slots"]
    per_task = noop["noop_round_trip"] if noop else stats["median_return_latency"]
    start = stats["first_start_latency"] + (noop["ray_init_seconds"] if noop else 0.0)
    for nodes in (1, 4, 16):
        waves = math.ceil(models / (nodes * slots))
        lines.append(f"{models} models on {nodes} node(s) x {slots} slot(s): {waves} waves x ({cost:.1f} s + "
                     f"{per_task * 1000:.0f} ms scheduling) + {start:.0f} s start-up = "
                     f"{duration(waves * (cost + per_task) + start)}, if every node is like this one and the "
                     "models cost what these did")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model folders or names")
    parser.add_argument("--list", help="a file naming one model per line")
    parser.add_argument("--profile", default="fast", choices=("fast", "paper"))
    parser.add_argument("--corpus", default="wikitext2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of one scan in the scan and local "
                        "modes (default 2)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    parser.add_argument("--cpus-per-scan", type=int, default=1, help="CPUs per Ray task (default 1)")
    parser.add_argument("--modes", default=",".join(MODES), help="which of scan,local,ray to run")
    parser.add_argument("--scan-args", default="", help="extra scan options for every mode, e.g. '--loops 2'")
    parser.add_argument("--project", type=int, default=500, help="registry size the scaling note projects to")
    parser.add_argument("--noop-tasks", type=int, default=50, help="empty Ray tasks timed (0: skip)")
    parser.add_argument("--work-dir", type=Path, help="where reports and audit folders go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from patronus_ext.audit import read_model_list

    models = list(args.models) + (read_model_list(args.list) if args.list else [])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not models or not modes or set(modes) - set(MODES):
        parser.error(f"give models (or --list) and --modes from {', '.join(MODES)}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_audit_"))
    work.mkdir(parents=True, exist_ok=True)
    if any((work / f"audit-{m}").exists() for m in modes if m != "scan"):
        parser.error(f"{work} holds an earlier run's audit folders (they would be resumed): use a new --work-dir")
    common = ["--profile", args.profile, "--corpus", args.corpus, "--seed", str(args.seed),
              *shlex.split(args.scan_args)]
    result: dict = {"machine": machine_facts(), "models": models, "settings": vars(args) | {"work_dir": str(work)},
                    "modes": {}}
    if "scan" in modes:
        result["modes"]["scan"] = run_scans(models, work, common, args.threads)
    if "local" in modes:
        result["modes"]["local"] = run_audit(models, work, "local", common,
                                             ["--ray", "local", "--cpus-per-scan", str(args.threads)], args.threads)
    if "ray" in modes:
        slots = args.ray_cpus // args.cpus_per_scan
        result["modes"]["ray"] = run_audit(models, work, "ray", common,
                                           ["--ray", "auto", "--ray-cpus", str(args.ray_cpus),
                                            "--cpus-per-scan", str(args.cpus_per_scan)], None)
        result["ray_overhead"] = overhead_stats(result["modes"]["ray"]["records"], slots)
        result["noop"] = noop_overhead(args.ray_cpus, args.noop_tasks) if args.noop_tasks else None
    if "local" in modes:
        result["local_overhead"] = overhead_stats(result["modes"]["local"]["records"], 1)

    verdicts = {}
    for mode, data in result["modes"].items():
        rows = data["models"] if mode == "scan" else data["records"]
        verdicts[mode] = {r["model"]: r["verdict"] for r in rows}
    result["verdicts_agree"] = len({json.dumps(v, sort_keys=True) for v in verdicts.values()}) <= 1

    lines = [f"{len(models)} model(s), profile {args.profile}, corpus {args.corpus}; scan/local: {args.threads} "
             f"thread(s) per scan; ray: {args.ray_cpus} CPUs, {args.cpus_per_scan} per scan", "",
             "| mode | wall s | per model s | vs one-by-one |", "|---|---|---|---|"]
    base = result["modes"].get("scan", {}).get("wall")
    for mode, data in result["modes"].items():
        ratio = f"{base / data['wall']:.2f}x" if base else "-"
        lines.append(f"| {mode} | {data['wall']:.1f} | {data['wall'] / len(models):.1f} | {ratio} |")
    lines += ["", f"verdicts agree across modes: {result['verdicts_agree']}"]
    for mode, stats in (("local", result.get("local_overhead")), ("ray", result.get("ray_overhead"))):
        if stats:
            lines.append(f"{mode}: median task {stats['median_task']:.2f} s (load + scan "
                         f"{stats['median_load_plus_scan']:.2f} s, other in-task "
                         f"{stats['median_in_task_other']:.2f} s), overhead {stats['overhead_per_task']:.2f} "
                         f"slot-s per task, slot use {(stats['slot_utilisation'] or 0) * 100:.0f}%")
    lines += scaling_note(result.get("ray_overhead") or {}, result.get("noop"), args.project)
    text = "\n".join(lines)
    print(text)
    result["table"] = text
    path = args.json or results_path("bench_audit")
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"json: {path}", file=sys.stderr)
    return 0 if result["verdicts_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
