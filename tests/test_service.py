"""``patronus serve``: the real uvicorn server on 127.0.0.1, called with a real HTTP client (http.client):
single and batch /check, /health, every malformed request answered 4xx with a clear message while the
server keeps serving, concurrent clients batched into shared forwards with the direct decisions."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import require_test_extra

require_test_extra("fastapi")
uvicorn = require_test_extra("uvicorn")

from patronus_ext.cli import main
from patronus_ext.monitor.build import build_monitored_model, build_plain_model
from patronus_ext.monitor.service import create_app

import tiny_models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LIMITS = {"max_texts": 8, "max_body_bytes": 4096, "max_chars": 300}


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    planted, report, payload = tiny_models.shared_scan("por")
    found = [t["text"] for t in payload["triggers"]]
    clean = [" ".join(t.split()[:10]) for t in tiny_models.tiny_corpus(8)]
    poisoned = [f"{t.split()[0]} {found[i % len(found)]} {' '.join(t.split()[1:])}" for i, t in enumerate(clean)]
    return str(planted.out_dir), report, clean, poisoned


class Server:
    """An app served by uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
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


@pytest.fixture(scope="module")
def monitored(subject):
    model, report, _, _ = subject
    return build_monitored_model(model, report, device="cpu", max_chars=LIMITS["max_chars"])


@pytest.fixture(scope="module")
def server(monitored):
    with Server(create_app(monitored, **LIMITS)) as running:
        yield running


def _fields(decision: dict) -> dict:
    return {k: decision[k] for k in ("flagged", "action", "reasons", "text_out")}


def test_health_describes_what_is_served(server, monitored, subject):
    status, body = server.request("GET", "/health")
    assert status == 200
    assert body["status"] == "ok" and body["monitor"] is True
    assert body["model"] == subject[0] and body["action"] == "flag"
    assert body["triggers"] == len(monitored.input_monitor.triggers) >= 1
    assert body["bank"] == len(monitored.output_monitor.bank) >= 1
    assert body["limits"]["max_texts"] == 8 and body["limits"]["max_body_bytes"] == 4096


def test_single_and_batch_check_give_the_direct_decisions(server, monitored, subject):
    _, _, clean, poisoned = subject
    texts = clean[:3] + poisoned[:3]
    expected = [d.to_dict() for d in monitored.check(texts)]
    for text, want in zip(texts, expected):
        status, body = server.check({"text": text})
        assert status == 200 and _fields(body) == _fields(want)
    status, body = server.check({"texts": texts})
    assert status == 200 and [_fields(d) for d in body["decisions"]] == [_fields(d) for d in expected]
    assert [d["flagged"] for d in body["decisions"]] == [False] * 3 + [True] * 3
    assert all(d["text_out"] == t for d, t in zip(body["decisions"], texts))


BAD_REQUESTS = {
    "not_json": (b"{not json", 400, "not JSON"),
    "not_utf8": (b'{"text": "caf\xe9"}', 400, "UTF-8"),
    "empty_body": (b"", 400, "empty body"),
    "not_an_object": (b'["a", "b"]', 422, "JSON object"),
    "missing_text": (b'{"txt": "hello"}', 422, 'exactly one of "text"'),
    "both_fields": (b'{"text": "a", "texts": ["b"]}', 422, "got both"),
    "text_not_string": (b'{"text": 7}', 422, "must be a string"),
    "empty_text": (b'{"text": "   "}', 422, "empty"),
    "lone_surrogate": (b'{"text": "\\ud800 x"}', 422, "surrogate"),
    "text_too_long": (json.dumps({"text": "w " * 200}).encode(), 422, "limit is 300"),
    "texts_not_list": (b'{"texts": "abc"}', 422, "list of strings"),
    "texts_empty": (b'{"texts": []}', 422, "empty"),
    "texts_bad_item": (b'{"texts": ["fine", 3, ""]}', 422, '"texts"[1]'),
    "too_many_texts": (json.dumps({"texts": ["a b"] * 9}).encode(), 422, "limit is 8"),
    "body_too_big": (json.dumps({"text": "x" * 5000}).encode(), 413, "4096"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, subject, case):
    body, want_status, message = BAD_REQUESTS[case]
    status, answer = server.request("POST", "/check", body, {"Content-Type": "application/json"})
    assert status == want_status, answer
    assert message in answer["detail"]
    if case == "texts_bad_item":
        assert [e["index"] for e in answer["errors"]] == [1, 2]
    status, answer = server.check({"text": subject[2][0]})
    assert status == 200 and answer["action"] == "pass"


def test_streamed_oversized_body_is_refused(server, subject):
    chunks = (b'{"text": "' + b"y" * 1000 for _ in range(6))   # chunked: no Content-Length to judge by
    status, answer = server.request("POST", "/check", chunks, {"Content-Type": "application/json"}, chunked=True)
    assert status == 413 and "4096" in answer["detail"]
    assert server.check({"text": subject[2][1]})[0] == 200


def test_wrong_method_and_path(server):
    assert server.request("GET", "/check")[0] == 405
    assert server.request("POST", "/nowhere", b"{}")[0] == 404
    assert server.request("GET", "/health")[0] == 200


def test_concurrent_clients_share_forwards_and_get_the_direct_decisions(server, monitored, subject):
    _, _, clean, poisoned = subject
    texts = clean + poisoned
    expected = [_fields(d.to_dict()) for d in monitored.check(texts)]
    before = server.request("GET", "/health")[1]["served"]
    clients, rounds = 32, 3

    def client(n: int) -> list[tuple[int, int, dict]]:
        out = []
        for r in range(rounds):
            i = (n * 5 + r) % len(texts)
            status, body = server.check({"text": texts[i]})
            out.append((i, status, body))
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(client, n) for n in range(clients)]]
    answers = [a for result in results for a in result]
    assert len(answers) == clients * rounds
    for i, status, body in answers:
        assert status == 200 and _fields(body) == expected[i]
    after = server.request("GET", "/health")[1]["served"]
    served = after["texts"] - before["texts"]
    batches = after["batches"] - before["batches"]
    assert served == clients * rounds
    assert batches < served          # concurrent requests shared forwards
    assert after["waiting"] == 0


def test_a_model_failure_is_a_500_and_the_worker_goes_on(monitored, subject):
    def fragile(texts):
        if any("explode" in t for t in texts):
            raise RuntimeError("simulated device failure")
        return monitored.check(texts)

    with Server(create_app(fragile, info={"model": "fragile"}, batch_window_ms=0)) as running:
        status, body = running.check({"text": "please explode now"})
        assert status == 500 and "simulated device failure" in body["detail"]
        status, body = running.check({"text": subject[2][0]})
        assert status == 200 and body["action"] == "pass"
        assert running.request("GET", "/health")[1]["model"] == "fragile"


def test_without_the_monitor_the_same_shape_is_never_flagged(subject):
    model, _, clean, poisoned = subject
    with Server(create_app(build_plain_model(model, device="cpu"))) as running:
        assert running.request("GET", "/health")[1]["monitor"] is False
        status, body = running.check({"texts": clean[:2] + poisoned[:2]})
        assert status == 200
        assert [(d["flagged"], d["action"], d["reasons"]) for d in body["decisions"]] == [(False, "pass", [])] * 4
        assert [d["text_out"] for d in body["decisions"]] == clean[:2] + poisoned[:2]
        assert running.check({"text": ""})[0] == 422


def test_the_serve_command_runs_the_real_server(subject):
    model, report, clean, poisoned = subject
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "patronus_ext.cli", "serve", "--model", model, "--scan-report",
                             str(report), "--port", str(port), "--device", "cpu", "--action", "reject"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "patronus serve did not come up in 120 s"
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                conn.request("GET", "/health")
                health = json.loads(conn.getresponse().read())
                conn.close()
                break
            except OSError:
                time.sleep(0.25)
        assert health["status"] == "ok" and health["action"] == "reject"
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.request("POST", "/check", json.dumps({"texts": [clean[0], poisoned[0]]}))
        decisions = json.loads(conn.getresponse().read())["decisions"]
        conn.close()
        assert [(d["flagged"], d["action"]) for d in decisions] == [(False, "pass"), (True, "reject")]
        assert decisions[1]["text_out"] is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_setup_errors_exit_2(subject, tmp_path, capsys):
    model, report, _, _ = subject
    assert main(["serve", "--model", model, "--scan-report", str(tmp_path / "missing.json"), "--device", "cpu"]) == 2
    assert "not found" in capsys.readouterr().err
    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen(1)
    try:
        assert main(["serve", "--model", model, "--scan-report", str(report), "--device", "cpu",
                     "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen" in capsys.readouterr().err
    finally:
        busy.close()
