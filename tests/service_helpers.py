"""The real service in a test: an app served by uvicorn (as ``patronus serve`` runs it) on a free 127.0.0.1 port
in a background thread, called with a real HTTP client (http.client); shared by the service tests.

    from service_helpers import HOST, Server

    with Server(create_app(checker)) as server:
        status, body = server.check({"text": "..."})
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn

from patronus_ext.monitor.service import server_config

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


class Server:
    """An app served by uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app, **config):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(server_config(app, **config))   # as patronus serve runs it
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                chunked: bool = False) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else {}
        finally:
            conn.close()

    def check(self, payload) -> tuple[int, dict]:
        return self.request("POST", "/check", json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def generate(self, payload) -> tuple[int, dict]:
        return self.request("POST", "/generate", json.dumps(payload).encode(), {"Content-Type": "application/json"})


@contextlib.contextmanager
def serve_process(*options: str, start_s: float = 120):
    """``patronus serve OPTIONS --port P`` as a user starts it, in its own Python; yields ``(port, health)``
    once ``GET /health`` answers, and stops the process at the end."""
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "patronus_ext.cli", "serve", *options, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + start_s
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"patronus serve did not come up in {start_s:.0f} s"
            try:
                health = get_json(port, "/health")
                break
            except OSError:
                time.sleep(0.25)
        yield port, health
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def post_json(port: int, path: str, payload) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()
