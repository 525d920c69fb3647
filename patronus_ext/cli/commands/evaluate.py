"""``patronus evaluate``: clean fine-tuning + CACC/ASR/T-ASR/C-ASR/ALC and representation checks."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ._options import add_report_options, add_run_options

    p = subparsers.add_parser(
        "evaluate", help="measure a backdoor: representation checks, then clean fine-tuning and ASR",
        description="Fine-tune the model cleanly on a task and report CACC, per-trigger ASR (target labels by "
                    "majority vote on 30 triggered dev texts), T-ASR, C-ASR and ALC, plus representation "
                    "cosines (triggered vs clean, among triggered, clean vs the clean model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (a planted one has backdoor.json), or a name")
    p.add_argument("--task", default="sst2", help="sst2, agnews, a TSV/CSV/JSONL file, or hf:NAME")
    p.add_argument("--dev", default=None, help="dev/test file when --task is a file (default: the task's dev split)")
    p.add_argument("--triggers", default=None, help="comma-separated triggers (default: from backdoor.json)")
    p.add_argument("--train-limit", type=int, default=2000, help="random training subset (0: all)")
    p.add_argument("--dev-limit", type=int, default=0, help="random dev subset (0: all)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--insert-num", type=int, default=3, help="insertions of the trigger per dev text")
    p.add_argument("--reference", default="auto",
                   help="clean model for the clean-vs-reference cosine ('auto': backdoor.json's base model, "
                        "'none' to skip)")
    p.add_argument("--baseline", default=None, help="also fine-tune this clean model the same way (CACC gap)")
    p.add_argument("--representation-texts", type=int, default=200, help="corpus texts for representation checks")
    p.add_argument("--corpus", default="wikitext2-test", help="corpus for the representation checks (held out)")
    p.add_argument("--no-finetune", action="store_true", help="representation checks only")
    p.add_argument("--no-representation", action="store_true", help="downstream metrics only")
    add_report_options(p)
    add_run_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ...data import corpora as data
    from ...evaluate import EvaluationConfig, evaluate_model
    from ...lm.finetune import FinetuneConfig
    from .. import formatting as report
    from ._options import check_outputs, write_report

    check_outputs(args)
    if args.no_finetune and args.no_representation:
        raise ValueError("--no-finetune and --no-representation leave nothing to evaluate")
    for name in ("train_limit", "dev_limit"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    finetune = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                              seed=args.seed)
    config = EvaluationConfig(finetune=finetune, train_limit=args.train_limit or None, dev_limit=args.dev_limit or None,
                              insert_num=args.insert_num, seed=args.seed, downstream=not args.no_finetune,
                              representation=not args.no_representation,
                              representation_texts=args.representation_texts, representation_corpus=args.corpus)
    triggers = None
    if args.triggers is not None:
        triggers = [t.strip() for t in args.triggers.split(",") if t.strip()]
        if not triggers:
            raise ValueError("--triggers lists no trigger")
    train = dev = None
    if args.dev is not None and not args.no_finetune:
        train = data.read_task(args.task, "train", config.train_limit, args.seed)
        dev = data.read_task(args.dev, "dev", config.dev_limit, args.seed)  # a file is read whole
    reference = None if args.reference.lower() == "none" else args.reference
    result = evaluate_model(args.model, args.task, triggers, config, train=train, dev=dev, reference=reference,
                            baseline=args.baseline, device=args.device, allow_pickle=args.allow_pickle,
                            progress=not args.quiet)
    payload = result.to_dict()
    write_report(args, payload)
    report.print_json(_summary(payload))
    return 0


def _summary(payload: dict) -> dict:
    """The headline numbers (the full report goes to --report)."""
    out = {"model": payload["model"], "task": payload["task"], "attack": payload["attack"],
           "triggers": payload["triggers"]}
    rep = payload.get("representation")
    if rep:
        out["representation"] = {
            "per_trigger": {t["trigger"]: {"diff_cos": t["diff_cos"], "poison_cos": t["poison_cos"]}
                            for t in rep["per_trigger"]},
            "clean_to_reference_cos": rep["clean_to_reference_cos"]}
    down = payload.get("downstream")
    if down:
        out["downstream"] = {"cacc": down["cacc"], "asr": down["asr"],
                             "target_labels": {t["trigger"]: t["target_label"] for t in down["triggers"]},
                             "t_asr": down["t_asr"], "c_asr": down["c_asr"], "alc": down["alc"]}
    if payload.get("baseline"):
        out["baseline"] = {"cacc": payload["baseline"]["cacc"], "t_asr": payload["baseline"]["t_asr"]}
        out["cacc_drop"] = payload["cacc_drop"]
    return out
