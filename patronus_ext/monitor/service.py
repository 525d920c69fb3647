"""The monitored model as an HTTP JSON service (``patronus serve``), on FastAPI (ASGI) and uvicorn.

    POST /check  {"text": "..."}          -> one decision {"flagged", "action", "reasons", "text_out", ...}
    POST /check  {"texts": ["...", ...]}  -> {"decisions": [...]}
    GET  /health                          -> {"status": "ok", "model", "triggers", "bank", "action", ...}

Concurrent requests are micro-batched: every request puts its texts on one
queue; a single worker takes what is waiting (up to ``max_batch`` texts, after
waiting at most ``batch_window_ms`` for more) and runs one ``check`` — one
forward — for all of them in a worker thread, so the event loop keeps
accepting requests while the model runs.  Under load the batch grows by itself
(requests that arrive during a forward share the next one); a lone request
waits at most the window.

Limits and errors (the server answers and keeps serving):

* 413: a body over ``max_body_bytes`` (declared or streamed);
* 400: a body that is not UTF-8 or not JSON;
* 422: a JSON body that is not an object with exactly one of ``"text"`` (a
  string) and ``"texts"`` (a non-empty list of at most ``max_texts`` strings),
  or a text that cannot be served (empty, too long, NUL, lone surrogate); the
  body's ``"detail"`` says which and why (``"errors"`` lists every bad item);
* 503: more than ``max_queue`` texts already waiting;
* 500: the model failed (the message says how); the worker goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from typing import Any, Callable, Sequence

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the monitoring service needs FastAPI and uvicorn: pip install 'patronus_ext[serve]'") from exc

from ..core.validation import check_int, check_range
from .build import describe, json_safe, text_problem
from .model import MAX_TEXT_CHARS, Decision

log = logging.getLogger(__name__)

#: Defaults: texts per request, request body size, texts per forward, texts waiting, batching window.
MAX_TEXTS = 64
MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 32
MAX_QUEUE = 1024
BATCH_WINDOW_MS = 2.0


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and a message (and per-item errors)."""

    def __init__(self, status: int, detail: str, errors: list[dict] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors


class MicroBatcher:
    """One queue, one worker: concurrent requests' texts share one ``check`` call (one forward)."""

    def __init__(self, checker: Callable[[Sequence[str]], list[Decision]], *, max_batch: int = MAX_BATCH,
                 window_s: float = BATCH_WINDOW_MS / 1000, max_queue: int = MAX_QUEUE):
        self.checker = checker
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.waiting = 0                      # texts queued, not yet taken by the worker
        self.batches = 0                      # forwards run (for /health and the benchmark)
        self.texts = 0
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future]] = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="patronus-check")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> list[Decision]:
        if self.waiting + len(texts) > self.max_queue:
            raise RequestError(503, f"server busy: {self.waiting} texts already waiting (limit {self.max_queue}); "
                               "retry later")
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(texts)
        await self._queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: tuple[list[str], asyncio.Future] | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            jobs = [first]
            size = len(first[0])
            deadline = loop.time() + self.window_s
            while size < self.max_batch:
                try:
                    if self._queue.empty() and self.window_s > 0:
                        job = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                    else:
                        job = self._queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(job[0]) > self.max_batch:
                    carry = job           # the next batch starts with it; a request is never split
                    break
                jobs.append(job)
                size += len(job[0])
            self.waiting -= size          # a carried request still counts as waiting
            texts = [t for job_texts, _ in jobs for t in job_texts]
            try:
                decisions = await loop.run_in_executor(self._executor, self.checker, texts)
            except Exception as exc:  # noqa: BLE001 - the requests get a 500 naming it; the worker goes on
                log.exception("check failed on a batch of %d texts", len(texts))
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(RuntimeError(f"the model failed: {type(exc).__name__}: {exc}"))
                continue
            self.batches += 1
            self.texts += len(texts)
            offset = 0
            for job_texts, future in jobs:
                if not future.done():   # a client that went away leaves a cancelled future
                    future.set_result(decisions[offset:offset + len(job_texts)])
                offset += len(job_texts)


def create_app(checker, *, max_texts: int = MAX_TEXTS, max_body_bytes: int = MAX_BODY_BYTES,
               batch_window_ms: float = BATCH_WINDOW_MS, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE,
               max_chars: int | None = None, info: dict[str, Any] | None = None) -> FastAPI:
    """The service app around ``checker`` (a :class:`MonitoredModel` or :class:`PlainModel`; anything
    with ``check(texts) -> [Decision]``).  ``info`` (default :func:`describe`) is what ``/health`` shows."""
    check_int("max_texts", max_texts)
    check_int("max_body_bytes", max_body_bytes)
    check_int("max_batch", max_batch)
    check_int("max_queue", max_queue)
    check_range("batch_window_ms", batch_window_ms, 0.0, 10_000.0)
    if max_queue < max(max_batch, max_texts):
        raise ValueError(f"max_queue ({max_queue}) must hold at least one full request and one batch")
    if max_chars is None:
        max_chars = getattr(checker, "max_chars", MAX_TEXT_CHARS)
    check = checker.check if hasattr(checker, "check") else checker
    if info is None and not hasattr(checker, "adapter"):
        info = {"model": getattr(checker, "__name__", type(checker).__name__)}
    facts = dict(info) if info is not None else describe(checker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = MicroBatcher(check, max_batch=max_batch, window_s=batch_window_ms / 1000,
                                         max_queue=max_queue)
        app.state.batcher.start()
        try:
            yield
        finally:
            await app.state.batcher.stop()

    app = FastAPI(title="patronus monitor", description="Backdoor-monitored model serving (Patronus / LMSanitator)",
                  lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors:
            body["errors"] = exc.errors
        return JSONResponse(body, status_code=exc.status)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        batcher: MicroBatcher = request.app.state.batcher
        return json_safe({"status": "ok", **facts,
                          "limits": {"max_texts": max_texts, "max_body_bytes": max_body_bytes, "max_batch": max_batch,
                                     "max_chars": max_chars, "batch_window_ms": batch_window_ms},
                          "served": {"texts": batcher.texts, "batches": batcher.batches, "waiting": batcher.waiting}})

    @app.post("/check")
    async def check_texts(request: Request) -> JSONResponse:
        payload = parse_body(await read_body(request, max_body_bytes))
        single, texts = request_texts(payload, max_texts, max_chars)
        try:
            decisions = await request.app.state.batcher.submit(texts)
        except RuntimeError as exc:
            raise RequestError(500, str(exc)) from exc
        out = [json_safe(d.to_dict()) for d in decisions]
        return JSONResponse(out[0] if single else {"decisions": out})

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise RequestError(413, f"request body of {size} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes) -> Any:
    if not body.strip():
        raise RequestError(400, 'empty body: send a JSON object {"text": "..."} or {"texts": ["...", ...]}')
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def request_texts(payload: Any, max_texts: int, max_chars: int) -> tuple[bool, list[str]]:
    """``(single, texts)`` of a /check body, or a 422 saying what is wrong."""
    if not isinstance(payload, dict):
        raise RequestError(422, f'the body must be a JSON object {{"text": ...}} or {{"texts": [...]}}, '
                                f"got {type(payload).__name__}")
    keys = {"text", "texts"} & payload.keys()
    if len(keys) != 1:
        raise RequestError(422, 'the body needs exactly one of "text" (a string) and "texts" (a list of strings)'
                           + (f"; got fields {sorted(payload)[:10]}" if not keys else "; got both"))
    if "text" in payload:
        problem = text_problem(payload["text"], max_chars)
        if problem is not None:
            raise RequestError(422, f'"text": {problem}')
        return True, [payload["text"]]
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f'"texts" must be a list of strings, got {type(texts).__name__}')
    if not texts:
        raise RequestError(422, '"texts" is empty')
    if len(texts) > max_texts:
        raise RequestError(422, f'"texts" holds {len(texts)} items; the limit is {max_texts} per request')
    errors = [{"index": i, "error": p} for i, p in ((i, text_problem(t, max_chars)) for i, t in enumerate(texts))
              if p is not None]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RequestError(422, f'"texts"[{first["index"]}]: {first["error"]}{more}', errors)
    return False, texts
