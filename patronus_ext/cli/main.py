"""``patronus``: the command line.  Each sub-command lives in ``patronus_ext/cli/commands/``.

Exit status (the README's table): 0 success (for ``scan`` and ``audit``: clean), 1 backdoor found (``scan``,
``audit``), 2 any error, with one line on stderr: a failure never exits 1, so a CI gate cannot read a crash
as "backdoor found".
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Sub-command modules; each defines ``register(subparsers)`` which sets ``func``.
COMMANDS = ("demo", "scan", "calibrate", "attack", "evaluate", "monitor", "serve", "purify", "audit")

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patronus", description="Find, watch for and remove transferable "
                                     "backdoors in pre-trained language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"patronus_ext.cli.commands.{name}").register(subparsers)
    for sub in subparsers.choices.values():  # accept -v after the sub-command too
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress details")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - any failure is exit 2, never 1 (which `scan` means "backdoored")
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, (ValueError, FileNotFoundError, RuntimeError, TypeError, OSError)):
            message = f"{type(exc).__name__}: {message}"
        print(f"patronus {args.command}: error: {message}", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"patronus {args.command}: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
