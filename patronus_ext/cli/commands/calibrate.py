"""``patronus calibrate MODEL [MODEL ...]``: derive scan thresholds from benign models (Patronus's verification
thresholds, or with ``--method bait`` BAIT's decision on chat models)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ._options import add_profile_option, add_report_options, add_run_options

    p = subparsers.add_parser("calibrate", help="suggest scan thresholds from benign (clean) models",
                              description="Runs the trigger search on each benign model without confirming "
                              "anything, verifies every final candidate and suggests diff/poison thresholds "
                              "that keep all of them out of the trigger region by --margin, and a shift-rule bar above "
                              "every benign shift by --shift-margin.  --method bait: runs the target inversion "
                              "on each benign chat model and suggests the Q bar (and, with --reference, the "
                              "reference margin) that keeps every inverted sequence out by --margin.")
    p.add_argument("models", nargs="+", help="benign model folders or hub ids")
    p.add_argument("--method", choices=("patronus", "bait"), default="patronus",
                   help="patronus: the encoder scan's thresholds (default); bait: the chat-model scan's decision")
    p.add_argument("--reference", help="bait: the clean model the benign ones derive from (as `scan --reference`)")
    p.add_argument("--corpus", help="clean plain-text corpus (default: wikitext2)")
    add_profile_option(p, "fast", "the scan's")
    p.add_argument("--loops", type=int, help="fuzz loops per model")
    p.add_argument("--margin", type=float, default=0.05, help="distance kept from every benign candidate")
    p.add_argument("--shift-margin", type=float, help="clean spreads kept between the largest benign "
                   "shift and the shift rule's bar (default 0.5)")
    add_report_options(p, "the calibration JSON")
    add_run_options(p)
    p.set_defaults(func=run)


#: Options of the Patronus calibration only, and of BAIT's only.
_PATRONUS_ONLY, _BAIT_ONLY = ("corpus", "loops", "shift_margin"), ("reference",)


def run(args: argparse.Namespace) -> int:
    wrong = _PATRONUS_ONLY if args.method == "bait" else _BAIT_ONLY
    given = [n for n in wrong if getattr(args, n) is not None]
    if given:
        raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in given)} does not apply to "
                         f"--method {args.method}")
    if args.method == "bait":
        return run_bait(args)
    from ... import lm
    from ...detect import ScanConfig, read_scan_corpus
    from ...detect.patronus.calibrate import calibrate
    from ._options import check_outputs, write_report

    check_outputs(args)
    config = ScanConfig.profile(args.profile, fuzz_loops=args.loops, seed=args.seed)
    corpus = read_scan_corpus(args.corpus or "wikitext2", config, args.seed)
    adapters = [lm.load_adapter(name, allow_pickle=args.allow_pickle, device=args.device) for name in args.models]
    benign = [(name, adapter.model, adapter.tokenizer) for name, adapter in zip(args.models, adapters)]
    result = calibrate(benign, corpus, config, margin=args.margin, progress=not args.quiet,
                       shift_margin=0.5 if args.shift_margin is None else args.shift_margin)
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


def run_bait(args: argparse.Namespace) -> int:
    """``--method bait``: the inversion on each benign chat model, then the suggested decision."""
    from ... import lm
    from ...detect import BaitConfig
    from ...detect.bait.calibrate import calibrate_bait
    from ._options import check_outputs, write_report

    check_outputs(args)
    config = BaitConfig.profile(args.profile, seed=args.seed)
    device = lm.resolve_device(args.device)
    for name in args.models + ([args.reference] if args.reference else []):
        if lm.lm_head_kind(lm.load_config(name)) != "causal":
            raise ValueError(f"{name} is not a causal LM; --method bait calibrates chat models")
    reference = None if not args.reference else \
        lm.load_model(args.reference, "causal", allow_pickle=args.allow_pickle, device=device)
    benign = [(name, lm.load_model(name, "causal", allow_pickle=args.allow_pickle, device=device),
               lm.load_tokenizer(name)) for name in args.models]
    result = calibrate_bait(benign, config, reference=reference, reference_name=args.reference,
                            margin=args.margin, progress=not args.quiet)
    for row in result.closest:
        margin = "" if row["max_margin_at_q_bar"] is None else \
            f", largest Q - Q_reference at Q >= {config.q_threshold}: {row['max_margin_at_q_bar']:.3f}"
        best = "none qualifies" if row["best_q"] is None else f"best Q {row['best_q']:.3f}"
        print(f"{row['model']}: {row['sequences']} inverted sequence(s), {best}{margin}")
    print(f"suggested: --q-threshold {result.q_threshold:.3f}" +
          ("" if result.reference_margin is None else f" --reference-margin {result.reference_margin:.3f}") +
          f"  (default {config.q_threshold:g}" + ("" if result.reference_margin is None else
                                                 f" / {config.reference_margin:g}") + ")")
    if not result.separable:
        print("these benign models cannot be told from a backdoored one by this rule: "
              + ("no margin over the reference separates them" if result.reference_margin is not None
                 else "a Q bar would have to exceed 1; scan with --reference"))
    write_report(args, result.to_dict())
    return 0
