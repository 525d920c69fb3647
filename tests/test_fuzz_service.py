"""Fuzzing ``patronus serve``: random, adversarial and almost-valid bodies (the stream fuzz's kinds of lines,
and ``"texts"`` lists) posted by four concurrent keep-alive clients over real HTTP to the real uvicorn server
running the service as ``patronus serve`` does.  Every answer is JSON; every refusal has a ``"detail"``; no
5xx but a model failure, and that only for the request holding the text the model fails on (concurrent
requests share micro-batches); a valid request gets its own decisions; the server keeps serving.  At least
2,000 bodies per run, in seconds (hypothesis draws a few bodies itself and the seed of a generator for the
rest)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import random

from hypothesis import given
from hypothesis import strategies as st

from conftest import require_test_extra

require_test_extra("fastapi")
require_test_extra("uvicorn")

from patronus_ext.monitor.build import text_problem
from patronus_ext.monitor.service import create_app

from test_fuzz_monitor import FAILS_THE_MODEL, MAX_CHARS, cheap_checker, fuzz, lines, requests, seeded_lines
from test_service import HOST, Server

MAX_TEXTS = 8
MAX_BODY_BYTES = 64 * 1024
CLIENTS = 4
#: What a client may declare; only the first two are JSON.
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", None,
                 "application/x-www-form-urlencoded", "application/json; charset=iso-8859-1"]


def seeded_bodies(rng: random.Random, count: int) -> list[tuple[bytes, str | None, dict | None]]:
    """``(body, content type, the request when the body is a valid JSON request)``."""
    data, sent = seeded_lines(rng, count)
    known = dict(sent)
    bodies = []
    for index, body in enumerate(data):
        request = known.get(index)
        if request is not None and rng.random() < 0.3:   # a batch request instead
            request = {"texts": [rng.choice(["a cf b", "clean words", "", FAILS_THE_MODEL, "x" * (MAX_CHARS + 1)])
                                 for _ in range(rng.randint(0, MAX_TEXTS + 2))]}
            body = json.dumps(request).encode()
        content_type = CONTENT_TYPES[0] if rng.random() < 0.85 else rng.choice(CONTENT_TYPES)
        bodies.append((body, content_type, request))
    return bodies


def expected(request: dict) -> tuple[int, str | None]:
    """The status a valid JSON request gets, and a part of its detail."""
    single = "text" in request
    texts = [request["text"]] if single else request["texts"]
    if not single and not texts:
        return 422, "empty"
    if len(texts) > MAX_TEXTS:
        return 422, f"limit is {MAX_TEXTS}"
    if any(text_problem(t, MAX_CHARS) for t in texts):
        return 422, None
    if any(FAILS_THE_MODEL in t for t in texts):
        return 500, "the model failed: IndexError"
    return 200, None


class Client:
    """One keep-alive connection, reopened whenever the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, content_type: str | None) -> tuple[int, object]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            self.conn.request("POST", "/check", body, headers)
            response = self.conn.getresponse()
            data = response.read()
        except (ConnectionError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, json.loads(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def check_answer(body: bytes, content_type: str | None, request: dict | None, status: int, answer) -> None:
    assert status < 500 or status == 500 and FAILS_THE_MODEL.encode() in body, (status, answer, body[:200])
    if status != 200:
        assert isinstance(answer, dict) and isinstance(answer["detail"], str) and answer["detail"], answer
    if content_type not in CONTENT_TYPES[:2]:
        assert status == 415, (status, answer)
        return
    assert status in (200, 400, 413, 422, 500), (status, answer)
    if len(body) > MAX_BODY_BYTES:
        assert status == 413
    if request is None:
        return
    want, detail = expected(request)
    assert status == want, (status, answer, request)
    if detail is not None:
        assert detail in answer["detail"], answer
    if status == 200:
        decisions = [answer] if "text" in request else answer["decisions"]
        texts = [request["text"]] if "text" in request else request["texts"]
        assert [d["text_out"] for d in decisions] == texts
        assert [d["flagged"] for d in decisions] == ["cf" in t.split() for t in texts]


def test_fuzz_the_service_over_http():
    app = create_app(cheap_checker, info={"model": "cheap"}, max_texts=MAX_TEXTS, max_body_bytes=MAX_BODY_BYTES,
                     max_chars=MAX_CHARS, batch_window_ms=1.0)
    counted = []
    with Server(app) as server, concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        clients = [Client(server.port) for _ in range(CLIENTS)]

        def send(client: Client, share: list) -> list:
            return [(body, content_type, request, *client.post(body, content_type))
                    for body, content_type, request in share]

        @fuzz(25)
        @given(st.integers(0, 2**32 - 1), st.lists(st.one_of(lines, requests), min_size=4, max_size=10))
        def run(seed, items):
            bodies = seeded_bodies(random.Random(seed), 140)
            bodies += [(json.dumps(i).encode("utf-8", "surrogatepass"), CONTENT_TYPES[0], i) if isinstance(i, dict)
                       else (i, CONTENT_TYPES[0], None) for i in items]
            shares = [bodies[n::CLIENTS] for n in range(CLIENTS)]
            for answers in pool.map(send, clients, shares):
                for answer in answers:
                    check_answer(*answer)
            counted.append(len(bodies))

        try:
            run()
        finally:
            for client in clients:
                client.close()
        status, health = server.request("GET", "/health")
        assert status == 200 and health["served"]["waiting"] == 0
        assert server.check({"text": "still serving"})[0] == 200
    assert sum(counted) >= 3000
