"""``patronus purify``: remove a backdoor, driven by what ``patronus scan`` found; writes a NEW model folder."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ._options import add_profile_option, add_run_options, add_scan_report_option

    p = subparsers.add_parser(
        "purify", help="purify a model with the scan's triggers (adversarial training, Fine-mixing, E-PUR, "
        "MB-Defense, unlearning a BAIT scan's target)",
        description="adv-pt: adversarial pre-training of an encoder (needs --scan-report); adv-ft: adversarial "
        "fine-tuning into a classifier for --task (needs --scan-report); fine-mix / e-pur: purify a classifier "
        "fine-tuned on possibly poisoned data (needs --pretrained, the clean weights it started from); "
        "mb: instruction-tune the causal LM --model on --data (possibly poisoned) with MB-Defense; fine-mix-lm: "
        "Fine-mixing of an instruction-tuned causal LM (needs --pretrained, the clean instruct weights); "
        "unlearn: repair a causal LM against the target and triggers of a `patronus scan --method bait` report "
        "(needs --scan-report; --reference: a clean model whose answers are taught). "
        "The output folder gets purify.json with CACC and T-ASR before and after. Exit status: 0 ok, 2 error.")
    p.add_argument("--method", required=True, choices=("adv-pt", "adv-ft", "fine-mix", "e-pur", "mb", "fine-mix-lm",
                                                          "unlearn"))
    p.add_argument("--model", required=True, help="the model folder to purify (never modified)")
    add_scan_report_option(p, "the `patronus scan --report` JSON of this model (its confirmed triggers; unlearn: "
                           "a --method bait report, its target and triggers)")
    p.add_argument("--reference", help="unlearn: a clean causal LM of the same tokenizer whose answers to the "
                   "untriggered prompts are taught on triggered ones (default: the model's own)")
    p.add_argument("--pretrained", help="fine-mix / e-pur / fine-mix-lm: the clean pre-trained model folder or name")
    p.add_argument("--task", default="sst2", help="task: built-in name (sst2, agnews) or a labelled file "
                   "(default: sst2); mb / fine-mix-lm: the instruction source of the clean samples and dev prompts")
    p.add_argument("--dev", help="with a task file: the labelled dev file (default: the task's dev split)")
    p.add_argument("--data", help="mb: the instruction data to tune on (possibly poisoned): an Alpaca JSONL file "
                   "(e.g. instruction_data.jsonl of `patronus attack --method instruct-badnet`) or a built-in "
                   "source (sst2, agnews, wikitext2, a '+' mix; default: --task); the clean samples and dev "
                   "prompts come from --task")
    p.add_argument("--baseline", help="mb: a model tuned on the same data without the defense, measured as "
                   "'before' (default: tune one)")
    p.add_argument("--lambda", type=float, action="append", dest="lambdas",
                   help="mb: a candidate weight of the recovery preference term (repeat)")
    p.add_argument("--recovery-steps", type=int, help="mb: weight-recovery steps (overrides its epochs)")
    p.add_argument("--out", required=True, help="the NEW output model folder (must not exist)")
    add_profile_option(p, "fast", "the authors'")
    p.add_argument("--steps", type=int, help="adv-pt, mb (stage i), fine-mix-lm, unlearn: optimizer steps "
                   "(overrides the epochs)")
    p.add_argument("--unlikelihood-weight", type=float, help="unlearn: weight of the target's bounded unlikelihood "
                   "-log(1-p) on triggered prompts (default 1)")
    p.add_argument("--epochs", type=float, help="training epochs of the method")
    p.add_argument("--lr", type=float, help="learning rate of the method")
    p.add_argument("--max-length", type=int, help="tokens per text for the method")
    p.add_argument("--rho", type=float, action="append", help="fine-mix: a candidate keep fraction (repeat); "
                   "fine-mix-lm: the keep fraction (default 0.5)")
    p.add_argument("--variant", choices=("random", "sel"), help="fine-mix, fine-mix-lm: random deltas or the "
                   "largest |delta|")
    p.add_argument("--e-pur", type=int, dest="e_pur", help="fine-mix: also reset this many E-PUR embedding rows")
    p.add_argument("--top-n", type=int, help="e-pur: embedding rows to reset (default 200)")
    p.add_argument("--clean-limit", type=int, help="fine-mix / e-pur: clean examples for the final fine-tuning; "
                   "mb / fine-mix-lm / unlearn: clean samples (default 128)")
    p.add_argument("--no-measure", action="store_true", help="skip the before/after CACC and T-ASR")
    p.add_argument("--measure-train", type=int, help="examples fine-tuning an encoder before measuring")
    p.add_argument("--measure-dev", type=int, help="dev examples measured (default: all; mb / fine-mix-lm fast: 200)")
    add_run_options(p)
    p.set_defaults(func=run)


#: Per method: the method flags that apply (argparse dest -> config field; None: an argument of the run).
FLAGS: dict[str, dict[str, str | None]] = {
    "adv-pt": {"steps": "steps", "epochs": "epochs", "lr": "lr", "max_length": "max_length"},
    "adv-ft": {"epochs": "epochs", "lr": "lr", "max_length": "max_length"},
    "fine-mix": {"epochs": "epochs", "lr": "lr", "max_length": "max_length", "rho": "rhos", "variant": "variant",
                 "e_pur": "e_pur_top_n", "clean_limit": "clean_limit"},
    "e-pur": {"epochs": "epochs", "lr": "lr", "max_length": "max_length", "top_n": "top_n",
              "clean_limit": "clean_limit"},
    "mb": {"steps": "steps", "epochs": "epochs", "lr": "lr", "lambdas": "lambdas", "clean_limit": "clean_samples",
           "recovery_steps": "recovery_steps", "data": None, "baseline": None},
    "fine-mix-lm": {"steps": "steps", "epochs": "epochs", "lr": "lr", "rho": "rho", "variant": "variant",
                    "clean_limit": "clean_samples"},
    "unlearn": {"steps": "steps", "epochs": "epochs", "lr": "lr", "clean_limit": "clean_samples",
                "unlikelihood_weight": "unlikelihood_weight", "reference": None},
}


def run(args: argparse.Namespace) -> int:
    from ... import purify
    from ...evaluate.generation import GenerationEvalConfig
    from ..formatting import measurement_table
    from ._options import check_outputs

    check_outputs(args, folders=(args.out,))
    applies = FLAGS[args.method]
    for dest in sorted({d for flags in FLAGS.values() for d in flags}):
        if getattr(args, dest) is not None and dest not in applies:
            flag = {"lambdas": "lambda", "e_pur": "e-pur"}.get(dest, dest.replace("_", "-"))
            raise ValueError(f"--{flag} does not apply to {args.method}")
    overrides = {field: getattr(args, dest) for dest, field in applies.items() if field is not None}
    if overrides.get("rhos"):
        overrides["rhos"] = tuple(overrides["rhos"])
    if overrides.get("rho"):
        if len(overrides["rho"]) > 1:
            raise ValueError(f"{args.method} takes one --rho")
        overrides["rho"] = overrides["rho"][0]
    if overrides.get("lambdas"):
        overrides["lambdas"] = tuple(overrides["lambdas"])
    overrides["seed"] = args.seed
    config = purify.make_config(args.method, args.profile, **overrides)
    causal = args.method in purify.CAUSAL_METHODS
    if args.no_measure:
        measure = False
    elif causal:
        if args.measure_train is not None:
            raise ValueError(f"--measure-train does not apply to {args.method} (nothing is fine-tuned to measure)")
        measure = GenerationEvalConfig.profile(args.profile, dev_limit=args.measure_dev, seed=args.seed)
    else:
        measure = purify.MeasureConfig.profile(args.profile, train_limit=args.measure_train,
                                               dev_limit=args.measure_dev, seed=args.seed)
    result = purify.run_purify(args.method, args.model, args.out, report=args.scan_report, pretrained=args.pretrained,
                               task=args.task, dev_task=args.dev, profile=args.profile, config=config,
                               measure=measure, device=args.device, allow_pickle=args.allow_pickle,
                               progress=not args.quiet, data=args.data, baseline=args.baseline,
                               reference=args.reference)
    print(f"{args.method}: {args.model} -> {result.out_dir}")
    if result.triggers:
        print(f"triggers (from {result.report['triggers_source']}): {', '.join(result.triggers)}")
    if result.before is not None and result.after is not None:
        print("\n".join(measurement_table(result.before.to_dict(), result.after.to_dict())))
    details = result.report["details"]
    if args.method == "fine-mix":
        print(f"rho {details['rho']} ({details['reason']})")
    if args.method == "mb":
        print(f"lambda {details['lam']:g} ({details['reason']})")
    if args.method == "unlearn" and details.get("soft_trigger"):
        soft = details["soft_trigger"]
        print(f"no confirmed trigger: a soft trigger of {soft['tokens']} vectors stood in (target probability "
              f"{soft['target_prob_before']:.3f} -> {soft['target_prob_after']:.3f})")
    print(f"report: {result.report_path}", file=sys.stderr)
    return 0
