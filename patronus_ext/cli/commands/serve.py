"""``patronus serve --scan-report scan.json --model MODEL``: the monitored model as an HTTP JSON service; with a
BAIT report (``patronus scan --method bait``) and a causal LM, ``POST /generate`` under the report's guard."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ._monitoring import add_monitor_options
    from ._options import add_run_options

    p = subparsers.add_parser(
        "serve", help="serve the monitored model over HTTP (POST /check, GET /health; POST /generate "
        "under a BAIT report)",
        description="POST /check with {\"text\": ...} returns one decision (flagged, action, reasons, text_out); "
                    "with {\"texts\": [...]} returns {\"decisions\": [...]}. GET /health describes what is served. "
                    "Concurrent requests are batched into one forward; a request the model fails on fails alone. "
                    "Only Content-Type application/json is accepted (415 otherwise). Needs the 'serve' extra "
                    "(pip install 'patronus_ext[serve]'). With a BAIT scan report (patronus scan --method bait) the model is a "
                    "causal LM and POST /generate {\"prompt\": ..., \"max_new_tokens\": N} answers it greedily "
                    "under the report's guard: {\"text\", \"flagged\", \"reasons\"}; /check then checks a "
                    "prompt for the report's recovered triggers.")
    add_monitor_options(p)
    from ...monitor.generation_guard import GUARD_ACTIONS, MAX_NEW_TOKENS

    p.add_argument("--guard-action", choices=GUARD_ACTIONS, default=None, help="BAIT report only: what happens to "
                   "an answer that begins the report's target, and to a prompt holding a recovered trigger: flag "
                   "(answer it, say why), reject (stop: empty text), replace (stop: a fixed notice); a flagged "
                   "prompt is not answered under reject/replace (default: reject)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="BAIT report only: the most "
                   f"tokens one /generate request may ask for, and its default (default {MAX_NEW_TOKENS})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 or :: listens on every interface, with a warning)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--no-monitor", action="store_true", help="serve the plain model with no monitoring (a "
                   "baseline: same responses, flagged always false); --scan-report/--bank are then not needed")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-batch", type=int, default=32, help="texts per forward across requests (default 32)")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="how long a forward waits for more "
                   "requests to batch (default 2 ms)")
    p.add_argument("--read-timeout", type=float, default=10.0, metavar="SECONDS", help="time a client has to "
                   "send a request's head, and its body; a stalled request gets 408 and the connection closes "
                   "(default 10)")
    p.add_argument("--keep-alive", type=float, default=5.0, metavar="SECONDS", help="an idle keep-alive "
                   "connection is closed after this long (default 5)")
    p.add_argument("--cors", default=None, metavar="ORIGIN", help="let web pages of this one origin "
                   "(scheme://host[:port], e.g. http://localhost:3000) call the service from a browser; "
                   "no CORS headers are sent without it")
    add_run_options(p, seed_default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ...monitor.service import check_origin, create_app, server_config
    except ImportError as exc:
        raise RuntimeError(f"patronus serve needs FastAPI and uvicorn: pip install 'patronus_ext[serve]' ({exc})") \
            from None
    from ._monitoring import build_served

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    for option, seconds in (("--read-timeout", args.read_timeout), ("--keep-alive", args.keep_alive)):
        if not 0 < seconds <= 3600:
            raise ValueError(f"{option} must be in (0, 3600] seconds, got {seconds}")
    if args.cors is not None:
        check_origin(args.cors)     # before the model loads
    served = guarded_generator(args)
    if served is None:
        served = build_served(args, monitor=not args.no_monitor)
    app = create_app(served, max_texts=args.max_texts, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                     batch_window_ms=args.batch_window_ms, read_timeout_s=args.read_timeout, cors_origin=args.cors)
    sock = listen_socket(args.host, args.port)
    config = server_config(app, host=args.host, port=sock.getsockname()[1], keep_alive_s=args.keep_alive,
                           log_level="info" if args.verbose else "warning", access_log=bool(args.verbose))
    server = uvicorn.Server(config)
    if listens_everywhere(args.host):
        print(f"patronus serve: warning: listening on all interfaces ({args.host}): any machine that can reach "
              "this one can query the model; --host 127.0.0.1 keeps it to this machine", file=sys.stderr)
    routes = "POST /generate, POST /check, GET /health" if hasattr(served, "generate") else "POST /check, GET /health"
    print(f"patronus serve: http://{args.host}:{sock.getsockname()[1]} ({routes})", file=sys.stderr)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits on startup failure; a failure is exit 2 here, never 1
        raise RuntimeError(f"the server did not start (uvicorn exit {exc.code})") from None
    finally:
        sock.close()
    return 0 if server.started else 2


def guarded_generator(args: argparse.Namespace):
    """The guarded generator of a BAIT report (``None`` for any other report: the encoder monitors); the
    options that belong to the other kind are refused."""
    from ...monitor.build import build_guarded_generator, is_bait_report, read_report
    from ...monitor.generation_guard import MAX_NEW_TOKENS
    from ...monitor.model import MAX_TEXT_CHARS

    bait = args.scan_report is not None and not args.no_monitor and is_bait_report(read_report(args.scan_report))
    guard_options = [o for o, v in (("--guard-action", args.guard_action), ("--max-new-tokens", args.max_new_tokens))
                     if v is not None]
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= 4096:
        raise ValueError(f"--max-new-tokens must be in 1..4096, got {args.max_new_tokens}")
    if not bait:
        if guard_options:
            raise ValueError(f"{', '.join(guard_options)} applies to a BAIT scan report only "
                             "(patronus scan --method bait)")
        return None
    foreign = [o for o, v in (("--bank", args.bank), ("--no-report-bank", args.no_report_bank),
                              ("--threshold", args.threshold)) if v not in (None, False)]
    if foreign:
        raise ValueError(f"{', '.join(foreign)} applies to an encoder's scan report, not to a BAIT report "
                         "(its guard is --guard-action)")
    return build_guarded_generator(args.model, args.scan_report, action=args.guard_action or "reject",
                                   max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None
                                   else MAX_NEW_TOKENS, device=args.device, allow_pickle=args.allow_pickle,
                                   max_chars=args.max_chars if args.max_chars is not None else MAX_TEXT_CHARS)


def listens_everywhere(host: str) -> bool:
    """Whether ``host`` is the unspecified address (0.0.0.0, ::, or empty): every interface of the machine."""
    import ipaddress

    if not host.strip():
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:   # a host name
        return False


def listen_socket(host: str, port: int):
    """A bound socket for ``host:port`` (an address in use is an error naming it, before uvicorn starts)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock
