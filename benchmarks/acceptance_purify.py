"""Purification acceptance on the real all-MiniLM-L6-v2 (issue 12), stage by stage, results cached.

    python benchmarks/acceptance_purify.py --work-dir /tmp/purify-acc [--stages all] [--threads 2]
        [--json results.json]

Stages (each writes ``WORK/<stage>.json`` and is skipped when that file exists):

* ``por``       plant POR (fast profile, seed 1) with triggers ev xx mb wb into MiniLM
* ``scan``      ``patronus scan WORK/por --report WORK/scan-report.json`` (fast profile)
* ``clean``     clean MiniLM fine-tuned on SST-2 (the ``measure`` fast settings): CACC and the triggers' ASR
* ``adv-pt``    adversarial pre-training of WORK/por with the DETECTED triggers, before/after measured
* ``rescan``    scan of the adv-pt output (verdict must be clean)
* ``adv-ft``    adversarial fine-tuning of WORK/por on SST-2 with the detected triggers
* ``badnet``    MiniLM fine-tuned on BadNet-poisoned SST-2 (triggers cf mn bb, 10%, target 1)
* ``por-sst2``  WORK/por fine-tuned cleanly on SST-2 (the fine-mixing subject b)
* ``fm-badnet``, ``ep-badnet``, ``fm-por``, ``ep-por``  Fine-mixing / E-PUR of those, clean MiniLM as θ_pre

T-ASR is always measured with the PLANTED triggers (the real attack), purification uses only what the
scan reported.  Targets: adv-pt and adv-ft T-ASR <= clean ASR + 5 points and CACC >= clean CACC - 2
points; the adv-pt re-scan verdict clean; every fast-profile purification <= 600 s.  Exit 1 when a target
is missed (listed), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from patronus_ext import attacks, lm, purify
from patronus_ext.data import corpora as data
from patronus_ext.lm.finetune import finetune_classifier

from _common import machine_facts, report_targets

POR_TRIGGERS = ("ev", "xx", "mb", "wb")
BADNET_TRIGGERS = ("cf", "mn", "bb")
CLEAN = lm.DEFAULT_MODEL
STAGES = ("por", "scan", "clean", "adv-pt", "rescan", "adv-ft", "badnet", "por-sst2",
          "fm-badnet", "ep-badnet", "fm-por", "ep-por")
TIME_LIMIT_S = 600.0


def _save(work: Path, name: str, payload: dict) -> dict:
    (work / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    return payload


def _scan(work: Path, folder: Path, report: Path) -> dict:
    t0 = time.perf_counter()
    if report.exists():  # scanned earlier (e.g. by hand): read it
        rep = json.loads(report.read_text())
        return {"verdict": rep["verdict"], "triggers": [t["text"] for t in rep["triggers"]], "wall_s": None}
    proc = subprocess.run([sys.executable, "-m", "patronus_ext.cli", "scan", str(folder), "--report", str(report),
                           "--device", "cpu", "--quiet"], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"scan of {folder} failed: {proc.stderr[-2000:]}")
    rep = json.loads(report.read_text())
    return {"verdict": rep["verdict"], "triggers": [t["text"] for t in rep["triggers"]], "wall_s": time.perf_counter() - t0}


def _purify_row(work: Path, method: str, model: Path, out: str, **kw) -> dict:
    res = purify.run_purify(method, model, work / out, profile="fast", device="cpu", progress=False, **kw)
    rep = res.report
    return {"method": method, "model": str(model), "out": str(res.out_dir), "triggers": rep["triggers"],
            "measured_triggers": rep["measured_triggers"], "before": rep["before"], "after": rep["after"],
            "purify_s": rep["timings"]["purify"], "total_s": rep["timings"]["total"],
            "rho": rep["details"].get("rho"), "settings": rep["settings"]}


def stage(name: str, work: Path) -> dict:
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    measure = purify.MeasureConfig.profile("fast")
    t0 = time.perf_counter()
    if name == "por":
        if not (work / "por").exists():
            attacks.plant("por", CLEAN, "wikitext2", attacks.make_config("por", "fast", triggers=POR_TRIGGERS, seed=1),
                          work / "por", device="cpu", progress=False)
        return _save(work, name, {"triggers": list(POR_TRIGGERS), "wall_s": time.perf_counter() - t0})
    if name == "scan":
        return _save(work, name, _scan(work, work / "por", work / "scan-report.json"))
    if name == "clean":
        train = data.read_task("sst2", "train").subset(measure.train_limit, measure.seed)
        dev = data.read_task("sst2", "dev")
        clf = finetune_classifier(CLEAN, train, measure, device="cpu", progress=False)
        m = purify.measure_classifier(clf.model, clf.tokenizer, dev, list(POR_TRIGGERS) + list(BADNET_TRIGGERS),
                                      measure)
        asr_por = sum(m.asr[t] for t in POR_TRIGGERS) / len(POR_TRIGGERS)
        asr_bn = sum(m.asr[t] for t in BADNET_TRIGGERS) / len(BADNET_TRIGGERS)
        return _save(work, name, {"cacc": m.cacc, "asr": m.asr, "t_asr_por_triggers": asr_por,
                                  "t_asr_badnet_triggers": asr_bn, "wall_s": time.perf_counter() - t0})
    if name == "adv-pt":
        return _save(work, name, _purify_row(work, "adv-pt", work / "por", "por-advpt", report=work / "scan-report.json",
                                             measure_triggers=POR_TRIGGERS))
    if name == "rescan":
        purified = Path(stage("adv-pt", work).get("out") or work / "por-advpt")  # the adv-pt row's output
        return _save(work, name, {**_scan(work, purified, work / "rescan-report.json"), "model": str(purified)})
    if name == "adv-ft":
        return _save(work, name, _purify_row(work, "adv-ft", work / "por", "por-advft", report=work / "scan-report.json",
                                             measure_triggers=POR_TRIGGERS))
    if name == "badnet":
        cfg = attacks.BadNetConfig.profile("fast", triggers=BADNET_TRIGGERS, poison_rate=0.1, target_label=1)
        res = attacks.plant_badnet(CLEAN, "sst2", cfg, work / "badnet", device="cpu", progress=False)
        return _save(work, name, {"poisoned": res.poisoned, "train_examples": res.train_examples, "wall_s": res.wall_s})
    if name == "por-sst2":
        train = data.read_task("sst2", "train").subset(measure.train_limit, measure.seed)
        clf = finetune_classifier(str(work / "por"), train, measure, device="cpu", progress=False)
        tok = lm.load_tokenizer(str(work / "por"))
        lm.save_model_folder(clf.model, tok, work / "por-sst2",
                                 {"backdoor.json": json.loads((work / "por" / "backdoor.json").read_text())})
        return _save(work, name, {"wall_s": time.perf_counter() - t0})
    if name in ("fm-badnet", "ep-badnet", "fm-por", "ep-por"):
        method = "fine-mix" if name.startswith("fm") else "e-pur"
        subject = work / ("badnet" if name.endswith("badnet") else "por-sst2")
        kw = {"measure_triggers": BADNET_TRIGGERS if name.endswith("badnet") else POR_TRIGGERS}
        return _save(work, name, _purify_row(work, method, subject, f"{name}-out", pretrained=CLEAN, **kw))
    raise ValueError(f"unknown stage {name}")


def table(work: Path) -> tuple[str, list[str], dict]:
    def load(name):
        p = work / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    clean = load("clean")
    rows = ["| subject | method | triggers used | rho | CACC before | CACC after | T-ASR before | T-ASR after | "
            "purify time | total time |", "| --- " * 10 + "|"]
    missed: list[str] = []
    out: dict = {"clean": clean, "scan": load("scan"), "rescan": load("rescan"), "rows": {}}

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"
    for name, subject in (("adv-pt", "POR"), ("adv-ft", "POR"), ("fm-por", "POR+SST-2"), ("ep-por", "POR+SST-2"),
                          ("fm-badnet", "BadNet SST-2"), ("ep-badnet", "BadNet SST-2")):
        row = load(name)
        out["rows"][name] = row
        if row is None:
            rows.append(f"| {subject} | {name} | not run | | | | | | | |")
            missed.append(f"{name}: not run")
            continue
        rows.append(f"| {subject} | {row['method']} | {', '.join(row['triggers']) or '–'} | {row['rho'] or '–'} | "
                    f"{pct(row['before']['cacc'])} | {pct(row['after']['cacc'])} | {pct(row['before']['t_asr'])} | "
                    f"{pct(row['after']['t_asr'])} | {row['purify_s']:.0f} s | {row['total_s']:.0f} s |")
        if row["purify_s"] > TIME_LIMIT_S:
            missed.append(f"{name}: purification took {row['purify_s']:.0f} s > {TIME_LIMIT_S:.0f} s")
        if name in ("adv-pt", "adv-ft") and clean is not None:
            if row["after"]["t_asr"] > clean["t_asr_por_triggers"] + 0.05:
                missed.append(f"{name}: T-ASR {row['after']['t_asr']:.4f} > clean {clean['t_asr_por_triggers']:.4f} + 0.05")
            if row["after"]["cacc"] < clean["cacc"] - 0.02:
                missed.append(f"{name}: CACC {row['after']['cacc']:.4f} < clean {clean['cacc']:.4f} - 0.02")
    rescan = load("rescan")
    if rescan is None or rescan["verdict"] != "clean":
        missed.append(f"adv-pt re-scan verdict: {None if rescan is None else rescan['verdict']} (want clean)")
    return "\n".join(rows), missed, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--stages", default="all", help="comma-separated stages (default: all, in order; '' only "
                    "prints the table of the stages done)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    chosen = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    for name in chosen:
        t0 = time.perf_counter()
        stage(name, work)
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    text, missed, out = table(work)
    print(text)
    out["machine"] = machine_facts()
    out["missed"] = missed
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return report_targets("acceptance_purify", missed)


if __name__ == "__main__":
    raise SystemExit(main())
