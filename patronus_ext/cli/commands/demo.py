"""``patronus demo``: plant a backdoor in the packaged MiniLM, then scan it and the clean model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ._options import add_profile_option, add_report_options, add_run_options

    p = subparsers.add_parser("demo", help="plant a backdoor in all-MiniLM-L6-v2, scan, monitor and purify it",
                              description="The built-in end-to-end demo: plant a POR backdoor in the packaged "
                              "all-MiniLM-L6-v2, scan it and the clean model, monitor a few sentences with what "
                              "the scan found, purify the planted model with it (adversarial pre-training) and "
                              "print CACC / T-ASR before and after. The planted and purified models are cached "
                              "($PATRONUS_CACHE or ~/.cache/patronus_ext), so only the first run trains.")
    add_profile_option(p, "fast", "the scan's")
    p.add_argument("--no-purify", action="store_true", help="stop after monitoring (skip the purification step)")
    add_report_options(p)
    add_run_options(p, pickle=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...detect import ScanConfig
    from ..demo import run_demo
    from ..formatting import monitor_line, purification_summary, scan_summary
    from ._options import check_outputs, write_report

    check_outputs(args)
    print("patronus demo: all-MiniLM-L6-v2, POR backdoor with triggers planted by the demo itself")
    result = run_demo(ScanConfig.profile(args.profile, seed=args.seed), seed=args.seed, progress=not args.quiet,
                      device=args.device, purify=not args.no_purify)
    print(f"planted model: {result.planted_dir} ({'cached' if result.reused_cache else 'planted now'}); "
          f"triggers {', '.join(result.planted_triggers)}")
    print(scan_summary("clean all-MiniLM-L6-v2", result.clean_report))
    print(scan_summary("backdoored all-MiniLM-L6-v2", result.backdoored_report))
    print(f"recovered {len(result.recovered)}/{len(result.planted_triggers)} planted triggers: "
          f"{', '.join(result.recovered) or 'none'}")
    if result.monitoring:
        print("monitoring the backdoored model with what the scan found (action: strip the trigger and serve):")
        for text, decision in result.monitoring:
            print("  " + monitor_line(text, decision))
    if result.purification is not None:
        print(purification_summary(result.purified_dir, result.purified_reused, result.purification))
    write_report(args, result.to_dict())
    return 0
