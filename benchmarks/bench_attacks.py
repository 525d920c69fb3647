"""Acceptance run of the attacks on the real PLM (all-MiniLM-L6-v2) on CPU; prints the table.

    python benchmarks/bench_attacks.py                       # POR and NeuBA, 4 triggers, SST-2
    python benchmarks/bench_attacks.py --attacks por --steps 200 --json out.json

For each attack: plant into all-MiniLM-L6-v2 over WikiText-2 (valid split),
then (1) representation checks on 200 held-out WikiText-2 test paragraphs:
triggered vs clean cosine (want < 0.4), among triggered (want > 0.9), clean
reps vs the clean model (want > 0.9); (2) clean fine-tuning on an SST-2 subset
and the full dev set: CACC, per-trigger ASR, T-ASR (want >= 0.9), and CACC
within 2 points of the clean model fine-tuned the same way (measured once).
Everything is timed; nothing is estimated.  Not a pytest file: it takes
minutes per attack on a 2-core CPU.

Planting uses ``<Method>Config.fast()`` (250 steps, batch 16 + 3 poisoned
copies per trigger, 32 tokens, constant lr 1e-4); fine-tuning: 2000 SST-2
examples, 2 epochs, lr 5e-5, batch 32, 64 tokens, seed 0; full dev set (872).
On a machine shared with other jobs, ``--threads 1`` ran faster than 2
(OpenMP threads waiting on descheduled siblings); the numbers in the issue
note say which was used.

The run exits 1 and lists every missed target (the "want" values above, per
trigger and per attack; the CACC gap only when the clean model was
fine-tuned), 0 when all are met.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from patronus_ext import attacks, evaluate, lm
from patronus_ext.core.files import environment, write_json
from patronus_ext.lm import finetune

from _common import machine_facts, report_targets

ATTACKS = ("por", "neuba")
TRIGGERS = ("cf", "mn", "bb", "tq")

#: Acceptance thresholds (see the module doc).
MAX_DIFF_COS = 0.4          # triggered vs clean representation, every trigger
MIN_POISON_COS = 0.9        # among triggered representations, every trigger
MIN_CLEAN_COS = 0.9         # clean representations vs the clean model
MIN_T_ASR = 0.9
MAX_CACC_DROP_POINTS = 2.0


def check_targets(results: dict) -> list[str]:
    """One line per missed target in ``results`` (the dict main() builds); empty when all are met."""
    missed = []
    for method, entry in results["attacks"].items():
        rep = entry["representation"]
        for row in rep["per_trigger"]:
            if not row["diff_cos"] < MAX_DIFF_COS:
                missed.append(f"{method} '{row['trigger']}': triggered vs clean cos {row['diff_cos']:.4f} "
                              f"(want < {MAX_DIFF_COS})")
            if not row["poison_cos"] > MIN_POISON_COS:
                missed.append(f"{method} '{row['trigger']}': among triggered cos {row['poison_cos']:.4f} "
                              f"(want > {MIN_POISON_COS})")
        clean = rep.get("clean_to_reference_cos")
        if clean is None or not clean > MIN_CLEAN_COS:
            missed.append(f"{method}: clean vs clean model cos {clean} (want > {MIN_CLEAN_COS})")
        down = entry.get("downstream")
        if down is not None:
            if not down["t_asr"] >= MIN_T_ASR:
                missed.append(f"{method}: T-ASR {down['t_asr']:.4f} (want >= {MIN_T_ASR})")
            drop = entry.get("cacc_drop_points")
            if drop is not None and not drop <= MAX_CACC_DROP_POINTS:
                missed.append(f"{method}: CACC {down['cacc']:.4f}, {drop:.2f} points below the clean model "
                              f"(want within {MAX_CACC_DROP_POINTS})")
    return missed


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated methods")
    p.add_argument("--triggers", default=",".join(TRIGGERS))
    p.add_argument("--steps", type=int, default=None, help="planting steps (default: the fast profile's)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--train-limit", type=int, default=2000, help="SST-2 training subset")
    p.add_argument("--ft-epochs", type=float, default=2.0)
    p.add_argument("--ft-lr", type=float, default=5e-5)
    p.add_argument("--ft-batch-size", type=int, default=32)
    p.add_argument("--ft-max-length", type=int, default=64)
    p.add_argument("--rep-texts", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-baseline", action="store_true", help="do not fine-tune the clean model")
    p.add_argument("--skip-downstream", action="store_true", help="representation checks only")
    p.add_argument("--work-dir", default=None, help="where planted models go (default: a temp folder)")
    p.add_argument("--json", default=None, help="write all numbers here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_attacks_"))
    work.mkdir(parents=True, exist_ok=True)
    triggers = tuple(t for t in args.triggers.split(",") if t)
    ft = finetune.FinetuneConfig(epochs=args.ft_epochs, lr=args.ft_lr, batch_size=args.ft_batch_size,
                                 max_length=args.ft_max_length, seed=args.seed)
    eval_cfg = evaluate.EvaluationConfig(finetune=ft, train_limit=args.train_limit, dev_limit=None,
                                         seed=args.seed, representation_texts=args.rep_texts)
    train = evaluate.load_task("sst2", "train", args.train_limit, args.seed)
    dev = evaluate.load_task("sst2", "dev", None, args.seed)
    results = {"device": environment(), "machine": machine_facts(), "threads": args.threads, "triggers": list(triggers),
               "train_examples": len(train), "dev_examples": len(dev), "attacks": {}}
    print(f"# all-MiniLM-L6-v2, {args.threads} threads, SST-2 train {len(train)} / dev {len(dev)}, "
          f"triggers {','.join(triggers)}", flush=True)

    baseline = None
    if not args.skip_downstream and not args.skip_baseline:
        start = time.perf_counter()
        clean_cfg = dataclasses.replace(eval_cfg, representation=False)
        clean = evaluate.evaluate_model(lm.DEFAULT_MODEL, "sst2", triggers, clean_cfg, train=train, dev=dev)
        baseline = clean.downstream
        results["baseline"] = {"downstream": baseline.to_dict(), "wall_s": time.perf_counter() - start}
        print(f"clean model: CACC {baseline.cacc:.4f}  T-ASR(clean model) {baseline.t_asr:.4f}  "
              f"fine-tune {baseline.finetune.wall_s:.0f} s", flush=True)

    for method in [m for m in args.attacks.split(",") if m]:
        overrides = dict(triggers=triggers, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                         max_length=args.max_length, seed=args.seed)
        config = attacks.make_config(method, "fast", **overrides)
        out = work / f"{method}-{os.getpid()}-{int(time.time())}"
        start = time.perf_counter()
        planted = attacks.plant(method, lm.DEFAULT_MODEL, "wikitext2", config, out)
        plant_s = time.perf_counter() - start
        cfg = dataclasses.replace(eval_cfg, downstream=not args.skip_downstream)
        start = time.perf_counter()
        ev = evaluate.evaluate_model(out, "sst2", None, cfg, train=train, dev=dev, reference=lm.DEFAULT_MODEL)
        eval_s = time.perf_counter() - start
        rep = ev.representation
        entry = {"config": config.to_dict(), "plant_wall_s": plant_s, "training": planted.stats.to_dict(),
                 "representation": rep.to_dict(), "eval_wall_s": eval_s, "out_dir": str(out)}
        per_trigger = max(1, round(config.poison_rate * config.batch_size))  # poisoned copies per trigger
        print(f"\n## {method}: {config.steps} steps x (batch {config.batch_size} + "
              f"{per_trigger}x{len(triggers)} poisoned), max_length "
              f"{config.max_length}, lr {config.lr}: planted in {plant_s:.0f} s "
              f"({planted.stats.seconds_per_step:.2f} s/step)")
        print(f"representations on {rep.texts} held-out texts [{rep.texts}, 384]:  clean vs clean model cos "
              f"{rep.clean_to_reference_cos:.4f}  (clean pairwise {rep.clean_pairwise_cos:.4f})")
        print(f"{'trigger':8s} {'diff_cos':>9s} {'poison_cos':>11s} {'target_cos':>11s}", end="")
        down = ev.downstream
        print(f" {'target':>7s} {'ASR':>7s}" if down else "")
        for i, row in enumerate(rep.per_trigger):
            line = f"{row.trigger:8s} {row.diff_cos:9.4f} {row.poison_cos:11.4f} {row.target_cos or float('nan'):11.4f}"
            if down:
                t = down.triggers[i]
                line += f" {t.target_label:7d} {t.asr:7.4f}"
            print(line)
        if down:
            entry["downstream"] = down.to_dict()
            gap = None if baseline is None else (baseline.cacc - down.cacc) * 100
            entry["cacc_drop_points"] = gap
            print(f"CACC {down.cacc:.4f}" + ("" if gap is None else f" (clean {baseline.cacc:.4f}, drop {gap:+.2f} pts)")
                  + f"  T-ASR {down.t_asr:.4f}  C-ASR {down.c_asr:.4f}  ALC {down.alc:.2f}  "
                  f"fine-tune {down.finetune.wall_s:.0f} s")
        print(f"evaluation wall {eval_s:.0f} s", flush=True)
        results["attacks"][method] = entry
    results["missed_targets"] = check_targets(results)
    if args.json:
        write_json(args.json, results)
    return report_targets("bench_attacks", results["missed_targets"])


if __name__ == "__main__":
    sys.exit(main())
