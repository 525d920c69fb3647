"""JSON-lines monitoring: one decision per input line, in input order (``patronus monitor``).

Input lines are JSON objects with a ``"text"`` field; their other fields are
passed through.  The stream is read as bytes, so a line that is not UTF-8, not
JSON, too long, without a usable ``"text"`` gets an error record and the
stream goes on.  Lines are parsed within bounds (:mod:`.bounded_json`: nesting
depth, number length), so no line can drive the parser into the interpreter's
limits.  Valid lines are checked ``batch_size`` at a time (one forward per
batch); output is written and flushed after every batch.  When the checker
fails on a batch, its lines are checked again one at a time, so only the line
the model fails on gets an error record; whatever goes wrong with one line is
that line's error record, never the end of the stream.

Each output line: ``{"line": n, <input fields>, "flagged", "action", "reasons",
"text_out"[, "output"][, "error"]}``; an error record has ``"action": "error"``,
``"flagged": false``, ``"text_out": null`` and ``"error"`` saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import IO, Any, Callable, Sequence

from ..core.validation import check_int
from .bounded_json import JSONBoundsError, loads_bounded
from .build import json_safe, text_problem
from .model import MAX_TEXT_CHARS, Decision

#: Longest input line read, in bytes (a longer line is skipped to its end and reported).
MAX_LINE_BYTES = 1 << 20


@dataclasses.dataclass
class StreamSummary:
    lines: int = 0
    passed: int = 0
    flagged: int = 0
    rejected: int = 0        # flagged and not served (text_out null)
    errors: int = 0
    seconds: float = 0.0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "lines_per_second": self.lines_per_second}

    def __str__(self) -> str:
        return (f"{self.lines} lines: {self.passed} passed, {self.flagged} flagged ({self.rejected} not served), "
                f"{self.errors} errors; {self.seconds:.2f} s, {self.lines_per_second:.1f} lines/s")


def error_record(line: int, error: str, fields: dict | None = None) -> dict[str, Any]:
    return {"line": line, **(fields or {}), "error": error, "flagged": False, "action": "error", "reasons": [],
            "text_out": None}


def parse_line(raw: bytes, max_chars: int) -> tuple[dict | None, str | None]:
    """``(fields, None)`` for a usable line, ``(fields or None, why)`` otherwise."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"line is not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
    if not decoded.strip():
        return None, "line is empty"
    try:
        obj = loads_bounded(decoded)
    except json.JSONDecodeError as exc:
        return None, f"line is not JSON ({exc.msg} at column {exc.colno})"
    except JSONBoundsError as exc:
        return None, f"line holds {exc}"
    if not isinstance(obj, dict):
        return None, f"line must be a JSON object with a \"text\" field, got {type(obj).__name__}"
    if "text" not in obj:
        return obj, "line has no \"text\" field"
    problem = text_problem(obj["text"], max_chars)
    return obj, (f"\"text\": {problem}" if problem else None)


def read_lines(source: IO[bytes], max_line_bytes: int):
    """``(raw, too_long)`` per line of a binary stream; a line over ``max_line_bytes`` is read to its
    end in bounded pieces and returned empty with ``too_long`` set."""
    while True:
        raw = source.readline(max_line_bytes + 1)
        if not raw:
            return
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = source.readline(max_line_bytes + 1)
            yield b"", True
            continue
        yield raw.rstrip(b"\r\n"), len(raw.rstrip(b"\r\n")) > max_line_bytes


def monitor_stream(checker: Callable[[Sequence[str]], list[Decision]], source: IO[bytes], sink: IO[bytes], *,
                   batch_size: int = 32, max_chars: int | None = None,
                   max_line_bytes: int = MAX_LINE_BYTES) -> StreamSummary:
    """Check every line of ``source`` with ``checker`` (a :class:`MonitoredModel`'s ``check``) and write
    one JSON line per input line to ``sink`` (binary, UTF-8), in input order."""
    check_int("batch_size", batch_size)
    check_int("max_line_bytes", max_line_bytes)
    if max_chars is None:
        max_chars = MAX_TEXT_CHARS
    summary = StreamSummary()
    start = time.perf_counter()
    records: list[dict[str, Any] | None] = []   # output in input order; None = waiting for its batch
    batch: list[tuple[int, int, dict]] = []     # (index into records, line number, input fields)

    def write_ready() -> None:
        done = 0
        while done < len(records) and records[done] is not None:
            encoded, written = _encode_or_error(records[done])
            sink.write(encoded + b"\n")
            _count(summary, written)
            done += 1
        del records[:done]
        for position, (index, number, fields) in enumerate(batch):
            batch[position] = (index - done, number, fields)
        sink.flush()

    def run_batch() -> None:
        outcomes = decisions_or_errors(checker, [fields["text"] for _, _, fields in batch])
        for (index, number, fields), outcome in zip(batch, outcomes):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                records[index] = {"line": number, **_passthrough(fields), **outcome.to_dict()}
            except Exception as exc:  # noqa: BLE001 - this line's error record; the stream goes on
                records[index] = error_record(number, f"the model failed: {type(exc).__name__}: {exc}",
                                              _passthrough(fields))
        batch.clear()
        write_ready()

    try:
        for number, (raw, too_long) in enumerate(read_lines(source, max_line_bytes), start=1):
            summary.lines += 1
            if too_long:
                fields, problem = None, f"line is longer than {max_line_bytes} bytes"
            else:
                try:
                    fields, problem = parse_line(raw, max_chars)
                except Exception as exc:  # noqa: BLE001 - whatever a line does, it is that line's error record
                    fields, problem = None, f"line could not be read ({type(exc).__name__}: {exc})"
            if problem is not None:
                records.append(error_record(number, problem, _passthrough(fields)))
                if not batch:
                    write_ready()
                continue
            batch.append((len(records), number, fields))
            records.append(None)
            if len(batch) >= batch_size:
                run_batch()
    except Exception:
        # Reading or writing the stream failed: the lines already read are still answered, then it propagates.
        with contextlib.suppress(Exception):
            if batch:
                run_batch()
            write_ready()
        raise
    if batch:
        run_batch()
    write_ready()
    summary.seconds = time.perf_counter() - start
    return summary


def decisions_for(checker: Callable[[Sequence[str]], list[Decision]], texts: list[str]) -> list[Decision]:
    """``checker(texts)``, refused unless it gives one decision per text."""
    decisions = list(checker(texts))
    if len(decisions) != len(texts):
        raise RuntimeError(f"the checker returned {len(decisions)} decisions for {len(texts)} "
                           f"text{'s' if len(texts) != 1 else ''}")
    return decisions


def decisions_or_errors(checker: Callable[[Sequence[str]], list[Decision]],
                        texts: list[str]) -> list[Decision | Exception]:
    """Per text, its decision or the exception checking it raised: one call for the whole batch, and only
    when that fails, one call per text, so a text the model fails on fails alone."""
    try:
        return decisions_for(checker, texts)
    except Exception as exc:  # noqa: BLE001 - returned to the caller, per text
        if len(texts) == 1:
            return [exc]
    return [decisions_or_errors(checker, [text])[0] for text in texts]


def _passthrough(fields: dict | None) -> dict[str, Any]:
    """The input's fields that are passed through (all but the decision's own)."""
    if not fields:
        return {}
    own = ("line", "flagged", "action", "reasons", "text_out", "output", "error")
    return {key: value for key, value in fields.items() if key not in own}


def _encode(record: dict[str, Any]) -> bytes:
    """One JSON line in UTF-8; a passed-through lone surrogate is written as its JSON escape."""
    record = json_safe(record)
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True).encode("ascii")


def _encode_or_error(record: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """``(line, record written)``: the record encoded, or, when it cannot be, that line's error record
    (without the passed-through fields, which are what could not be written)."""
    try:
        return _encode(record), record
    except Exception as exc:  # noqa: BLE001 - the line is answered; the stream goes on
        record = error_record(record["line"], f"the record could not be written ({type(exc).__name__}: {exc})")
        return _encode(record), record


def _count(summary: StreamSummary, record: dict[str, Any]) -> None:
    if record["action"] == "error":
        summary.errors += 1
    elif record["flagged"]:
        summary.flagged += 1
        summary.rejected += record["text_out"] is None
    else:
        summary.passed += 1
