"""``patronus audit MODEL... --out DIR``: scan a whole model registry, resumably, here or on a Ray cluster."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ._options import add_profile_option, add_renamed_option, add_run_options

    p = subparsers.add_parser(
        "audit", help="scan many models (a registry) into one folder, resumably, locally or on Ray",
        description="One task per model and method, the model loaded inside the task. Results stream into "
        "DIR/results.jsonl as each task ends, reports into DIR/reports/, a table into DIR/summary.md and "
        "DIR/summary.csv. Re-running with the same --out skips every model already recorded (by content "
        "hash), failures included unless --retry-failed. Exit status: 0 every model clean, 1 a backdoor found, "
        "2 an error (the audit's, or any model's).")
    p.add_argument("models", nargs="*", metavar="MODEL", help="model folders or hub ids ('all-MiniLM-L6-v2' = the "
                   "packaged model)")
    p.add_argument("--list", dest="model_list", help="a file naming one model per line (# starts a comment line)")
    p.add_argument("--out", required=True, help="the audit folder (created; an existing audit folder is resumed)")
    p.add_argument("--method", choices=("patronus", "lmsanitator", "both"), default="patronus",
                   help="detector(s) run on every model (default: patronus)")
    add_profile_option(p, "fast", "the detectors'")
    p.add_argument("--corpus", default="wikitext2", help="clean plain-text corpus: a file, a built-in name or "
                   "hf:NAME (default: wikitext2); read once, sent to every task")
    run = p.add_argument_group("where the scans run")
    run.add_argument("--ray", default="auto", metavar="auto|local|ADDRESS",
                     help="auto: Ray when installed (the cluster at $RAY_ADDRESS, else a local instance), else the "
                     "local runner; local: this process, one model at a time; ADDRESS: the Ray cluster there, "
                     "e.g. ray://head:10001 (default: auto)")
    run.add_argument("--cpus-per-scan", type=int, help="CPUs (and torch threads) per scan (default: 1 on Ray; "
                     "torch's default in the local runner)")
    run.add_argument("--gpus-per-scan", type=float, default=0, help="GPUs per scan, fractions allowed (0.5: two "
                     "scans share a GPU); > 0 scans on CUDA (default 0)")
    run.add_argument("--ray-cpus", type=int, help="CPUs a local Ray instance started here may use (default: all)")
    run.add_argument("--max-retries", type=int, default=2, help="Ray: times a task whose worker died is submitted "
                     "again before it is recorded as an error (default 2)")
    run.add_argument("--retry-failed", action="store_true", help="on resume, scan again the models recorded as "
                     "failed (default: a recorded failure is final; a changed file has a new hash anyway)")
    tune = p.add_argument_group("scan settings (as `patronus scan`; they must match when resuming)")
    tune.add_argument("--max-length", type=int, help="tokens per text")
    add_renamed_option(tune, "--num-triggers", "--triggers", type=int,
                       help="patronus: K, triggers searched in parallel")
    tune.add_argument("--loops", type=int, help="patronus: fuzz loops")
    tune.add_argument("--rounds", type=int, help="patronus: candidate updates per loop")
    tune.add_argument("--verify-texts", type=int, help="patronus: held-out texts per verification")
    tune.add_argument("--seeds", type=int, help="lmsanitator: trigger seeds tried")
    add_run_options(p)
    p.set_defaults(func=run_audit_command)


def run_audit_command(args: argparse.Namespace) -> int:
    from ...audit import AuditSettings, methods_of, read_model_list, run_audit, summary_table
    from ...detect import LMSanitatorConfig, ScanConfig
    from ._options import check_outputs

    check_outputs(args, folders=(args.out,))
    names = list(args.models) + (read_model_list(args.model_list) if args.model_list else [])
    if not names:
        raise ValueError("no model to audit: give model folders or names, or --list FILE")
    settings = AuditSettings(
        methods=methods_of(args.method),
        scan_config=ScanConfig.profile(args.profile, seed=args.seed, max_length=args.max_length,
                                       num_triggers=args.num_triggers,
                            fuzz_loops=args.loops, update_rounds=args.rounds, verify_texts=args.verify_texts),
        lms_config=LMSanitatorConfig.profile(args.profile, seed=args.seed, max_length=args.max_length,
                                             seeds=args.seeds),
        corpus=args.corpus, allow_pickle=args.allow_pickle)
    result = run_audit(names, args.out, settings, runner=args.ray, cpus_per_scan=args.cpus_per_scan,
                       gpus_per_scan=args.gpus_per_scan, device=args.device, ray_cpus=args.ray_cpus,
                       max_retries=args.max_retries, retry_failed=args.retry_failed, progress=not args.quiet)
    print(summary_table(result.final))
    print(f"{len(result.final)} result(s): {result.count('clean')} clean, {result.count('backdoored')} backdoored, "
          f"{result.failed} failed; {result.scanned} scanned now{f' ({result.runner})' if result.scanned else ''}, "
          f"{result.skipped} done before, "
          f"{result.reused} reused from the same content; {result.wall_seconds:.1f} s", file=sys.stderr)
    print(f"results: {result.out_dir}/results.jsonl, summary: {result.out_dir}/summary.md", file=sys.stderr)
    if result.failed:
        print(f"patronus audit: {result.failed} model scan(s) failed (see \"error\" in results.jsonl)", file=sys.stderr)
        return 2
    return 1 if result.count("backdoored") else 0
