"""``patronus serve --scan-report scan.json --model MODEL``: the monitored model as an HTTP JSON service."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ._monitoring import add_monitor_options
    from ._options import add_run_options

    p = subparsers.add_parser(
        "serve", help="serve the monitored model over HTTP (POST /check, GET /health)",
        description="POST /check with {\"text\": ...} returns one decision (flagged, action, reasons, text_out); "
                    "with {\"texts\": [...]} returns {\"decisions\": [...]}. GET /health describes what is served. "
                    "Concurrent requests are batched into one forward; a request the model fails on fails alone. "
                    "Only Content-Type application/json is accepted (415 otherwise). Needs the 'serve' extra "
                    "(pip install 'patronus_ext[serve]').")
    add_monitor_options(p)
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
    print(f"patronus serve: http://{args.host}:{sock.getsockname()[1]} (POST /check, GET /health)", file=sys.stderr)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits on startup failure; a failure is exit 2 here, never 1
        raise RuntimeError(f"the server did not start (uvicorn exit {exc.code})") from None
    finally:
        sock.close()
    return 0 if server.started else 2


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
