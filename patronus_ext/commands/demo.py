"""``patronus demo``: plant a backdoor in the packaged MiniLM, then scan it and the clean model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="plant a backdoor in all-MiniLM-L6-v2, scan it and the clean model",
                              description="The built-in end-to-end demo. The planted model is cached "
                              "($PATRONUS_CACHE or ~/.cache/patronus_ext), so only the first run plants.")
    p.add_argument("--profile", choices=("fast", "paper"), default="fast", help="scan profile (default fast)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--force", action="store_true", help="replace an existing --report file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..detect import profile
    from ..io import check_output_path, write_json
    from ..report import scan_summary

    if args.report:
        check_output_path(args.report, args.force)
    print("patronus demo: all-MiniLM-L6-v2, POR backdoor with triggers planted by the demo itself")
    result = run_demo(profile(args.profile, seed=args.seed), seed=args.seed, progress=not args.quiet,
                      device=args.device)
    print(f"planted model: {result.planted_dir} ({'cached' if result.reused_cache else 'planted now'}); "
          f"triggers {', '.join(result.planted_triggers)}")
    print(scan_summary("clean all-MiniLM-L6-v2", result.clean_report))
    print(scan_summary("backdoored all-MiniLM-L6-v2", result.backdoored_report))
    print(f"recovered {len(result.recovered)}/{len(result.planted_triggers)} planted triggers: "
          f"{', '.join(result.recovered) or 'none'}")
    if args.report:
        write_json(args.report, result.to_dict(), overwrite=args.force)
        print(f"report: {args.report}")
    return 0
