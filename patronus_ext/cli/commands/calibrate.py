"""``patronus calibrate MODEL [MODEL ...]``: derive scan thresholds from benign models."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ._options import add_profile_option, add_report_options, add_run_options

    p = subparsers.add_parser("calibrate", help="suggest scan thresholds from benign (clean) models",
                              description="Runs the trigger search on each benign model without confirming "
                              "anything, verifies every final candidate and suggests diff/poison thresholds "
                              "that keep all of them out of the trigger region by --margin, and a shift-rule bar above "
                              "every benign shift by --shift-margin.")
    p.add_argument("models", nargs="+", help="benign model folders or hub ids")
    p.add_argument("--corpus", default="wikitext2", help="clean plain-text corpus (default: wikitext2)")
    add_profile_option(p, "fast", "the scan's")
    p.add_argument("--loops", type=int, help="fuzz loops per model")
    p.add_argument("--margin", type=float, default=0.05, help="distance kept from every benign candidate")
    p.add_argument("--shift-margin", type=float, default=0.5, help="clean spreads kept between the largest benign "
                   "shift and the shift rule's bar")
    add_report_options(p, "the calibration JSON")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ... import lm
    from ...detect import ScanConfig, read_scan_corpus
    from ...detect.patronus.calibrate import calibrate
    from ._options import check_outputs, write_report

    check_outputs(args)
    config = ScanConfig.profile(args.profile, fuzz_loops=args.loops, seed=args.seed)
    corpus = read_scan_corpus(args.corpus, config, args.seed)
    adapters = [lm.load_adapter(name, allow_pickle=args.allow_pickle, device=args.device) for name in args.models]
    benign = [(name, adapter.model, adapter.tokenizer) for name, adapter in zip(args.models, adapters)]
    result = calibrate(benign, corpus, config, margin=args.margin, progress=not args.quiet,
                       shift_margin=args.shift_margin)
    print(f"{len(result.candidates)} benign candidates from {len(result.models)} model(s): "
          f"min diff_cos {result.min_benign_diff_cos:.3f}, max poison_cos {result.max_benign_poison_cos:.3f}")
    print(f"suggested: --diff-threshold {result.diff_cos_threshold:.3f} "
          f"--poison-threshold {result.poison_cos_threshold:.3f}  (paper: 0.4 / 0.9)")
    if result.natural_targets:
        print(f"{result.natural_targets} candidate(s) send texts where clean texts already are (class points): "
              "left to the natural-target check, not used for the thresholds above")
    if result.max_benign_pinpoint_ratio is not None:
        print(f"largest benign pinpoint ratio {result.max_benign_pinpoint_ratio:.1f} among collapsed candidates "
              f"(the pinpoint rule's bar: {config.pinpoint_ratio})")
    if result.shift_threshold is not None:
        print(f"largest benign shift {result.max_benign_shift_ratio:.2f} clean spreads; suggested: "
              f"--shift-threshold {result.shift_threshold:.2f}  (default {config.shift_threshold:g})")
    write_report(args, result.to_dict())
    return 0
