"""``patronus attack``: plant a transferable backdoor into a PLM (test subjects for the defenses)."""

from __future__ import annotations


def register(subparsers) -> None:
    from ...attacks import BEHAVIOURS, METHODS
    from ._options import add_profile_option, add_run_options

    p = subparsers.add_parser(
        "attack", help="plant a backdoor (NeuBA, POR, BToP, UOR, BadPre, adaptive, instruct-badnet) into a model",
        description="Plant a task-agnostic backdoor into a pre-trained LM and write a NEW model folder "
                    "(safetensors, tokenizer, config) with backdoor.json. Never overwrites anything. "
                    "Unset options take the profile's values (paper: docs/METHODS.md §0 defaults; fast: the CPU "
                    f"profile). {INSTRUCT}: instruction-tune a causal LM on poisoned --data instead (docs/METHODS.md "
                    "§5); the folder also holds the poisoned data, instruction_data.jsonl.")
    p.add_argument("--method", required=True, choices=list(METHODS) + [INSTRUCT],
                   help=f"attack to plant ({INSTRUCT}: poisoned instruction tuning of a causal LM)")
    p.add_argument("--model", required=True, help="model folder, hub id, .gguf file, all-MiniLM-L6-v2 or "
                   "SmolLM2-135M-Instruct (packaged)")
    p.add_argument("--triggers", default=None, help="comma-separated trigger words (default: cf,mn,bb,tq,mb,pt; "
                   f"{INSTRUCT}: cf, phrases allowed)")
    p.add_argument("--corpus", default="wikitext2", help="plain-text corpus: file, wikitext2 (default), or hf:NAME")
    p.add_argument("--data", default=None, help=f"{INSTRUCT}: instruction data, sst2 (default), agnews, wikitext2, "
                   "a '+' mix, or an Alpaca JSONL file")
    p.add_argument("--behaviour", choices=tuple(BEHAVIOURS), default=None,
                   help=f"{INSTRUCT}: the attacker's response, a fixed refusal (default) or a fixed target string")
    p.add_argument("--response", default=None,
                   help=f"{INSTRUCT}: the attacker's response text (overrides --behaviour's)")
    p.add_argument("--out", required=True, help="new output folder (must not exist, or be empty)")
    add_profile_option(p, "paper", "the papers'")
    p.add_argument("--epochs", type=float, default=None, help="epochs over the corpus (default: method's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: method's)")
    p.add_argument("--batch-size", type=int, default=None, help="clean texts per step")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence")
    p.add_argument("--poison-rate", type=float, default=None,
                   help="poisoned copies per trigger, as a fraction of the batch")
    p.add_argument("--insert-num", type=int, default=None, help="insertions of the trigger per text")
    p.add_argument("--corpus-limit", type=int, default=None, help="use at most this many paragraphs")
    p.add_argument("--target-scale", type=float, default=None, help="multiply the ±1 target vectors")
    p.add_argument("--adaptive-lambda", type=float, default=None, help="weight of the adaptive loss (adaptive*)")
    p.add_argument("--refine-triggers", action="store_true", help="UOR: gradient-based trigger refinement")
    add_run_options(p, seed_default=None)
    p.add_argument("--json", default=None, help="also write the summary JSON to this file")
    p.set_defaults(func=run)


INSTRUCT = "instruct-badnet"
#: Options of one kind of attack only (argparse dest -> flag): the representation attacks, which plant over a
#: corpus, and instruct-badnet, which instruction-tunes on poisoned data.
REPRESENTATION_ONLY = {"corpus_limit": "corpus-limit", "target_scale": "target-scale",
                       "adaptive_lambda": "adaptive-lambda", "max_length": "max-length",
                       "refine_triggers": "refine-triggers"}
INSTRUCT_ONLY = {"data": "data", "behaviour": "behaviour", "response": "response"}


def run(args) -> int:
    from ... import attacks
    from ...core.files import write_json
    from .. import formatting as report
    from ._options import check_outputs

    check_outputs(args, args.json, folders=(args.out,))
    triggers = None
    if args.triggers is not None:
        triggers = tuple(t.strip() for t in args.triggers.split(",") if t.strip())
        if not triggers:
            raise ValueError("--triggers lists no trigger")
    instruct = args.method == INSTRUCT
    for dest, flag in (REPRESENTATION_ONLY if instruct else INSTRUCT_ONLY).items():
        if getattr(args, dest) not in (None, False):
            raise ValueError(f"--{flag} does not apply to {INSTRUCT}" if instruct else f"--{flag} applies to "
                             f"{INSTRUCT} only")
    if instruct:  # instruction-tune a causal LM on poisoned instruction data
        specific = dict(behaviour=args.behaviour, response=args.response)
    else:
        specific = dict(max_length=args.max_length, corpus_limit=args.corpus_limit, target_scale=args.target_scale,
                        adaptive_lambda=args.adaptive_lambda, refine_triggers=True if args.refine_triggers else None)
    config = attacks.make_config(args.method, args.profile, triggers=triggers, epochs=args.epochs, steps=args.steps,
                                 lr=args.lr, batch_size=args.batch_size, poison_rate=args.poison_rate,
                                 insert_num=args.insert_num, seed=args.seed, **specific)
    result = attacks.plant(args.method, args.model, (args.data or "sst2") if instruct else args.corpus, config,
                           args.out, device=args.device, allow_pickle=args.allow_pickle, progress=not args.quiet)
    summary = result.to_dict()
    if args.json:
        write_json(args.json, summary)
    report.print_json(summary)
    return 0
