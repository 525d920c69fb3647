"""``patronus serve``: the real uvicorn server on 127.0.0.1, called with a real HTTP client (http.client):
single and batch /check, /health, every malformed request answered 4xx with a clear message while the
server keeps serving, concurrent clients batched into shared forwards with the direct decisions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import logging
import socket
import time

import pytest

from conftest import require_test_extra

require_test_extra("fastapi")
uvicorn = require_test_extra("uvicorn")

from patronus_ext.cli import main
from patronus_ext.monitor.build import build_monitored_model, build_plain_model
from patronus_ext.monitor.service import MicroBatcher, ModelFailure, create_app

import tiny_models  # noqa: E402
from service_helpers import HOST, Server, post_json, serve_process  # noqa: E402

LIMITS = {"max_texts": 8, "max_body_bytes": 4096, "max_chars": 300}


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    planted, report, payload = tiny_models.shared_scan("por")
    found = [t["text"] for t in payload["triggers"]]
    clean = [" ".join(t.split()[:10]) for t in tiny_models.tiny_corpus(8)]
    poisoned = [f"{t.split()[0]} {found[i % len(found)]} {' '.join(t.split()[1:])}" for i, t in enumerate(clean)]
    return str(planted.out_dir), report, clean, poisoned


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
    with serve_process("--model", model, "--scan-report", str(report), "--device", "cpu", "--action",
                       "reject") as (port, health):
        assert health["status"] == "ok" and health["action"] == "reject"
        decisions = post_json(port, "/check", {"texts": [clean[0], poisoned[0]]})["decisions"]
        assert [(d["flagged"], d["action"]) for d in decisions] == [(False, "pass"), (True, "reject")]
        assert decisions[1]["text_out"] is None


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


# -- fail closed: one bad request never hurts another ------------------------------------------------------
def _passing(texts):
    from patronus_ext.monitor import Decision

    return [Decision(False, "pass", [], t) for t in texts]


@pytest.fixture(scope="module")
def cheap_server():
    """The service with the default limits around a checker that costs nothing (the model is not the point)."""
    with Server(create_app(_passing, info={"model": "cheap"})) as running:
        yield running


HOSTILE_BODIES = {
    "deep_array": (b"[" * 100_000, "nested deeper than 64"),
    "deep_object": (b'{"text": "a", "x": ' + b'{"a": ' * 100_000, "nested deeper than 64"),
    "huge_integer": (b'{"text": "a", "n": ' + b"9" * 5000 + b"}", "number of 5000 characters"),
    "long_float": (b'{"text": "a", "x": -1.' + b"5" * 200 + b"e10}", "number of 206 characters"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
def test_a_body_beyond_the_parsing_bounds_is_a_400_with_detail(cheap_server, case):
    body, message = HOSTILE_BODIES[case]
    status, answer = cheap_server.request("POST", "/check", body, {"Content-Type": "application/json"})
    assert status == 400 and message in answer["detail"]
    assert cheap_server.check({"text": "still serving"}) == (200, {"flagged": False, "action": "pass", "reasons": [],
                                                                   "text_out": "still serving"})


def _concurrently(server: Server, payloads: list) -> list[tuple[int, dict]]:
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(server.check, payloads))


def test_a_request_that_fails_the_model_fails_alone(monitored, subject):
    _, _, clean, poisoned = subject
    calls = []

    def fragile(texts):
        calls.append(len(texts))
        if any("explode" in t for t in texts):
            raise IndexError("index out of range in self")
        return monitored.check(texts)

    # A window long enough that the four requests share one forward.
    with Server(create_app(fragile, info={"model": "fragile"}, batch_window_ms=1000)) as running:
        answers = _concurrently(running, [{"text": clean[0]}, {"text": "please explode"}, {"text": poisoned[0]},
                                          {"texts": clean[1:3]}])
        health = running.request("GET", "/health")[1]
    assert calls[0] > 1, f"the requests did not share a forward ({calls}): the test proves nothing"
    (s0, a0), (s1, a1), (s2, a2), (s3, a3) = answers
    assert s1 == 500 and "the model failed: IndexError: index out of range in self" in a1["detail"]
    assert (s0, a0["action"], s2, a2["action"], s3) == (200, "pass", 200, "flag", 200)
    assert [d["text_out"] for d in a3["decisions"]] == clean[1:3]
    assert health["served"]["waiting"] == 0


def test_the_batcher_checks_each_request_of_a_failed_batch_alone():
    calls = []

    def fragile(texts):
        calls.append(list(texts))
        if "explode" in texts:
            raise IndexError("index out of range in self")
        return [] if "miscount" in texts else _passing(texts)

    async def scenario():
        batcher = MicroBatcher(fragile, window_s=0.05)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(texts) for texts in (["a"], ["explode"], ["b", "c"],
                                                                              ["miscount"])),
                                        return_exceptions=True), batcher
        finally:
            await batcher.stop()

    (a, exploded, bc, miscounted), batcher = asyncio.run(scenario())
    assert calls == [["a", "explode", "b", "c", "miscount"], ["a"], ["explode"], ["b", "c"], ["miscount"]]
    assert [d.text_out for d in a] == ["a"] and [d.text_out for d in bc] == ["b", "c"]
    assert isinstance(exploded, ModelFailure)
    assert str(exploded) == "the model failed: IndexError: index out of range in self"
    assert isinstance(miscounted, ModelFailure) and "returned 0 decisions for 1 text" in str(miscounted)
    assert (batcher.batches, batcher.texts, batcher.waiting) == (2, 3, 0)


def test_a_text_the_real_model_fails_on_fails_alone(subject):
    """A token the tokenizer knows but the model's embedding table does not: an IndexError in the forward."""
    model, report, clean, poisoned = subject
    served = build_monitored_model(model, report, device="cpu")
    served.tokenizer.add_tokens(["zzqqx"])
    with Server(create_app(served, batch_window_ms=1000)) as running:
        answers = _concurrently(running, [{"text": clean[0]}, {"text": "a zzqqx b"}, {"text": poisoned[0]}])
        assert running.request("GET", "/health")[1]["served"]["batches"] >= 2
    assert answers[1][0] == 500 and "IndexError" in answers[1][1]["detail"]
    assert [(s, a.get("action")) for s, a in (answers[0], answers[2])] == [(200, "pass"), (200, "flag")]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                                          "application/jsonx", "text/json"])
def test_only_json_bodies_are_accepted(cheap_server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, answer = cheap_server.request("POST", "/check", b'{"text": "hello"}', headers)
    assert status == 415 and "application/json" in answer["detail"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8", "application/json ; charset=\"utf8\""])
def test_json_with_or_without_a_utf8_charset_is_accepted(cheap_server, content_type):
    status, answer = cheap_server.request("POST", "/check", b'{"text": "hello"}', {"Content-Type": content_type})
    assert status == 200 and answer["text_out"] == "hello"


def test_no_cors_headers_without_cors(cheap_server):
    origin = {"Origin": "http://evil.example"}
    conn = http.client.HTTPConnection(HOST, cheap_server.port, timeout=10)
    try:
        conn.request("POST", "/check", b'{"text": "hi"}', {**origin, "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert not [h for h in response.getheaders() if h[0].lower().startswith("access-control-")]
        conn.request("OPTIONS", "/check", headers={**origin, "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "content-type"})
        response = conn.getresponse()
        response.read()
        assert response.status == 405
        assert not [h for h in response.getheaders() if h[0].lower().startswith("access-control-")]
    finally:
        conn.close()


def test_cors_only_for_the_one_origin_given():
    origin = "http://localhost:3000"
    with Server(create_app(_passing, info={"model": "cheap"}, cors_origin=origin)) as running:
        conn = http.client.HTTPConnection(HOST, running.port, timeout=10)
        try:
            conn.request("OPTIONS", "/check", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "content-type"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("access-control-allow-origin") == origin
            assert "POST" in response.getheader("access-control-allow-methods")
            conn.request("POST", "/check", b'{"text": "hi"}', {"Origin": origin, "Content-Type": "application/json"})
            response = conn.getresponse()
            assert json.loads(response.read())["text_out"] == "hi"
            assert response.getheader("access-control-allow-origin") == origin
            conn.request("POST", "/check", b'{"text": "hi"}', {"Origin": "http://evil.example",
                                                               "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.getheader("access-control-allow-origin") is None
            conn.request("OPTIONS", "/check", headers={"Origin": "http://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
            response = conn.getresponse()
            response.read()
            assert response.status >= 400 and response.getheader("access-control-allow-origin") is None
        finally:
            conn.close()
    for bad in ("*", "localhost:3000", "http://localhost:3000/app", "ftp://x", ""):
        with pytest.raises(ValueError, match="origin"):
            create_app(_passing, cors_origin=bad)


def _raw_request(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(data)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


HEAD = b"POST /check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"


@pytest.fixture(scope="module")
def strict_server():
    """Half-second read timeout and keep-alive, so stalled clients are seen to be cut off quickly."""
    with Server(create_app(_passing, info={"model": "cheap"}, read_timeout_s=0.5), keep_alive_s=0.5) as running:
        yield running


def test_a_stalled_body_gets_408_and_the_connection_closes(strict_server):
    sock = _raw_request(strict_server.port, HEAD + b'{"text": "stalled')
    try:
        data, seconds = _read_until_closed(sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b"connection: close" in data.lower()
    assert b"not received within 0.5 s" in data
    assert seconds < 5
    assert strict_server.check({"text": "still serving"})[0] == 200


@pytest.mark.parametrize("partial", [b"POST /che", HEAD[:40], b""])
def test_a_stalled_or_silent_connection_is_closed(strict_server, partial):
    sock = _raw_request(strict_server.port, partial)
    try:
        data, seconds = _read_until_closed(sock)
    finally:
        sock.close()
    assert seconds < 5
    if partial:
        assert data.startswith(b"HTTP/1.1 408 ") and b"request head not received within 0.5 s" in data
    else:
        assert data == b""
    assert strict_server.check({"text": "still serving"})[0] == 200


def test_an_idle_keep_alive_connection_is_closed(strict_server):
    conn = http.client.HTTPConnection(HOST, strict_server.port, timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        start = time.monotonic()
        assert conn.sock.recv(1) == b""      # the server closed it
        assert time.monotonic() - start < 5
    finally:
        conn.close()


def test_a_slow_but_steady_client_is_served(strict_server):
    body = b'{"text": "slow and steady"}'
    head = HEAD.replace(b"Content-Length: 100", b"Content-Length: %d\r\nConnection: close" % len(body))
    sock = _raw_request(strict_server.port, head + body[:10])
    try:
        time.sleep(0.2)
        sock.sendall(body[10:])
        response, _ = _read_until_closed(sock)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 200 ") and b"slow and steady" in response


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_a_client_that_disconnects_mid_body_is_one_log_line(cheap_server):
    handler = _Records()
    loggers = [logging.getLogger("patronus_ext.monitor.service"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        sock = _raw_request(cheap_server.port, HEAD + b'{"text": "gone')
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 5
        while not handler.records and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)                   # anything else it would log
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    lines = [r for r in handler.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "disconnected before its request body was complete" in lines[0].getMessage()
    assert lines[0].exc_info is None
    assert cheap_server.check({"text": "still serving"})[0] == 200


def test_serve_warns_when_listening_on_all_interfaces(subject, monkeypatch, capsys):
    from patronus_ext.cli.commands.serve import listens_everywhere

    model, report, _, _ = subject
    ran = []

    def fake_run(self, sockets=None):
        ran.append(self.config)
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    assert main(["serve", "--model", model, "--scan-report", str(report), "--device", "cpu", "--port", "0",
                 "--host", "0.0.0.0", "--read-timeout", "3", "--keep-alive", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: listening on all interfaces (0.0.0.0)") == 1
    assert ran[0].timeout_keep_alive == 2 and ran[0].http.read_timeout_s == 3
    assert main(["serve", "--model", model, "--scan-report", str(report), "--device", "cpu", "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert [listens_everywhere(h) for h in ("0.0.0.0", "::", "[::]", "", "127.0.0.1", "::1", "localhost")] == [
        True, True, True, True, False, False, False]
    assert main(["serve", "--model", model, "--scan-report", str(report), "--cors", "*"]) == 2
    assert "no wildcard" in capsys.readouterr().err


def test_keep_alive_answers_are_not_held_back(cheap_server):
    """Without TCP_NODELAY each answer's body waited for the client's delayed ACK (~40 ms per request)."""
    conn = http.client.HTTPConnection(HOST, cheap_server.port, timeout=10)
    try:
        conn.request("GET", "/health")
        conn.getresponse().read()
        start = time.monotonic()
        for _ in range(20):
            conn.request("POST", "/check", b'{"text": "hi"}', {"Content-Type": "application/json"})
            assert conn.getresponse().read()
        assert (time.monotonic() - start) / 20 < 0.02
    finally:
        conn.close()
