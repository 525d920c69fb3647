"""``patronus purify``: remove a backdoor, driven by what ``patronus scan`` found; writes a NEW model folder."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ._options import add_run_options

    p = subparsers.add_parser(
        "purify", help="purify a model with the scan's triggers (adversarial training, Fine-mixing, E-PUR)",
        description="adv-pt: adversarial pre-training of an encoder (needs --report); adv-ft: adversarial "
        "fine-tuning into a classifier for --task (needs --report); fine-mix / e-pur: purify a classifier "
        "fine-tuned on possibly poisoned data (needs --pretrained, the clean weights it started from). "
        "The output folder gets purify.json with CACC and T-ASR before and after. Exit status: 0 ok, 2 error.")
    p.add_argument("--method", required=True, choices=("adv-pt", "adv-ft", "fine-mix", "e-pur"))
    p.add_argument("--model", required=True, help="the model folder to purify (never modified)")
    p.add_argument("--report", help="the `patronus scan --report` JSON of this model (its confirmed triggers)")
    p.add_argument("--pretrained", help="fine-mix / e-pur: the clean pre-trained model folder or name")
    p.add_argument("--task", default="sst2", help="task: built-in name (sst2, agnews) or a labelled file "
                   "(default: sst2)")
    p.add_argument("--dev", help="with a task file: the labelled dev file (default: the task's dev split)")
    p.add_argument("--out", required=True, help="the NEW output model folder (must not exist)")
    p.add_argument("--profile", choices=("fast", "paper"), default="fast",
                   help="fast: CPU settings; paper: the authors' settings (default: fast)")
    p.add_argument("--steps", type=int, help="adv-pt: optimizer steps (overrides the profile's epochs)")
    p.add_argument("--epochs", type=float, help="training epochs of the method")
    p.add_argument("--lr", type=float, help="learning rate of the method")
    p.add_argument("--max-length", type=int, help="tokens per text for the method")
    p.add_argument("--rho", type=float, action="append", help="fine-mix: a candidate keep fraction (repeat)")
    p.add_argument("--variant", choices=("random", "sel"), help="fine-mix: random deltas or the largest |delta|")
    p.add_argument("--e-pur", type=int, dest="e_pur", help="fine-mix: also reset this many E-PUR embedding rows")
    p.add_argument("--top-n", type=int, help="e-pur: embedding rows to reset (default 200)")
    p.add_argument("--clean-limit", type=int, help="fine-mix / e-pur: clean examples for the final fine-tuning")
    p.add_argument("--no-measure", action="store_true", help="skip the before/after CACC and T-ASR")
    p.add_argument("--measure-train", type=int, help="examples fine-tuning an encoder before measuring")
    p.add_argument("--measure-dev", type=int, help="dev examples measured (default: all)")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import purify
    from ..report import measurement_table

    overrides = {"adv-pt": dict(steps=args.steps, epochs=args.epochs, lr=args.lr, max_length=args.max_length),
                 "adv-ft": dict(epochs=args.epochs, lr=args.lr, max_length=args.max_length),
                 "fine-mix": dict(epochs=args.epochs, lr=args.lr, max_length=args.max_length,
                                  rhos=tuple(args.rho) if args.rho else None, variant=args.variant,
                                  e_pur_top_n=args.e_pur, clean_limit=args.clean_limit),
                 "e-pur": dict(epochs=args.epochs, lr=args.lr, max_length=args.max_length, top_n=args.top_n,
                               clean_limit=args.clean_limit)}[args.method]
    for name in ("steps", "rho", "variant", "e_pur", "top_n", "clean_limit"):
        value = getattr(args, name)
        if value is not None and name.replace("rho", "rhos").replace("e_pur", "e_pur_top_n") not in overrides:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to {args.method}")
    overrides["seed"] = args.seed
    config = purify.profile(args.method, args.profile, **overrides)
    measure = False if args.no_measure else purify.profile("measure", args.profile, train_limit=args.measure_train,
                                                            dev_limit=args.measure_dev, seed=args.seed)
    result = purify.run_purify(args.method, args.model, args.out, report=args.report, pretrained=args.pretrained,
                               task=args.task, dev_task=args.dev, profile=args.profile, config=config, measure=measure, device=args.device,
                               allow_pickle=args.allow_pickle, progress=not args.quiet)
    print(f"{args.method}: {args.model} -> {result.out_dir}")
    if result.triggers:
        print(f"triggers (from {result.report['triggers_source']}): {', '.join(result.triggers)}")
    if result.before is not None and result.after is not None:
        print("\n".join(measurement_table(result.before.to_dict(), result.after.to_dict())))
    details = result.report["details"]
    if args.method == "fine-mix":
        print(f"rho {details['rho']} ({details['reason']})")
    print(f"report: {result.report_path}", file=sys.stderr)
    return 0
