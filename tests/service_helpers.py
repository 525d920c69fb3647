"""The real service in a test: an app served by uvicorn (as ``patronus serve`` runs it) on a free 127.0.0.1 port
in a background thread, called with a real HTTP client (http.client); shared by the service tests.

    from service_helpers import HOST, Server

    with Server(create_app(checker)) as server:
        status, body = server.check({"text": "..."})
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import uvicorn

from patronus_ext.monitor.service import server_config

HOST = "127.0.0.1"


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
