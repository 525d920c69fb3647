"""Fuzzing ``patronus monitor``'s stream (``monitor_stream``): random and adversarial JSON lines, mutated valid
lines and raw bytes go in; every line is answered, in order, the stream never stops, and a line that is a
valid request gets its own decision whatever shares its batch.  Most runs use a cheap checker (the parser and
the stream are the point); one runs a real tiny model.  At least 10,000 lines per run in all, in seconds:
hypothesis draws small structured streams itself, and for volume it draws the seed of a generator of the
same kinds of lines (hypothesis drawing thousands of big lines one by one takes minutes)."""

from __future__ import annotations

import io
import json
import random

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patronus_ext import lm
from patronus_ext.formats.bank import AttackBank
from patronus_ext.monitor import Decision, InputMonitor, MonitoredModel, OutputMonitor
from patronus_ext.monitor.build import json_safe, text_problem
from patronus_ext.monitor.stream import monitor_stream

import tiny_models

MAX_CHARS = 200
ACTIONS = {"pass", "flag", "reject", "strip", "purge", "error"}
#: A text holding this makes the cheap checker fail (raise), as a model fails on one bad input.
FAILS_THE_MODEL = "explode"


def fuzz(max_examples: int) -> settings:
    """The loaded profile (derandomized under ``ci``) with this many examples; big inputs are the point."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


def cheap_checker(texts):
    """Flags texts holding the word "cf"; raises on a text holding FAILS_THE_MODEL."""
    if any(FAILS_THE_MODEL in t for t in texts):
        raise IndexError("index out of range in self")
    return [Decision(True, "flag", [{"kind": "trigger", "trigger": "cf"}], t) if "cf" in t.split()
            else Decision(False, "pass", [], t) for t in texts]


# -- what goes in ------------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
texts = st.one_of(st.text(max_size=60), st.sampled_from(["cf", "a cf b", "plain words", f"{FAILS_THE_MODEL} now",
                                                         "", "  ", "x" * (MAX_CHARS + 1), "nul\x00byte", "\ud800"]))
requests = st.fixed_dictionaries({"text": texts}, optional={"id": json_values, "meta": json_values,
                                                            "flagged": json_values, "line": json_values})


@st.composite
def adversarial_lines(draw) -> bytes:
    """Lines built to hit the parser's and the interpreter's limits, or to look almost valid."""
    kind = draw(st.sampled_from(["deep", "deep_inside", "number", "number_inside", "truncated", "spliced",
                                 "control", "surrogate", "escapes", "long_text", "not_object"]))
    depth = draw(st.integers(1, 3000) | st.sampled_from([63, 64, 65, 100_000]))
    opener = draw(st.sampled_from(["[", "{\"k\": ", "[{\"a\": "]))
    digits = draw(st.integers(1, 6000) | st.sampled_from([99, 100, 101, 4300, 4301]))
    valid = json.dumps(draw(requests), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "deep":
        return (opener * depth).encode()
    if kind == "deep_inside":
        return b'{"text": "fine", "x": ' + (opener * depth).encode() + b"1" + b"]" * draw(st.integers(0, 3)) + b"}"
    if kind == "number":
        return draw(st.sampled_from([b"", b"-"])) + b"9" * digits + draw(st.sampled_from([b"", b".5", b"e5"]))
    if kind == "number_inside":
        return b'{"text": "fine", "n": ' + b"1" * digits + b"}"
    if kind == "truncated":
        return valid[:draw(st.integers(0, len(valid)))]
    if kind == "spliced":
        cut = draw(st.integers(0, len(valid)))
        return valid[:cut] + draw(st.binary(max_size=8)).replace(b"\n", b"") + valid[cut:]
    if kind == "control":
        return b'{"text": "' + draw(st.binary(max_size=20)).replace(b"\n", b"").replace(b'"', b"") + b'"}'
    if kind == "surrogate":
        return b'{"text": "a \\udc80 b", "id": "\\ud83d"}'
    if kind == "escapes":
        return b'{"text": "' + b"\\\\[" * draw(st.integers(1, 500)) + b'"}'
    if kind == "long_text":
        return json.dumps({"text": "w " * draw(st.integers(MAX_CHARS // 2 - 5, MAX_CHARS // 2 + 5))}).encode()
    return json.dumps(draw(json_values)).encode()


def _request_line(request: dict) -> bytes:
    return json.dumps(request).encode("utf-8", "surrogatepass")


lines = st.one_of(
    requests.map(_request_line),
    adversarial_lines(),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    json_values.map(lambda v: json.dumps(v).encode()),
)


# -- what comes out ----------------------------------------------------------------------------------------------
def run_stream(checker, data: list[bytes], batch_size: int) -> list[dict]:
    sink = io.BytesIO()
    summary = monitor_stream(checker, io.BytesIO(b"\n".join(data) + b"\n"), sink, batch_size=batch_size,
                             max_chars=MAX_CHARS)
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(data) + 1))       # every line, in order
    assert summary.lines == len(data) == summary.passed + summary.flagged + summary.errors
    assert summary.errors == sum(r["action"] == "error" for r in records)
    for record in records:
        assert record["action"] in ACTIONS and isinstance(record["flagged"], bool)
        assert isinstance(record["reasons"], list)
        if record["action"] == "error":
            assert isinstance(record["error"], str) and record["error"] and record["text_out"] is None
    return records


def servable(request: dict) -> bool:
    return text_problem(request["text"], MAX_CHARS) is None


def expect_cheap_decisions(requests_sent: list[tuple[int, dict]], records: list[dict]) -> None:
    """A valid request's record holds its own decision, whatever shares its batch."""
    for index, request in requests_sent:
        record = records[index]
        if not servable(request):
            assert record["action"] == "error"
        elif FAILS_THE_MODEL in request["text"]:
            assert record["action"] == "error" and "the model failed: IndexError" in record["error"]
        else:
            assert record["text_out"] == request["text"]
            assert record["flagged"] == ("cf" in request["text"].split())
            # Passed through as written (non-finite numbers as null: strict JSON has none).
            assert all(record[k] == json_safe(v) for k, v in request.items() if k not in ("line", "flagged"))


# -- the same kinds of lines, in volume, from a seeded generator ---------------------------------------------------
def seeded_lines(rng: random.Random, count: int) -> tuple[list[bytes], list[tuple[int, dict]]]:
    """``count`` lines (valid requests, mutated ones, adversarial lines, raw bytes) and the valid requests
    among them, by index."""
    data, sent = [], []
    for index in range(count):
        request = {"text": rng.choice(["a cf b", "clean words here", "cf", "x" * rng.randint(1, MAX_CHARS + 20),
                                       f"{FAILS_THE_MODEL}!", "caf\u00e9 \u2603", "", "tab\there", "nul\x00"]),
                   "id": rng.choice([index, str(index), None, [index, {"n": -index}], 1.5e300])}
        line = bytearray(json.dumps(request, ensure_ascii=rng.random() < 0.5).encode())
        kind = rng.random()
        if kind < 0.3:
            sent.append((index, request))          # left valid: its decision is checked
        elif kind < 0.75:
            for _ in range(rng.randint(1, 4)):     # mutated: most of these are *almost* valid
                at = rng.randrange(len(line) + 1)
                how = rng.random()
                if how < 0.25 and line:
                    line[min(at, len(line) - 1)] = rng.randrange(256)
                elif how < 0.5:
                    del line[at:at + rng.randint(1, 8)]
                elif how < 0.75:
                    line[at:at] = bytes([rng.choice(b'[{"\\]}:,')]) * rng.choice([1, 2, 70, 2000])
                else:
                    line[at:at] = b"7" * rng.choice([1, 50, 101, 5000])
        elif kind < 0.9:                           # beyond the bounds, or right at them
            opener = rng.choice([b"[", b'{"k": ', b'[{"a": '])
            depth = rng.choice([1, 63, 64, 65, 1000, 100_000])
            digits = rng.choice([99, 100, 101, 4300, 4301, 6000])
            line = bytearray(rng.choice([opener * depth, b'{"text": "a", "x": ' + opener * depth,
                                         b"[" * depth + b"]" * depth, b'{"text": "a", "n": -' + b"9" * digits + b"}",
                                         b"1." + b"0" * digits, b'{"text": "' + b"[" * depth + b'"}']))
        else:                                      # raw bytes
            line = bytearray(rng.randbytes(rng.randint(0, 60)))
        data.append(bytes(line).replace(b"\n", b" "))
    return data, sent


# -- the runs ----------------------------------------------------------------------------------------------------
def test_fuzz_random_and_adversarial_lines():
    """Hypothesis draws every line (small streams, many of them)."""
    counted = []

    @fuzz(100)
    @given(st.lists(st.one_of(lines, requests), min_size=10, max_size=20), st.integers(1, 8))
    def run(items, batch_size):
        data = [_request_line(i) if isinstance(i, dict) else i for i in items]
        records = run_stream(cheap_checker, data, batch_size)
        expect_cheap_decisions([(n, i) for n, i in enumerate(items) if isinstance(i, dict)], records)
        counted.append(len(data))

    run()
    assert sum(counted) >= 1000


def test_fuzz_seeded_streams():
    """Hypothesis draws the seed and the batch size; the seeded generator draws 400 lines per stream."""
    counted = []

    @fuzz(20)
    @given(st.integers(0, 2**32 - 1), st.integers(1, 32))
    def run(seed, batch_size):
        data, sent = seeded_lines(random.Random(seed), 400)
        records = run_stream(cheap_checker, data, batch_size)
        expect_cheap_decisions(sent, records)
        counted.append(len(data))

    run()
    assert sum(counted) >= 8000


def test_fuzz_through_a_real_tiny_model():
    """Lines through a real (tiny, random-weight) monitored model: input and output monitor, action strip."""
    folder = tiny_models.shared_tiny_model("bert")
    model, tokenizer = lm.load_model(folder), lm.load_tokenizer(folder)
    bank = AttackBank(torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0)),
                      "tiny", "first", "fuzz")
    monitored = MonitoredModel(model, tokenizer, input_monitor=InputMonitor(tokenizer, ["cf", "bb"]),
                               output_monitor=OutputMonitor(bank, "cosine", 0.9), action="strip", max_length=32,
                               max_chars=MAX_CHARS)
    counted = []

    # Batches of 8 or more: batch sizes are the cheap runs' business, and a forward costs here.
    @fuzz(8)
    @given(st.lists(st.one_of(lines, requests), min_size=5, max_size=15), st.integers(0, 2**32 - 1),
           st.integers(8, 16))
    def run(items, seed, batch_size):
        data, sent = seeded_lines(random.Random(seed), 120)
        sent = [(index, request) for index, request in sent if FAILS_THE_MODEL not in request["text"]]
        data += [_request_line(i) if isinstance(i, dict) else i for i in items]
        sent += [(120 + n, i) for n, i in enumerate(items) if isinstance(i, dict)]
        records = run_stream(monitored.check, data, batch_size)
        for index, request in sent:
            record = records[index]
            if servable(request):
                assert record["action"] != "error", record
                assert record["text"] == request["text"]
                assert record["flagged"] or record["text_out"] == request["text"]
            else:
                assert record["action"] == "error"
        counted.append(len(data))

    run()
    assert sum(counted) >= 1000
