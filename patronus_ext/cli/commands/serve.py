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
                    "Concurrent requests are batched into one forward. Needs the 'serve' extra "
                    "(pip install 'patronus_ext[serve]').")
    add_monitor_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--no-monitor", action="store_true", help="serve the plain model with no monitoring (a "
                   "baseline: same responses, flagged always false); --scan-report/--bank are then not needed")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-batch", type=int, default=32, help="texts per forward across requests (default 32)")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="how long a forward waits for more "
                   "requests to batch (default 2 ms)")
    add_run_options(p, seed_default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ...monitor.service import create_app
    except ImportError as exc:
        raise RuntimeError(f"patronus serve needs FastAPI and uvicorn: pip install 'patronus_ext[serve]' ({exc})") \
            from None
    from ._monitoring import build_served

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    served = build_served(args, monitor=not args.no_monitor)
    app = create_app(served, max_texts=args.max_texts, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                     batch_window_ms=args.batch_window_ms)
    sock = listen_socket(args.host, args.port)
    config = uvicorn.Config(app, host=args.host, port=sock.getsockname()[1],
                            log_level="info" if args.verbose else "warning", access_log=bool(args.verbose))
    server = uvicorn.Server(config)
    print(f"patronus serve: http://{args.host}:{sock.getsockname()[1]} (POST /check, GET /health)", file=sys.stderr)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits on startup failure; a failure is exit 2 here, never 1
        raise RuntimeError(f"the server did not start (uvicorn exit {exc.code})") from None
    finally:
        sock.close()
    return 0 if server.started else 2


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
