"""``patronus monitor --scan-report scan.json --model MODEL < in.jsonl > out.jsonl``: monitor a stream of texts."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ._monitoring import add_monitor_options
    from ._options import add_run_options

    p = subparsers.add_parser(
        "monitor", help="check a JSON-lines stream of texts with the input and output monitors",
        description="Reads JSON lines {\"text\": ...} (other fields are passed through) on stdin and writes one "
                    "decision per line, in order, on stdout: line, flagged, action, reasons, text_out (what would "
                    "be served; null when rejected). A bad line (not UTF-8, not JSON, nested deeper than 64 "
                    "levels, a number over 100 characters, no usable \"text\", too long) or a line the model "
                    "fails on gets an error record (action \"error\") and the stream goes on. A summary goes "
                    "to stderr. Exit status: 0 the stream was processed, 2 setup error (report, bank, model) "
                    "or the stream could not be read or written.")
    add_monitor_options(p)
    p.add_argument("--batch-size", type=int, default=32, help="valid lines checked per forward; output is flushed "
                   "after each batch (1: answer every line at once, for interactive use) (default 32)")
    p.add_argument("--input", default="-", help="read this JSONL file instead of stdin")
    p.add_argument("--output", default="-", help="write the decisions to this file instead of stdout")
    add_run_options(p, seed_default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...monitor.build import describe
    from ...monitor.stream import monitor_stream
    from ._monitoring import build_served
    from ._options import check_outputs

    check_outputs(args, args.output)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    served = build_served(args)
    facts = describe(served)
    if not args.quiet:
        print(f"monitoring {facts['model']}: {facts['triggers'] or 0} trigger(s), "
              f"bank {facts['bank'] if facts['bank'] is not None else 'none'}, action {facts['action']}",
              file=sys.stderr)
    source = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    sink = sys.stdout.buffer if args.output == "-" else open(args.output, "xb")
    try:
        summary = monitor_stream(served.check, source, sink, batch_size=args.batch_size, max_chars=served.max_chars)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if sink is not sys.stdout.buffer:
            sink.close()
    print(f"patronus monitor: {summary}", file=sys.stderr)
    return 0
