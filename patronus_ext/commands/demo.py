"""``patronus demo``: plant a backdoor in the packaged MiniLM, then scan it and the clean model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ._options import add_report_options, add_run_options

    p = subparsers.add_parser("demo", help="plant a backdoor in all-MiniLM-L6-v2, scan it and the clean model",
                              description="The built-in end-to-end demo. The planted model is cached "
                              "($PATRONUS_CACHE or ~/.cache/patronus_ext), so only the first run plants.")
    p.add_argument("--profile", choices=("fast", "paper"), default="fast", help="scan profile (default fast)")
    add_report_options(p)
    add_run_options(p, pickle=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..detect import profile
    from ._options import check_outputs, write_report
    from ..report import monitor_line, scan_summary

    check_outputs(args)
    print("patronus demo: all-MiniLM-L6-v2, POR backdoor with triggers planted by the demo itself")
    result = run_demo(profile(args.profile, seed=args.seed), seed=args.seed, progress=not args.quiet,
                      device=args.device)
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
    write_report(args, result.to_dict())
    return 0
