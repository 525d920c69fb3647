"""Options ``patronus monitor`` and ``patronus serve`` share (one definition, one help text), and the one
call that turns them into a served model (:func:`patronus_ext.monitor.build.build_monitored_model`)."""

from __future__ import annotations

import argparse


def add_monitor_options(p: argparse.ArgumentParser) -> None:
    from ...monitor import ACTIONS, MODES
    from ._options import add_scan_report_option

    p.add_argument("--model", required=True, help="the served model: folder, hub id or all-MiniLM-L6-v2 (packaged)")
    add_scan_report_option(p, help="scan report (patronus scan --report): its confirmed triggers feed the input "
                           "monitor, and its bank the output monitor unless --bank is given")
    p.add_argument("--bank", default=None, help="attack-vector bank (.safetensors) for the output monitor "
                   "(default: the report's bank, when that file exists)")
    p.add_argument("--no-report-bank", action="store_true", help="do not use the report's bank (input monitor only)")
    p.add_argument("--mode", choices=MODES, default="sign", help="output monitor rule: sign (LMSanitator's share "
                   "of agreeing signs) or cosine (default: sign)")
    p.add_argument("--threshold", type=float, default=None, help="output monitor threshold "
                   "(default: 0.8 for sign, 0.9 for cosine)")
    p.add_argument("--action", choices=ACTIONS, default="flag", help="what happens to a flagged input: flag (serve "
                   "it, say why), reject (serve nothing), strip (remove the trigger words), purge (delete words "
                   "until both monitors pass) (default: flag)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--max-chars", type=int, default=None, help="longest text accepted, in characters "
                   "(default 20000)")


def build_served(args: argparse.Namespace, *, monitor: bool = True):
    """The monitored model the options describe (or, with ``monitor=False``, the plain model)."""
    from ...monitor.build import build_monitored_model, build_plain_model
    from ...monitor.model import MAX_TEXT_CHARS

    max_chars = args.max_chars if args.max_chars is not None else MAX_TEXT_CHARS
    if not monitor:
        return build_plain_model(args.model, device=args.device, allow_pickle=args.allow_pickle,
                                 max_length=args.max_length, max_chars=max_chars)
    return build_monitored_model(args.model, args.scan_report, args.bank, mode=args.mode, threshold=args.threshold,
                                 action=args.action, device=args.device, allow_pickle=args.allow_pickle,
                                 max_length=args.max_length, max_chars=max_chars,
                                 use_report_bank=not args.no_report_bank)
