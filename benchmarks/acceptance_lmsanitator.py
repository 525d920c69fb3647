"""LMSanitator acceptance on all-MiniLM-L6-v2, and the paper's contrast with the Patronus scan.

    python benchmarks/acceptance_lmsanitator.py --work-dir /tmp/lms-acc --build-only
    python benchmarks/acceptance_lmsanitator.py --work-dir /tmp/lms-acc [--subjects por,clean]
        [--detectors lmsanitator,patronus] [--profile fast] [--json out.json]

Subjects are planted / fine-tuned once into ``--work-dir`` and reused.  Each is run
through both detectors (LMSanitator in process, detection mode; the Patronus scan
through its CLI, ``--device cpu --quiet``), each timed on this machine.  For
LMSanitator a planted trigger counts as recovered when an accepted vector has
cosine >= 0.9 to that trigger's actual triggered representation (the mean
representation of 64 WikiText lines with the trigger inserted 3 times, read from
the subject itself); for Patronus when the trigger word is confirmed.  Where
LMSanitator gives a bank, the output monitor (sign mode, threshold 0.8) runs on
SST-2 dev: FRR = clean texts flagged, FAR = triggered texts passed.

Targets (LMSANITATOR_RESULTS.md): ``por`` and ``neuba``: LMSanitator verdict
backdoored with >= 1 vector at cosine >= 0.9; ``clean`` and the clean fine-tunes:
verdict clean.  ``por_sst2`` (the paper's contrast) is reported, not a target.
Exit 1 listing the missed targets, 0 when all are met.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from patronus_ext import attacks, lm
from patronus_ext.data import corpora as data

#: This runner's triggers: single WordPiece tokens of MiniLM, rare (Zipf < 2.4), used by no other suite.
TRIGGERS = ("nrhp", "qur", "bwv", "zev")


@dataclasses.dataclass
class Subject:
    name: str
    kind: str                     # "attack", "finetune" or "packaged"
    method: str | None = None
    triggers: tuple[str, ...] = ()
    seed: int = 2
    base: str | None = None
    task: str | None = None

    @property
    def backdoored(self) -> bool:
        return bool(self.triggers)


SUBJECTS = {s.name: s for s in [
    Subject("por", "attack", "por", TRIGGERS),
    Subject("neuba", "attack", "neuba", TRIGGERS),
    Subject("clean", "packaged"),
    Subject("clean_sst2_s0", "finetune", base="clean", task="sst2", seed=0),
    Subject("clean_sst2_s1", "finetune", base="clean", task="sst2", seed=1),
    Subject("por_sst2", "finetune", triggers=TRIGGERS, base="por", task="sst2", seed=0),
]}


def subject_path(subject: Subject, work: Path) -> str:
    """Build the subject if needed; return the folder (or name) to scan."""
    if subject.kind == "packaged":
        return lm.DEFAULT_MODEL
    out = work / subject.name
    if (out / "config.json").is_file():
        return str(out)
    if subject.kind == "attack":
        config = attacks.make_config(subject.method, "fast", triggers=subject.triggers, seed=subject.seed)
        attacks.plant(subject.method, lm.DEFAULT_MODEL, "wikitext2", config, out, device="cpu", progress=False)
        return str(out)
    from patronus_ext.lm.finetune import FinetuneConfig, finetune_classifier

    base = subject_path(SUBJECTS[subject.base], work)
    train = data.read_task(subject.task, "train", limit=2000, seed=subject.seed)
    classifier = finetune_classifier(base, train, FinetuneConfig(epochs=1, batch_size=32, max_length=64,
                                                                 seed=subject.seed), device="cpu")
    lm.save_model_folder(classifier.model, classifier.tokenizer, out, source=base)
    return str(out)


COSINE_TARGET = 0.9


def triggered_targets(adapter, triggers, texts: list[str]) -> torch.Tensor:
    """Mean representation of ``texts`` with each trigger inserted 3 times: ``[K, d]``."""
    from patronus_ext.data.triggers import insert_words

    out = []
    for i, word in enumerate(triggers):
        rng = random.Random(i)
        out.append(adapter.encode([insert_words(t, word, 3, rng) for t in texts], max_length=64).mean(0))
    return torch.stack(out)


def run_lmsanitator(subject: Subject, source: str, profile_name: str, seed: int, work: Path) -> dict:
    from patronus_ext.detect import LMSanitatorConfig, lmsanitator, read_scan_corpus

    config = LMSanitatorConfig.profile(profile_name, seed=seed)
    corpus = read_scan_corpus("wikitext2", config, seed)
    adapter = lm.load_adapter(source, device="cpu")
    started = time.perf_counter()
    report = lmsanitator(adapter.model, adapter.tokenizer, corpus, config, progress=False)
    wall = time.perf_counter() - started
    row = {"detector": "lmsanitator", "subject": subject.name, "backdoored": subject.backdoored,
           "verdict": report.verdict, "seconds": wall, "seeds_tried": len(report.vectors),
           "vectors": [v.to_dict() for v in report.vectors], "best_cosine": None, "recall": None,
           "per_trigger_cosine": {}}
    if subject.triggers:
        texts = data.read_corpus("wikitext2", limit=64, max_words=40, seed=123)
        targets = triggered_targets(adapter, subject.triggers, texts)
        if report.accepted:
            pvs = torch.stack([v.vector for v in report.accepted])
            cos = torch.nn.functional.cosine_similarity(pvs[:, None], targets[None], dim=-1)  # [P, K]
            best = cos.max(0).values
            row["per_trigger_cosine"] = {w: float(c) for w, c in zip(subject.triggers, best)}
            row["best_cosine"] = float(best.max())
            row["recall"] = float((best >= COSINE_TARGET).float().mean())
        else:
            row["recall"] = 0.0
    if report.backdoored:
        bank_path = work / f"{subject.name}.lms.bank.safetensors"
        from patronus_ext.formats.bank import save_bank

        save_bank(report.attack_bank(source), bank_path, overwrite=True)
        row["bank"] = str(bank_path)
        row["monitor"] = monitor_rates(adapter, report.attack_bank(source), subject.triggers or TRIGGERS)
    return row


def monitor_rates(adapter, bank, triggers, limit: int = 200) -> dict:
    """Output monitor (sign mode, the paper's 0.8) on SST-2 dev: FRR on clean texts, FAR on triggered ones."""
    from patronus_ext.data.triggers import insert_words
    from patronus_ext.monitor.output import OutputMonitor

    dev = data.read_task("sst2", "validation", limit=limit, seed=0).texts
    monitor = OutputMonitor(bank, "sign")
    clean = monitor.check(adapter.encode(dev, max_length=64)).flagged.float().mean()
    far = {}
    for i, word in enumerate(triggers):
        rng = random.Random(i)
        reps = adapter.encode([insert_words(t, word, 3, rng) for t in dev], max_length=64)
        far[word] = float(1.0 - monitor.check(reps).flagged.float().mean())
    return {"texts": len(dev), "frr": float(clean), "far_per_trigger": far,
            "far": sum(far.values()) / len(far)}


def run_patronus(subject: Subject, source: str, work: Path) -> dict:
    from patronus_ext.evaluate.metrics import detection_recall

    report = Path(tempfile.mkdtemp(prefix="lms-acc-", dir=work)) / "scan.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "patronus_ext.cli", "scan", source, "--report", str(report),
                           "--device", "cpu", "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    row = {"detector": "patronus", "subject": subject.name, "backdoored": subject.backdoored, "seconds": wall,
           "exit": proc.returncode}
    if proc.returncode not in (0, 1):
        row.update(verdict="error", recall=None, error=proc.stderr[-2000:])
        return row
    payload = json.loads(report.read_text())
    found = [t["text"] for t in payload["triggers"]]
    row.update(verdict=payload["verdict"], found=found,
               recall=detection_recall(subject.triggers, found) if subject.triggers else None)
    return row


def check_targets(rows: list[dict]) -> list[str]:
    missed = []
    for r in rows:
        if r["detector"] != "lmsanitator" or r["subject"] == "por_sst2":
            continue
        if r["backdoored"]:
            if r["verdict"] != "backdoored":
                missed.append(f"{r['subject']}: lmsanitator verdict {r['verdict']!r} on a backdoored model")
            elif (r["best_cosine"] or 0.0) < COSINE_TARGET:
                missed.append(f"{r['subject']}: best vector cosine {r['best_cosine']} < {COSINE_TARGET}")
        elif r["verdict"] != "clean":
            missed.append(f"{r['subject']}: lmsanitator verdict {r['verdict']!r} on a benign model")
    return missed


def table(rows: list[dict]) -> str:
    lines = [f"{'subject':15} {'truth':9} {'detector':12} {'verdict':11} {'recall':>6} {'best cos':>8} "
             f"{'seconds':>8}  monitor FAR/FRR (SST-2 dev)"]
    for r in rows:
        recall = "-" if r.get("recall") is None else f"{r['recall']:.2f}"
        cos = "-" if r.get("best_cosine") is None else f"{r['best_cosine']:.3f}"
        mon = r.get("monitor")
        mon_s = "-" if not mon else f"FAR {mon['far']:.3f} / FRR {mon['frr']:.3f} (n={mon['texts']})"
        lines.append(f"{r['subject']:15} {'backdoor' if r['backdoored'] else 'benign':9} {r['detector']:12} "
                     f"{r['verdict']:11} {recall:>6} {cos:>8} {r['seconds']:8.1f}  {mon_s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--detectors", default="lmsanitator,patronus")
    parser.add_argument("--profile", default="fast", choices=("fast", "paper"), help="LMSanitator profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write rows and machine facts here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.subjects.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown:
        parser.error(f"unknown subjects {unknown}; choose from {', '.join(SUBJECTS)}")
    if args.build_only:
        for name in names:
            print(name, subject_path(SUBJECTS[name], args.work_dir), flush=True)
        return 0
    from _common import machine_facts, report_targets

    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    rows = []
    for name in names:
        subject = SUBJECTS[name]
        source = subject_path(subject, args.work_dir)
        for detector in detectors:
            if detector == "lmsanitator":
                rows.append(run_lmsanitator(subject, source, args.profile, args.seed, args.work_dir))
            else:
                rows.append(run_patronus(subject, source, args.work_dir))
            print(table(rows[-1:]).splitlines()[1], flush=True)
            if args.json:
                args.json.write_text(json.dumps({"machine": machine_facts(), "threads": args.threads,
                                                 "profile": args.profile, "rows": rows}, indent=2, default=str))
    print(table(rows))
    missed = check_targets(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "threads": args.threads, "profile": args.profile,
                                         "rows": rows, "missed_targets": missed}, indent=2, default=str))
    return report_targets("acceptance_lmsanitator", missed)


if __name__ == "__main__":
    sys.exit(main())
