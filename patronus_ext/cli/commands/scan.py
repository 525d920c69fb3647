"""``patronus scan MODEL``: search a model for transferable-backdoor triggers."""

from __future__ import annotations

import argparse
import sys

EXIT_CLEAN, EXIT_BACKDOORED = 0, 1


def register(subparsers) -> None:
    from ._options import add_profile_option, add_renamed_option, add_report_options, add_run_options

    p = subparsers.add_parser("scan", help="search a pre-trained model for backdoor triggers (Patronus)",
                              description="Multi-trigger contrastive trigger search with verification. "
                              "Exit status: 0 clean, 1 backdoored, 2 error.")
    p.add_argument("model", help="model folder or hub id ('all-MiniLM-L6-v2' = the packaged model)")
    p.add_argument("--method", choices=("patronus", "lmsanitator", "bait"), default="patronus",
                   help="patronus: trigger search (default); lmsanitator: attack-vector inversion (docs/METHODS.md "
                   "§3); bait: attack-target inversion for instruction-tuned causal LMs (§7)")
    p.add_argument("--corpus", default="wikitext2", help="clean plain-text corpus: a file (one paragraph per "
                   "line), a built-in name (wikitext2) or hf:NAME (default: wikitext2)")
    add_profile_option(p, "fast", "the papers'")
    p.add_argument("--word-level", action="store_true", help="search whole (multi-token) words")
    p.add_argument("--word-list", help="word level: a file with one candidate word per line "
                   "(default: wordfreq's English list)")
    p.add_argument("--position", default="auto", choices=("auto", "first", "last", "eos", "mask"),
                   help="where the representation is read (mask: prompt/BToP-style backdoors)")
    p.add_argument("--prompt-template", help="with --position mask: how texts are wrapped, e.g. "
                   "'{text} It was {mask} .' (default '{text} {mask}')")
    rarity = p.add_mutually_exclusive_group()
    rarity.add_argument("--zipf-threshold", type=float, help="search only words rarer than this wordfreq Zipf "
                        "frequency (default 4.0; the report states the coverage)")
    rarity.add_argument("--all-words", action="store_true", help="search the common part of the vocabulary too "
                        "(rare words still first): no blind spot for common-word triggers, a slower scan")
    add_renamed_option(p, "--num-triggers", "--triggers", type=int, help="K, triggers searched in parallel")
    p.add_argument("--loops", type=int, help="fuzz loops")
    p.add_argument("--rounds", type=int, help="candidate updates per loop")
    p.add_argument("--max-length", type=int, help="tokens per text")
    p.add_argument("--verify-texts", type=int, help="held-out texts per verification")
    p.add_argument("--diff-threshold", type=float, help="confirm iff diff_cos < this (default 0.4)")
    p.add_argument("--poison-threshold", type=float, help="confirm iff poison_cos > this (default 0.9)")
    p.add_argument("--shift-loops", type=int, help="loops after the contrastive ones whose objective also rewards "
                   "moving texts far (default 0)")
    p.add_argument("--collapse-loops", type=int, help="loops after those whose objective also rewards sending every "
                   "text to one place, wherever it lies (default 1; 0: none)")
    p.add_argument("--shift-threshold", type=float, help="... or iff triggered texts moved at least this many clean "
                   "spreads, wherever they went (default: the profile's; `patronus calibrate` suggests one)")
    p.add_argument("--natural-target-gap", type=float, help="the paper and collapse rules spare a word whose "
                   "target lies within this many clean spreads of the nearest 5%% of clean texts: a task "
                   "classifier's class point, not a backdoor target (default 1.0; 0 turns the check off)")
    p.add_argument("--pinpoint-ratio", type=float, help="... or iff triggered texts collapsed onto a point they sit "
                   "at least this many times tighter around than its nearest clean texts do, wherever it lies "
                   "(default 50; 0 turns the rule off)")
    add_report_options(p)
    p.add_argument("--bank-out", help="write the attack-vector bank (one vector per confirmed trigger group, for "
                   "the output monitor) here (default: beside --report as REPORT.bank.safetensors)")
    p.add_argument("--plot", help="write a PCA plot of clean vs triggered representations here (PNG)")
    lms = p.add_argument_group("lmsanitator (--method lmsanitator)")
    lms.add_argument("--exhaustive", action="store_true", help="collect every vector (default: stop at the first "
                     "group of seeds that gives one; with --bank-out, exhaustive is the default)")
    lms.add_argument("--detection-only", action="store_true", help="with --bank-out: stop at the first group of "
                     "seeds that gives a vector (a verdict, not a complete bank)")
    lms.add_argument("--seeds", type=int, help="trigger seeds tried (default: the profile's)")
    lms.add_argument("--distance-threshold", type=float, help="MSE a vector must keep from the clean outputs "
                     "and from stored vectors (default: the profile's; fast calibrates it on the model from "
                     "random real-token triggers, a value given here replaces that calibration)")
    bait = p.add_argument_group("bait (--method bait)")
    bait.add_argument("--reference", help="a clean model over the same tokenizer (the weights the checkpoint "
                      "claims to derive from): an inverted sequence must score --reference-margin above its score "
                      "there")
    bait.add_argument("--q-threshold", type=float, help="backdoored iff the target's Q reaches this "
                      "(default: the profile's, 0.9)")
    bait.add_argument("--reference-margin", type=float, help="with --reference: the least Q - Q_reference of a "
                      "target (default 0.3)")
    bait.add_argument("--prompts", type=int, help="benign prompts averaged in the full pass")
    bait.add_argument("--first-tokens", choices=("both", "unmarked", "marked"), help="forms of the vocabulary's "
                      "words scanned as first answer tokens (default: paper both, fast unmarked)")
    bait.add_argument("--max-candidates", type=int, help="scan only the first N candidate first tokens")
    bait.add_argument("--no-trigger-search", action="store_true", help="do not recover the trigger of a found "
                      "target")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.method == "bait":
        return run_bait(args)
    given = [n for n in _BAIT_ONLY if getattr(args, n, None) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in given)} applies to --method bait only")
    if args.method == "lmsanitator":
        return run_lmsanitator(args)
    for name in ("exhaustive", "detection_only", "seeds", "distance_threshold"):
        if getattr(args, name):
            raise ValueError(f"--{name.replace('_', '-')} applies to --method lmsanitator only")
    from ... import lm
    from ...detect import ScanConfig, read_scan_corpus, scan
    from ..formatting import scan_summary
    from ._options import check_outputs

    bank_path = bank_destination(args)
    check_outputs(args, args.plot, bank_path)
    config = ScanConfig.profile(args.profile, word_level=args.word_level or None, num_triggers=args.num_triggers,
                     fuzz_loops=args.loops, update_rounds=args.rounds, max_length=args.max_length,
                     verify_texts=args.verify_texts, diff_cos_threshold=args.diff_threshold,
                     poison_cos_threshold=args.poison_threshold, shift_threshold=args.shift_threshold,
                     shift_loops=args.shift_loops, collapse_loops=args.collapse_loops,
                     seed=args.seed, zipf_threshold=args.zipf_threshold)
    for name in ("natural_target_gap", "pinpoint_ratio"):   # 0 turns the check off
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
            config = config.replace(**{name: value or None})
    if args.all_words:
        config = config.replace(zipf_threshold=None)
    adapter = lm.load_adapter(args.model, allow_pickle=args.allow_pickle, device=args.device)
    corpus = read_scan_corpus(args.corpus, config, args.seed)
    words = None
    if args.word_list:
        with open(args.word_list, encoding="utf-8") as handle:
            words = [w.strip() for w in handle if w.strip()]
    report = scan(adapter.model, adapter.tokenizer, corpus, config, position=args.position,
                  prompt_template=args.prompt_template, words=words, progress=not args.quiet)
    print(scan_summary(args.model, report))
    write_outputs(args, report, bank_path)
    if args.plot:
        from ..plots import plot_representations

        plot_representations(report.representations, args.plot, f"{args.model}: {report.verdict}")
        print(f"plot: {args.plot}")
    return EXIT_BACKDOORED if report.backdoored else EXIT_CLEAN


def bank_destination(args: argparse.Namespace) -> str | None:
    """``--bank-out``, else ``REPORT.bank.safetensors`` beside ``--report`` (no bank without either)."""
    if args.bank_out:
        return args.bank_out
    if args.report:
        stem = args.report[:-5] if args.report.endswith(".json") else args.report
        return f"{stem}.bank.safetensors"
    return None


#: Options of the Patronus search that mean nothing to LMSanitator.
_PATRONUS_ONLY = ("word_level", "word_list", "zipf_threshold", "all_words", "num_triggers", "loops", "rounds",
                  "verify_texts", "diff_threshold", "poison_threshold", "shift_threshold", "shift_loops",
                  "collapse_loops", "natural_target_gap", "pinpoint_ratio", "plot")


def run_lmsanitator(args: argparse.Namespace) -> int:
    """``--method lmsanitator``: invert attack vectors; same report, bank and exit codes as the Patronus scan."""
    from ... import lm
    from ...detect import LMSanitatorConfig, lmsanitator, read_scan_corpus
    from ._options import check_outputs

    given = [n for n in _PATRONUS_ONLY if getattr(args, n, None) not in (None, False)]
    if given:
        raise ValueError(f"--method lmsanitator does not take {', '.join('--' + n.replace('_', '-') for n in given)}")
    bank_path = bank_destination(args)
    check_outputs(args, bank_path)
    if args.exhaustive and args.detection_only:
        raise ValueError("--exhaustive and --detection-only exclude each other")
    # A bank for the output monitor must hold every attack vector: --bank-out runs exhaustive mode.
    exhaustive = args.exhaustive or (bool(args.bank_out) and not args.detection_only)
    config = LMSanitatorConfig.profile(args.profile, seed=args.seed, seeds=args.seeds, max_length=args.max_length,
                         distance_threshold=args.distance_threshold,
                         mode="exhaustive" if exhaustive else None)
    if args.distance_threshold is not None:
        config = config.replace(distance_relative=None)  # the given threshold, not a calibrated one
    adapter = lm.load_adapter(args.model, allow_pickle=args.allow_pickle, device=args.device)
    corpus = read_scan_corpus(args.corpus, config, args.seed)
    report = lmsanitator(adapter.model, adapter.tokenizer, corpus, config, position=args.position,
                         prompt_template=args.prompt_template, progress=not args.quiet)
    print(report.summary(args.model))
    write_outputs(args, report, bank_path)
    return EXIT_BACKDOORED if report.backdoored else EXIT_CLEAN


#: Options of --method bait only.
_BAIT_ONLY = ("reference", "q_threshold", "reference_margin", "prompts", "first_tokens", "max_candidates",
              "no_trigger_search")
#: Options of the other methods that mean nothing to BAIT.
_NOT_BAIT = _PATRONUS_ONLY + ("exhaustive", "seeds", "distance_threshold", "max_length", "prompt_template",
                              "bank_out")


def run_bait(args: argparse.Namespace) -> int:
    """``--method bait``: invert the attack target of a causal LM, then its trigger; exit 0 clean, 1 backdoored."""
    from ... import lm
    from ...detect import BaitConfig, TriggerSearchConfig, bait, recover_triggers
    from ...formats.scan_report import write_scan_outputs
    from ._options import check_outputs

    given = [n for n in _NOT_BAIT if getattr(args, n, None) not in (None, False)]
    if args.position != "auto":
        given.append("position")
    if given:
        raise ValueError(f"--method bait does not take {', '.join('--' + n.replace('_', '-') for n in given)}")
    check_outputs(args)
    kind = lm.lm_head_kind(lm.load_config(args.model))
    if kind != "causal":
        raise ValueError(f"{args.model} is an encoder ({lm.load_config(args.model).model_type}); --method bait "
                         "scans instruction-tuned causal LMs: use --method patronus")
    config = BaitConfig.profile(args.profile, seed=args.seed, q_threshold=args.q_threshold,
                                reference_margin=args.reference_margin, prompts=args.prompts,
                                first_tokens=args.first_tokens, max_candidates=args.max_candidates)
    import time

    loading = time.perf_counter()
    device = lm.resolve_device(args.device)
    tokenizer = lm.load_tokenizer(args.model)
    model = lm.load_model(args.model, "causal", allow_pickle=args.allow_pickle, device=device)
    reference = None
    if args.reference:
        if lm.lm_head_kind(lm.load_config(args.reference)) != "causal":
            raise ValueError(f"--reference {args.reference} is not a causal LM")
        reference = lm.load_model(args.reference, "causal", allow_pickle=args.allow_pickle, device=device)
    loading = time.perf_counter() - loading
    report = bait(model, tokenizer, config, reference=reference, reference_name=args.reference,
                  progress=not args.quiet)
    report.timings = {"load": loading, **report.timings, "total": report.timings["total"] + loading}
    if report.backdoored and not args.no_trigger_search:
        recover_triggers(model, tokenizer, report, TriggerSearchConfig.profile(args.profile, seed=args.seed),
                         reference=reference, progress=not args.quiet)
    print(report.summary(args.model))
    write_scan_outputs(report.to_dict(), args.model, None, report_path=args.report, bank_path=None,
                       overwrite=args.force)
    if args.report:
        print(f"report: {args.report}", file=sys.stderr)
    return EXIT_BACKDOORED if report.backdoored else EXIT_CLEAN


def write_outputs(args: argparse.Namespace, report, bank_path: str | None) -> None:
    """The report (naming the model as given) and, for a backdoored verdict, the attack-vector bank."""
    from ...formats.scan_report import write_scan_outputs

    bank = report.attack_bank(args.model) if report.backdoored and bank_path else None
    payload = write_scan_outputs(report.to_dict(), args.model, bank, report_path=args.report, bank_path=bank_path,
                                 overwrite=args.force)
    if payload["bank"]:
        print(f"bank: {payload['bank']}", file=sys.stderr)
    elif report.backdoored and bank_path:
        print("bank: none written: every confirmed trigger scatters its outputs (shift rule), so there is no "
              "target point for the output monitor; the input monitor watches for the trigger words",
              file=sys.stderr)
    if args.report:
        print(f"report: {args.report}", file=sys.stderr)
