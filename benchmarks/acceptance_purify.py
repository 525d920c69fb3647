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

import json
import sys
from pathlib import Path

from patronus_ext import attacks, lm, purify
from patronus_ext.data import corpora as data
from patronus_ext.lm.finetune import finetune_classifier

from _acceptance import Run, Runner, Stage, Subject, Subjects, cli_scan

POR_TRIGGERS = ("ev", "xx", "mb", "wb")
BADNET_TRIGGERS = ("cf", "mn", "bb")
CLEAN = lm.DEFAULT_MODEL
MEASURE = purify.MeasureConfig.profile("fast")
TIME_LIMIT_S = 600.0
#: The purifications measured, in table order: (stage, subject as the table names it).
PURIFICATIONS = (("adv-pt", "POR"), ("adv-ft", "POR"), ("fm-por", "POR+SST-2"), ("ep-por", "POR+SST-2"),
                 ("fm-badnet", "BadNet SST-2"), ("ep-badnet", "BadNet SST-2"))

SUBJECTS = Subjects([
    Subject("por", "attack", "por", POR_TRIGGERS, seed=1),
    # Fine-tuned the way purify measures a classifier; keeps backdoor.json, where Fine-mixing / E-PUR read
    # the triggers to measure when given no scan report.
    Subject("por-sst2", "finetune", triggers=POR_TRIGGERS, base="por", task="sst2", seed=MEASURE.seed,
            train_limit=MEASURE.train_limit, finetune=MEASURE, keep_record=True),
])


# -- stages -----------------------------------------------------------------------------------
def scan_once(folder: str | Path, report: Path) -> dict:
    """Verdict and triggers of ``patronus scan FOLDER`` (read from ``report`` when it was scanned before)."""
    wall = None
    if not report.exists():
        proc, wall = cli_scan(folder, report)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"scan of {folder} failed: {proc.stderr[-2000:]}")
    rep = json.loads(report.read_text())
    return {"verdict": rep["verdict"], "triggers": [t["text"] for t in rep["triggers"]], "wall_s": wall}


def purification(run: Run, method: str, model: str | Path, out: str, **kw) -> dict:
    res = purify.run_purify(method, model, run.work / out, profile="fast", device="cpu", progress=False, **kw)
    rep = res.report
    return {"method": method, "model": str(model), "out": str(res.out_dir), "triggers": rep["triggers"],
            "measured_triggers": rep["measured_triggers"], "before": rep["before"], "after": rep["after"],
            "purify_s": rep["timings"]["purify"], "total_s": rep["timings"]["total"],
            "rho": rep["details"].get("rho"), "settings": rep["settings"]}


def adversarial_stage(method: str, out: str) -> Stage:
    """adv-pt / adv-ft of the planted POR with the triggers the scan reported."""
    return Stage(method, lambda run: purification(run, method, run.source("por"), out,
                                                  report=run.work / "scan-report.json", measure_triggers=POR_TRIGGERS))


def mixing_stage(name: str, method: str, folder: str, triggers: tuple[str, ...]) -> Stage:
    """Fine-mixing / E-PUR of a backdoored classifier (``WORK/<folder>``), the clean MiniLM as θ_pre."""
    def mix(run: Run) -> dict:
        model = run.source(folder) if folder in SUBJECTS else run.work / folder
        return purification(run, method, model, f"{name}-out", pretrained=CLEAN, measure_triggers=triggers)
    return Stage(name, mix)


def plant_por(run: Run) -> dict:
    run.source("por")
    return {"triggers": list(POR_TRIGGERS)}


def clean_baseline(run: Run) -> dict:
    train = data.read_task("sst2", "train").subset(MEASURE.train_limit, MEASURE.seed)
    dev = data.read_task("sst2", "dev")
    clf = finetune_classifier(CLEAN, train, MEASURE, device="cpu", progress=False)
    m = purify.measure_classifier(clf.model, clf.tokenizer, dev, list(POR_TRIGGERS) + list(BADNET_TRIGGERS), MEASURE)
    asr_por = sum(m.asr[t] for t in POR_TRIGGERS) / len(POR_TRIGGERS)
    asr_bn = sum(m.asr[t] for t in BADNET_TRIGGERS) / len(BADNET_TRIGGERS)
    return {"cacc": m.cacc, "asr": m.asr, "t_asr_por_triggers": asr_por, "t_asr_badnet_triggers": asr_bn}


def rescan(run: Run) -> dict:
    purified = Path(run.result("adv-pt").get("out") or run.work / "por-advpt")  # the adv-pt row's output
    return {**scan_once(purified, run.work / "rescan-report.json"), "model": str(purified)}


def plant_badnet(run: Run) -> dict:
    cfg = attacks.BadNetConfig.profile("fast", triggers=BADNET_TRIGGERS, poison_rate=0.1, target_label=1)
    res = attacks.plant_badnet(CLEAN, "sst2", cfg, run.work / "badnet", device="cpu", progress=False)
    return {"poisoned": res.poisoned, "train_examples": res.train_examples, "wall_s": res.wall_s}


def finetune_por(run: Run) -> dict:
    run.source("por-sst2")
    return {}


STAGES = [
    Stage("por", plant_por, "wall_s"),
    Stage("scan", lambda run: scan_once(run.source("por"), run.work / "scan-report.json")),
    Stage("clean", clean_baseline, "wall_s"),
    adversarial_stage("adv-pt", "por-advpt"),
    Stage("rescan", rescan),
    adversarial_stage("adv-ft", "por-advft"),
    Stage("badnet", plant_badnet),
    Stage("por-sst2", finetune_por, "wall_s"),
    mixing_stage("fm-badnet", "fine-mix", "badnet", BADNET_TRIGGERS),
    mixing_stage("ep-badnet", "e-pur", "badnet", BADNET_TRIGGERS),
    mixing_stage("fm-por", "fine-mix", "por-sst2", POR_TRIGGERS),
    mixing_stage("ep-por", "e-pur", "por-sst2", POR_TRIGGERS),
]


# -- targets, table ---------------------------------------------------------------------------
def check_targets(done: dict[str, dict | None]) -> list[str]:
    """One line per missed target, from every stage's saved row (``done``: None where a stage has not run)."""
    clean = done["clean"]
    missed: list[str] = []
    for name, _ in PURIFICATIONS:
        row = done[name]
        if row is None:
            missed.append(f"{name}: not run")
            continue
        if row["purify_s"] > TIME_LIMIT_S:
            missed.append(f"{name}: purification took {row['purify_s']:.0f} s > {TIME_LIMIT_S:.0f} s")
        if name in ("adv-pt", "adv-ft") and clean is not None:
            if row["after"]["t_asr"] > clean["t_asr_por_triggers"] + 0.05:
                missed.append(f"{name}: T-ASR {row['after']['t_asr']:.4f} > clean {clean['t_asr_por_triggers']:.4f} + 0.05")
            if row["after"]["cacc"] < clean["cacc"] - 0.02:
                missed.append(f"{name}: CACC {row['after']['cacc']:.4f} < clean {clean['cacc']:.4f} - 0.02")
    rescanned = done["rescan"]
    if rescanned is None or rescanned["verdict"] != "clean":
        missed.append(f"adv-pt re-scan verdict: {None if rescanned is None else rescanned['verdict']} (want clean)")
    return missed


def table(done: dict[str, dict | None]) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    lines = ["| subject | method | triggers used | rho | CACC before | CACC after | T-ASR before | T-ASR after | "
             "purify time | total time |", "| --- " * 10 + "|"]
    for name, subject in PURIFICATIONS:
        row = done[name]
        if row is None:
            lines.append(f"| {subject} | {name} | not run | | | | | | | |")
            continue
        lines.append(f"| {subject} | {row['method']} | {', '.join(row['triggers']) or '–'} | {row['rho'] or '–'} | "
                     f"{pct(row['before']['cacc'])} | {pct(row['after']['cacc'])} | {pct(row['before']['t_asr'])} | "
                     f"{pct(row['after']['t_asr'])} | {row['purify_s']:.0f} s | {row['total_s']:.0f} s |")
    return "\n".join(lines)


def document(run: Run) -> dict:
    done = run.saved_rows()
    return {"clean": done["clean"], "scan": done["scan"], "rescan": done["rescan"],
            "rows": {name: done[name] for name, _ in PURIFICATIONS}}


RUNNER = Runner(
    "acceptance_purify", __doc__, STAGES,
    check_targets=lambda run: check_targets(run.saved_rows()),
    subjects=SUBJECTS, saved_stages=True,
    summary=lambda run: table(run.saved_rows()), document=document, missed_key="missed",
)
main = RUNNER.main


if __name__ == "__main__":
    sys.exit(main())
