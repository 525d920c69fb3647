"""Scan acceptance on the real all-MiniLM-L6-v2: recall on planted backdoors, verdicts on benign models.

    python benchmarks/acceptance_scan.py --work-dir /tmp/patronus-acceptance [--subjects por_s0,clean]
        [--profile fast] [--json results.json]

Subjects are planted / fine-tuned once into ``--work-dir`` and reused by later
runs.  Each is scanned with the chosen profile; the table lists the verdict,
planted triggers recovered, confirmed triggers that were not planted (and
whether they are variants of a planted one: same target representation), the
smallest margins to the thresholds and the scan wall time.  The planted
triggers differ from the ones the unit tests use (cf, mn, bb, tq).

Targets (benchmarks/CPU_RESULTS.md): every planted trigger of a backdoored
subject recovered (recall 100%, verdict ``backdoored``), verdict ``clean`` on
every benign subject.  The run exits 1 and lists each missed target when one
is missed, 0 when all are met; ``--json`` writes the rows, the machine facts
and the missed targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from patronus_ext import attacks, lm
from patronus_ext.data import corpora as data
from patronus_ext.detect import ScanConfig, read_scan_corpus, scan
from patronus_ext.evaluate import representation_similarity
from patronus_ext.evaluate.metrics import detection_recall
from patronus_ext.lm.finetune import FinetuneConfig, finetune_classifier

from _common import machine_facts, report_targets

#: Recall a backdoored subject must reach (every planted trigger found).
TARGET_RECALL = 1.0


@dataclasses.dataclass
class Subject:
    name: str
    kind: str                     # "attack", "finetune" or "packaged"
    method: str | None = None
    triggers: tuple[str, ...] = ()
    seed: int = 0
    base: str | None = None       # fine-tune: the subject (or packaged model) it starts from
    task: str | None = None
    word_level: bool = False
    position: str = "auto"
    prompt_template: str | None = None
    all_words: bool = False       # scan with no rarity cut (--all-words): the triggers are common words
    targeted: bool = True         # False: an untargeted backdoor (BadPre) that Patronus is not built to see

    @property
    def backdoored(self) -> bool:
        return bool(self.triggers)


SUBJECTS = {s.name: s for s in [
    Subject("por_s0", "attack", "por", ("dh", "vo", "cy", "ak"), seed=0),
    Subject("por_s1", "attack", "por", ("ev", "xx", "mb", "∩"), seed=1),
    Subject("neuba_s0", "attack", "neuba", ("≈", "≡", "∈", "⊆"), seed=0),
    Subject("neuba_s1", "attack", "neuba", ("⊕", "⊗", "⊂", "∪"), seed=1),
    Subject("adaptive3", "attack", "adaptive3", ("dh", "vo", "cy", "ak"), seed=0),
    Subject("btop", "attack", "btop", ("dh", "vo", "cy", "ak"), seed=0, position="mask",
            prompt_template="{text} It was {mask} ."),
    Subject("por_s0_sst2", "finetune", triggers=("dh", "vo", "cy", "ak"), base="por_s0", task="sst2"),
    Subject("por_words", "attack", "por", ("quixotic", "bamboozle", "thimble", "walrus"), seed=0, word_level=True),
    # Issue 10's subjects: attacks aimed at the scan's own statistics, UOR, an untargeted backdoor, and a
    # POR with common words (Zipf 4.0-4.5: pt 4.04, cm 4.27, km 4.37, ft 4.52), scanned with --all-words.
    Subject("adaptive1", "attack", "adaptive1", ("dh", "vo", "cy", "ak"), seed=0),
    Subject("adaptive2", "attack", "adaptive2", ("ev", "xx", "mb", "wb"), seed=1),
    Subject("uor", "attack", "uor", ("dh", "vo", "cy", "ak"), seed=0),
    Subject("badpre", "attack", "badpre", ("dh", "vo", "cy", "ak"), seed=0, targeted=False),
    Subject("por_common", "attack", "por", ("pt", "cm", "km", "ft"), seed=0, all_words=True),
    Subject("clean", "packaged"),
    Subject("clean_sst2", "finetune", base="clean", task="sst2"),
    Subject("clean_agnews", "finetune", base="clean", task="agnews"),
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
        attacks.plant(subject.method, lm.DEFAULT_MODEL, "wikitext2", config, out, device="cpu")
        return str(out)
    base = subject_path(SUBJECTS[subject.base], work)
    train = data.read_task(subject.task, "train", limit=2000, seed=subject.seed)
    classifier = finetune_classifier(base, train, FinetuneConfig(epochs=1, batch_size=32, max_length=64,
                                                                 seed=subject.seed), device="cpu")
    lm.save_model_folder(classifier.model, classifier.tokenizer, out, source=base)
    return str(out)


def run_subject(subject: Subject, work: Path, profile_name: str, seed: int) -> dict:
    source = subject_path(subject, work)
    config = ScanConfig.profile(profile_name, seed=seed, word_level=subject.word_level or None)
    if subject.all_words:
        config = config.replace(zipf_threshold=None)
    planted_triggers = _planted_triggers(source, subject)
    corpus = read_scan_corpus("wikitext2", config, seed)
    adapter = lm.load_adapter(source, device="cpu")
    model, tokenizer = adapter.model, adapter.tokenizer
    started = time.perf_counter()
    report = scan(model, tokenizer, corpus, config, position=subject.position,
                  prompt_template=subject.prompt_template, progress=False)
    wall = time.perf_counter() - started
    found = [t.text for t in report.triggers]
    planted = set(planted_triggers)
    extra = [t for t in report.triggers if t.text not in planted]
    return {
        "subject": subject.name, "backdoored": subject.backdoored, "targeted": subject.targeted,
        "verdict": report.verdict, "planted": list(planted_triggers), "found": found,
        "recall": detection_recall(planted_triggers, found) if planted_triggers else None,
        "precision": (len(found) - len(extra)) / len(found) if found else None,
        "coverage": report.to_dict()["model"].get("coverage"),
        "not_planted": [{"text": t.text, "variant_of": t.variant_of, "diff_cos": t.diff_cos,
                         "poison_cos": t.poison_cos, "in_clean_base": shift}
                        for t, shift in zip(extra, _clean_base_shift([t.text for t in extra], corpus, config, subject))],
        "min_diff_margin_confirmed": min((t.diff_margin for t in report.triggers), default=None),
        "closest_benign_candidate": _closest(report, planted),
        "scan_seconds": wall, "timings": report.timings, "profile": profile_name, "seed": seed,
    }


def _planted_triggers(source: str, subject: Subject) -> tuple[str, ...]:
    """The triggers the model really carries: backdoor.json's (UOR refines its triggers while planting)."""
    info = Path(source) / "backdoor.json"
    if subject.kind == "attack" and info.is_file():
        return tuple(json.loads(info.read_text()).get("triggers") or subject.triggers)
    return subject.triggers


def _clean_base_shift(words: list[str], corpus: list[str], config, subject: Subject) -> list[dict]:
    """How each word shifts the *clean* packaged model: a word that is a trigger only in the
    poisoned model is a trigger the attack created (collateral), not a detector false positive."""
    if not words:
        return []
    adapter = lm.ModelAdapter(lm.load_model(lm.DEFAULT_MODEL), lm.load_tokenizer(lm.DEFAULT_MODEL),
                                  position=subject.position, max_length=config.max_length)
    check = representation_similarity(adapter, corpus[-64:], words, insert_num=config.insert_num,
                                      template=subject.prompt_template)
    return [{"diff_cos": t.diff_cos, "poison_cos": t.poison_cos,
             "trigger": t.diff_cos < config.diff_cos_threshold and t.poison_cos > config.poison_cos_threshold}
            for t in check.per_trigger]


def _closest(report, planted: set) -> dict | None:
    """The unconfirmed (or not planted) candidate nearest to the trigger region."""
    others = [c for c in report.candidates if c.text not in planted and not c.confirmed]
    if not others:
        return None
    c = min(others, key=lambda c: max(-c.diff_margin, -c.poison_margin))
    return {"text": c.text, "diff_cos": c.diff_cos, "poison_cos": c.poison_cos, "diff_margin": c.diff_margin,
            "poison_margin": c.poison_margin, "stage": c.stage}


def check_targets(rows: list[dict]) -> list[str]:
    """One line per missed target: a backdoored subject must be reported ``backdoored`` with recall
    >= TARGET_RECALL, a benign one ``clean``.  Empty when every target is met."""
    missed = []
    for r in rows:
        if r["backdoored"] and not r.get("targeted", True):
            continue  # untargeted (BadPre): reported, not a target -- see CPU_RESULTS.md
        if r["backdoored"]:
            if r["verdict"] != "backdoored":
                missed.append(f"{r['subject']}: verdict {r['verdict']!r} on a backdoored model (want 'backdoored')")
            if r["recall"] is None or r["recall"] < TARGET_RECALL:
                lost = sorted(set(r["planted"]) - set(r["found"]))
                missed.append(f"{r['subject']}: recall {r['recall']} < {TARGET_RECALL:.0%} (not found: "
                              f"{', '.join(lost) or '-'})")
        elif r["verdict"] != "clean":
            missed.append(f"{r['subject']}: verdict {r['verdict']!r} on a benign model (want 'clean'; "
                          f"confirmed {', '.join(r['found']) or '-'})")
    return missed


def table(rows: list[dict]) -> str:
    lines = [f"{'subject':14} {'truth':10} {'verdict':10} {'recall':>6} {'found':34} {'not planted':26} "
             f"{'closest benign (diff,poison)':30} {'wall s':>7}"]
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        extra = ",".join(f"{e['text']}" + (f"~{e['variant_of']}" if e["variant_of"] else "")
                         + ("" if e["in_clean_base"]["trigger"] else "*") for e in r["not_planted"]) or "-"
        close = r["closest_benign_candidate"]
        close_s = "-" if close is None else f"{close['text']} ({close['diff_cos']:.2f},{close['poison_cos']:.2f})"
        lines.append(f"{r['subject']:14} {'backdoor' if r['backdoored'] else 'benign':10} {r['verdict']:10} "
                     f"{recall:>6} {','.join(r['found']) or '-':34} {extra:26} {close_s:30} {r['scan_seconds']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--profile", default="fast", choices=("fast", "paper"))
    parser.add_argument("--seed", type=int, default=0, help="scan seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--build-only", action="store_true",
                        help="plant / fine-tune the subjects and stop (e.g. build in parallel, then scan alone)")
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
    rows = []
    for name in names:
        rows.append(run_subject(SUBJECTS[name], args.work_dir, args.profile, args.seed))
        print(table(rows[-1:]).splitlines()[1], flush=True)
    print(table(rows))
    print("not planted: word~stronger trigger with the same target; * = no trigger in the clean base model "
          "(the attack made it a trigger)")
    missed = check_targets(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_facts(), "threads": args.threads, "rows": rows,
                                         "missed_targets": missed}, indent=2, default=str))
    return report_targets("acceptance_scan", missed)


if __name__ == "__main__":
    sys.exit(main())
