"""The monitored model as an HTTP JSON service (``patronus serve``), on FastAPI (ASGI) and uvicorn.

    POST /check  {"text": "..."}          -> one decision {"flagged", "action", "reasons", "text_out", ...}
    POST /check  {"texts": ["...", ...]}  -> {"decisions": [...]}
    GET  /health                          -> {"status": "ok", "model", "triggers", "bank", "action", ...}
    POST /generate {"prompt": "...", "max_new_tokens": 32}  -> {"text", "flagged", "reasons"}
                                          (a causal LM under a BAIT report: a :class:`GuardedGenerator`)

A :class:`~.generation_guard.GuardedGenerator` is served with ``/generate``
beside ``/check`` (its input side: the prompt's recovered triggers); its
answers are generated one request at a time in a worker thread (at most
``max_generate_queue`` requests waiting, else 503), each bounded by the
generator's ``max_new_tokens``.  Without a confirmed trigger in the report
``/check`` has nothing to check and answers 501.

Concurrent requests are micro-batched: every request puts its texts on one
queue; a single worker takes what is waiting (up to ``max_batch`` texts, after
waiting at most ``batch_window_ms`` for more) and runs one ``check`` — one
forward — for all of them in a worker thread, so the event loop keeps
accepting requests while the model runs.  Under load the batch grows by itself
(requests that arrive during a forward share the next one); a lone request
waits at most the window.  One request never fails another: when ``check``
fails on a batch, each of its requests is checked again on its own, and only
the request the model fails on gets the error.

The service fails closed; every refusal is JSON with a ``"detail"`` saying
why, and the server answers and keeps serving:

* 400: a body that is not UTF-8 or not JSON, or JSON beyond the parsing bounds
  (nested deeper than 64 arrays/objects, a number literal over 100 characters:
  :mod:`.bounded_json`, checked before the parser runs);
* 408: a request body not received within ``read_timeout_s`` (the connection
  closes); a request head not received within it closes the connection too
  (with a 408 when part of one arrived; :func:`server_config`);
* 413: a body over ``max_body_bytes`` (declared or streamed);
* 415: a POST whose Content-Type is not ``application/json`` (a UTF-8
  ``charset`` allowed), so a web page cannot post a cross-origin "simple"
  request (text/plain, a form) to a service on the same machine;
* 422: a JSON body that is not an object with exactly one of ``"text"`` (a
  string) and ``"texts"`` (a non-empty list of at most ``max_texts`` strings),
  or a text that cannot be served (empty, too long, NUL, lone surrogate); the
  body's ``"detail"`` says which and why (``"errors"`` lists every bad item);
  for /generate, a body that is not ``{"prompt": str}`` with an optional
  integer ``"max_new_tokens"`` within the server's cap (no other field);
* 503: more than ``max_queue`` texts already waiting;
* 500: the model failed on this request (the detail says how); the worker goes on.

No CORS header is sent unless ``cors_origin`` names the one origin allowed
(then preflight requests from it are answered).  A client that disconnects
mid-body is one log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import re
import socket
from typing import Any, Callable, Sequence

try:
    import h11
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the monitoring service needs FastAPI and uvicorn: pip install 'patronus_ext[serve]'") from exc

from ..core.validation import check_int, check_range
from .bounded_json import JSONBoundsError, loads_bounded
from .build import describe, json_safe, text_problem
from .generation_guard import GuardedGenerator
from .model import MAX_TEXT_CHARS, Decision
from .stream import decisions_for

log = logging.getLogger(__name__)

#: Defaults: texts per request, request body size, texts per forward, texts waiting, batching window.
MAX_TEXTS = 64
MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 32
MAX_QUEUE = 1024
BATCH_WINDOW_MS = 2.0
#: Defaults: seconds a client has to send a request's head, and its body; seconds an idle connection is kept.
READ_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0
#: Default: /generate requests waiting for the generation worker before the service answers 503.
MAX_GENERATE_QUEUE = 16


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and a message (and per-item errors); ``close`` ends the
    connection after the answer (a body that was not read to its end)."""

    def __init__(self, status: int, detail: str, errors: list[dict] | None = None, *, close: bool = False):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.close = close


class ModelFailure(RuntimeError):
    """The checker failed on a request (raised, or gave the wrong number of decisions)."""


class MicroBatcher:
    """One queue, one worker: concurrent requests' texts share one ``check`` call (one forward).  When that
    call fails, each request of the batch is checked on its own, so only the request that fails gets the
    error."""

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
        """The decisions for ``texts``; :class:`ModelFailure` when the model fails on them."""
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
            try:
                await self._serve(jobs)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the worker for every later request
                log.exception("the batch worker failed")
                for job in jobs:
                    self._fail(job, exc)

    async def _serve(self, jobs: list[tuple[list[str], asyncio.Future]]) -> None:
        """One forward for the batch; when it fails and the batch holds several requests, one per request."""
        texts = [t for job_texts, _ in jobs for t in job_texts]
        try:
            decisions = await self._check(texts)
        except Exception as exc:  # noqa: BLE001 - answered below: one request's failure or a retry per request
            if len(jobs) == 1:
                self._fail(jobs[0], exc)
                return
            log.warning("check failed on a batch of %d requests (%s: %s); checking each request alone",
                        len(jobs), type(exc).__name__, exc)
            for job in jobs:
                if job[1].done():     # a client that went away leaves a cancelled future
                    continue
                try:
                    decided = await self._check(job[0])
                except Exception as failure:  # noqa: BLE001 - this request's 500; the others go on
                    self._fail(job, failure)
                else:
                    job[1].set_result(decided)
            return
        offset = 0
        for job_texts, future in jobs:
            if not future.done():   # a client that went away leaves a cancelled future
                future.set_result(decisions[offset:offset + len(job_texts)])
            offset += len(job_texts)

    async def _check(self, texts: list[str]) -> list[Decision]:
        loop = asyncio.get_running_loop()
        decisions = await loop.run_in_executor(self._executor, decisions_for, self.checker, texts)
        self.batches += 1
        self.texts += len(texts)
        return decisions

    @staticmethod
    def _fail(job: tuple[list[str], asyncio.Future], exc: Exception) -> None:
        # One line, not a traceback: a client that can make the model fail at will must not flood the log.
        log.error("check failed on a request of %d texts: %s: %s", len(job[0]), type(exc).__name__, exc)
        log.debug("the failure", exc_info=exc)
        if not job[1].done():
            job[1].set_exception(ModelFailure(f"the model failed: {type(exc).__name__}: {exc}"))


class GenerationWorker:
    """``/generate``'s worker: one generation at a time in its own thread (the event loop keeps serving), at
    most ``max_waiting`` requests waiting (503 beyond)."""

    def __init__(self, generator: GuardedGenerator, max_waiting: int = MAX_GENERATE_QUEUE):
        self.generator = generator
        self.max_waiting = max_waiting
        self.waiting = 0
        self.served = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="patronus-generate")

    async def submit(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        if self.waiting >= self.max_waiting:
            raise RequestError(503, f"server busy: {self.waiting} generations already waiting (limit "
                               f"{self.max_waiting}); retry later")
        self.waiting += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.generator.generate, [prompt], max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - this request's 500; the worker goes on
            log.error("generation failed on a request: %s: %s", type(exc).__name__, exc)
            log.debug("the failure", exc_info=exc)
            raise ModelFailure(f"the model failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.waiting -= 1
        self.served += 1
        return result[0]

    def stop(self) -> None:
        self._executor.shutdown(wait=True)


def generation_request(payload: Any, generator: GuardedGenerator) -> tuple[str, int]:
    """``(prompt, max_new_tokens)`` of a /generate body, or a 422 saying what is wrong."""
    if not isinstance(payload, dict):
        raise RequestError(422, f'the body must be a JSON object {{"prompt": "...", "max_new_tokens": N}}, '
                                f"got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"prompt", "max_new_tokens"})
    if unknown:
        raise RequestError(422, f'unknown fields {unknown[:10]}: the body takes "prompt" (a string) and '
                                f'optionally "max_new_tokens" (an integer)')
    if "prompt" not in payload:
        raise RequestError(422, 'the body needs "prompt" (a string)')
    try:
        prompt = generator.check_prompt(payload["prompt"])
    except ValueError as exc:
        raise RequestError(422, f'"prompt": {exc}') from None
    try:
        steps = generator.check_max_new_tokens(payload.get("max_new_tokens"))
    except ValueError as exc:
        raise RequestError(422, f'"max_new_tokens": {exc}') from None
    return prompt, steps


def create_app(checker, *, max_texts: int = MAX_TEXTS, max_body_bytes: int = MAX_BODY_BYTES,
               batch_window_ms: float = BATCH_WINDOW_MS, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE,
               max_chars: int | None = None, read_timeout_s: float = READ_TIMEOUT_S, cors_origin: str | None = None,
               info: dict[str, Any] | None = None, max_generate_queue: int = MAX_GENERATE_QUEUE) -> FastAPI:
    """The service app around ``checker`` (a :class:`MonitoredModel` or :class:`PlainModel`; anything
    with ``check(texts) -> [Decision]``).  ``info`` (default :func:`describe`) is what ``/health`` shows.
    ``read_timeout_s`` bounds the time a request's body may take (and, through :func:`server_config`, its
    head); ``cors_origin`` is the one origin a browser may call the service from (none by default)."""
    check_int("max_texts", max_texts)
    check_int("max_body_bytes", max_body_bytes)
    check_int("max_batch", max_batch)
    check_int("max_queue", max_queue)
    check_range("batch_window_ms", batch_window_ms, 0.0, 10_000.0)
    check_range("read_timeout_s", read_timeout_s, 0.0, 3600.0, low_open=True)
    if cors_origin is not None:
        cors_origin = check_origin(cors_origin)
    if max_queue < max(max_batch, max_texts):
        raise ValueError(f"max_queue ({max_queue}) must hold at least one full request and one batch")
    if max_chars is None:
        max_chars = getattr(checker, "max_chars", MAX_TEXT_CHARS)
    check = checker.check if hasattr(checker, "check") else checker
    generator = checker if isinstance(checker, GuardedGenerator) else None
    if info is None and not hasattr(checker, "adapter") and generator is None:
        info = {"model": getattr(checker, "__name__", type(checker).__name__)}
    facts = dict(info) if info is not None else describe(checker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.batcher = MicroBatcher(check, max_batch=max_batch, window_s=batch_window_ms / 1000,
                                         max_queue=max_queue)
        app.state.batcher.start()
        app.state.generation = GenerationWorker(generator, max_generate_queue) if generator is not None else None
        try:
            yield
        finally:
            await app.state.batcher.stop()
            if app.state.generation is not None:
                app.state.generation.stop()

    app = FastAPI(title="patronus monitor", description="Backdoor-monitored model serving (Patronus / LMSanitator)",
                  lifespan=lifespan)
    app.state.read_timeout_s = read_timeout_s
    if cors_origin is not None:
        app.add_middleware(CORSMiddleware, allow_origins=[cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors:
            body["errors"] = exc.errors
        return JSONResponse(body, status_code=exc.status, headers={"Connection": "close"} if exc.close else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not a client error: the client gets a detail, never a traceback (the log has it).
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        batcher: MicroBatcher = request.app.state.batcher
        generation: GenerationWorker | None = request.app.state.generation
        if generation is not None:
            facts["generated"] = {"requests": generation.served, "waiting": generation.waiting}
        return json_safe({"status": "ok", **facts,
                          "limits": {"max_texts": max_texts, "max_body_bytes": max_body_bytes, "max_batch": max_batch,
                                     "max_chars": max_chars, "batch_window_ms": batch_window_ms,
                                     "read_timeout_s": read_timeout_s},
                          "served": {"texts": batcher.texts, "batches": batcher.batches, "waiting": batcher.waiting}})

    @app.post("/check")
    async def check_texts(request: Request) -> JSONResponse:
        require_json(request)
        payload = parse_body(await read_body(request, max_body_bytes, read_timeout_s))
        single, texts = request_texts(payload, max_texts, max_chars)
        if generator is not None and generator.input_monitor is None:
            raise RequestError(501, "/check has nothing to check here: the BAIT report confirmed no trigger, so "
                                    "only the answers are guarded; use POST /generate")
        try:
            decisions = await request.app.state.batcher.submit(texts)
        except ModelFailure as exc:
            raise RequestError(500, str(exc)) from None
        out = [json_safe(d.to_dict()) for d in decisions]
        return JSONResponse(out[0] if single else {"decisions": out})

    if generator is not None:
        @app.post("/generate")
        async def generate(request: Request) -> JSONResponse:
            require_json(request)
            payload = parse_body(await read_body(request, max_body_bytes, read_timeout_s))
            prompt, steps = generation_request(payload, generator)
            try:
                result = await request.app.state.generation.submit(prompt, steps)
            except ModelFailure as exc:
                raise RequestError(500, str(exc)) from None
            return JSONResponse(json_safe(result))

    return app


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def check_origin(origin: str) -> str:
    """``origin`` as a browser sends it (``scheme://host[:port]``, no path); anything else, ``*`` included,
    is an error naming it: a CORS origin is the one web site allowed to call the service."""
    if not isinstance(origin, str) or not _ORIGIN.match(origin):
        raise ValueError(f"CORS origin {origin!r} must be one origin like http://localhost:3000 "
                         "(scheme://host[:port], no path, no wildcard)")
    return origin.lower()


def require_json(request: Request) -> None:
    """Refuse (415) a body that is not declared ``application/json`` (a UTF-8 ``charset`` is allowed)."""
    declared = request.headers.get("content-type")
    media, *params = (declared or "").split(";")
    if media.strip().lower() != "application/json":
        raise RequestError(415, f"Content-Type must be application/json, got {declared!r}" if declared
                           else "Content-Type must be application/json (none was sent)")
    for param in params:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise RequestError(415, f"Content-Type application/json must be UTF-8, got charset {charset!r}")


async def read_body(request: Request, limit: int, timeout_s: float = READ_TIMEOUT_S) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes and with 408
    (closing the connection) when it is not complete within ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise RequestError(413, f"request body of {size} bytes is over the limit of {limit} bytes")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            log.warning("request body from %s not complete after %g s (%d bytes received): 408",
                        _client(request), timeout_s, size)
            raise RequestError(408, f"request body not received within {timeout_s:g} s ({size} bytes arrived)",
                               close=True) from None
        except ClientDisconnect:
            log.warning("client %s disconnected before its request body was complete (%d bytes received)",
                        _client(request), size)
            raise RequestError(400, "the client disconnected before the body was complete") from None
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "(unknown)"


def parse_body(body: bytes) -> Any:
    """The JSON of a request body; every way it can fail is a 400 saying why."""
    if not body.strip():
        raise RequestError(400, 'empty body: send a JSON object {"text": "..."} or {"texts": ["...", ...]}')
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return loads_bounded(decoded)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except JSONBoundsError as exc:
        raise RequestError(400, f"body holds {exc}") from None
    except (ValueError, RecursionError) as exc:   # the parser's own limits, should the bounds ever miss one
        raise RequestError(400, f"body is not JSON the service can read ({type(exc).__name__}: {exc})") from None


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


class _ServiceH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with one more deadline: ``read_timeout_s`` for each request's head, and
    for the rest of a body the service answered without reading (a 413).  uvicorn's own keep-alive timer
    stops at the first byte received, so a client that sent part of a request head and stalled would hold
    its connection forever.  A request the app holds is the app's to time (:func:`read_body`'s 408).
    Responses go out without Nagle's delay (the accepted socket comes without ``TCP_NODELAY``, and a
    response's head and body are two writes: on a keep-alive connection the body waited ~40 ms for the
    client's delayed ACK)."""

    read_timeout_s = READ_TIMEOUT_S

    def connection_made(self, transport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        client = "%s:%d" % self.client if self.client else "(unknown)"
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            log.warning("request head from %s not complete after %g s: 408, connection closed", client,
                        self.read_timeout_s)
            body = json.dumps({"detail": f"request head not received within {self.read_timeout_s:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        else:
            log.info("closed the idle connection from %s after %g s", client, self.read_timeout_s)
        self.transport.close()


def server_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, keep_alive_s: float = KEEP_ALIVE_S,
                  log_level: str = "warning", access_log: bool = False) -> uvicorn.Config:
    """The uvicorn configuration the service runs under: HTTP/1.1 (h11) with the request-head deadline of
    the app's ``read_timeout_s`` (:func:`create_app`) and no Nagle delay, and idle keep-alive connections
    closed after ``keep_alive_s``."""
    check_range("keep_alive_s", keep_alive_s, 0.0, 3600.0, low_open=True)
    read_timeout_s = getattr(app.state, "read_timeout_s", READ_TIMEOUT_S)
    protocol = type("ServiceH11Protocol", (_ServiceH11Protocol,), {"read_timeout_s": read_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, timeout_keep_alive=keep_alive_s,
                          log_level=log_level, access_log=access_log)
