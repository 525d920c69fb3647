"""``patronus monitor``: a JSON-lines stream through the monitored model (one decision per line, in order,
fields passed through, a per-line error record for every kind of bad line, a summary on stderr)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from patronus_ext.cli import main
from patronus_ext.monitor.build import build_monitored_model
from patronus_ext.monitor.stream import monitor_stream

import tiny_models

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A POR-planted tiny BERT, its scan report and bank (through the CLI scan)."""
    planted, report, payload = tiny_models.shared_scan("por")
    assert payload["bank"] and Path(payload["bank"]).is_file()
    return str(planted.out_dir), report, payload


def _texts(payload, count=6):
    found = [t["text"] for t in payload["triggers"]]
    clean = [" ".join(t.split()[:10]) for t in tiny_models.tiny_corpus(count)]
    poisoned = [f"{t.split()[0]} {found[i % len(found)]} {' '.join(t.split()[1:])}" for i, t in enumerate(clean)]
    return clean, poisoned


def _run(monkeypatch, argv, data: bytes) -> tuple[int, list[dict]]:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    status = main(["monitor", *argv])
    sys.stdout.flush()
    return status, [json.loads(line) for line in out.getvalue().decode("utf-8").splitlines()]


def _jsonl(objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_one_decision_per_line_in_order_with_fields_passed_through(subject, monkeypatch, capsys):
    model, report, payload = subject
    clean, poisoned = _texts(payload)
    texts = [t for pair in zip(clean, poisoned) for t in pair]   # clean, poisoned, clean, ...
    lines = [{"text": t, "id": f"doc-{i}", "meta": {"n": i}} for i, t in enumerate(texts)]
    status, records = _run(monkeypatch, ["--model", model, "--scan-report", str(report), "--batch-size", "5",
                                         "--device", "cpu"], _jsonl(lines))
    assert status == 0
    expected = build_monitored_model(model, report, device="cpu").check(texts)   # the same construction
    assert [r["line"] for r in records] == list(range(1, len(texts) + 1))
    for record, line, decision in zip(records, lines, expected):
        assert record["id"] == line["id"] and record["meta"] == line["meta"] and record["text"] == line["text"]
        assert {k: record[k] for k in ("flagged", "action", "reasons", "text_out")} == {
            k: v for k, v in decision.to_dict().items() if k in ("flagged", "action", "reasons", "text_out")}
        assert isinstance(record["flagged"], bool) and isinstance(record["reasons"], list)
    assert [r["flagged"] for r in records] == [False, True] * len(clean)
    for record in records[1::2]:
        assert record["action"] == "flag" and record["text_out"] == record["text"]
        assert {"trigger", "attack_vector"} & {r["kind"] for r in record["reasons"]}
    err = capsys.readouterr().err
    assert f"{len(texts)} lines: {len(clean)} passed, {len(poisoned)} flagged (0 not served), 0 errors" in err
    assert "lines/s" in err


def test_every_kind_of_bad_line_gets_an_error_record_and_the_stream_goes_on(subject, monkeypatch, capsys):
    model, report, payload = subject
    clean, poisoned = _texts(payload, 2)
    data = b"".join([
        _jsonl([{"text": clean[0], "id": "a"}]),
        b'{"text": "", "id": "empty"}\n',
        b'{"text": "caf\xe9 au lait"}\n',                       # Latin-1, not UTF-8
        _jsonl([{"text": "word " * 100, "id": "long"}]),        # 500 characters > --max-chars 200
        b"this is not json\n",
        _jsonl([{"id": "no-text"}]),
        _jsonl([{"text": 42, "id": "not-a-string"}]),
        b'{"text": "\\ud800 lone surrogate"}\n',
        b"[1, 2, 3]\n",
        b"\n",
        _jsonl([{"text": poisoned[0], "id": "b"}]),
        _jsonl([{"text": clean[1], "id": "c"}]),
    ])
    status, records = _run(monkeypatch, ["--model", model, "--scan-report", str(report), "--action", "reject",
                                         "--max-chars", "200", "--batch-size", "2", "--device", "cpu"], data)
    assert status == 0
    assert [r["line"] for r in records] == list(range(1, 13))
    errors = {r["line"]: r for r in records if r["action"] == "error"}
    assert sorted(errors) == list(range(2, 11))
    for record in errors.values():
        assert (record["flagged"], record["reasons"], record["text_out"]) == (False, [], None)
    assert "empty" in errors[2]["error"] and errors[2]["id"] == "empty"
    assert "UTF-8" in errors[3]["error"]
    assert "200" in errors[4]["error"] and errors[4]["id"] == "long"
    assert "not JSON" in errors[5]["error"]
    assert 'no "text"' in errors[6]["error"] and errors[6]["id"] == "no-text"
    assert "string" in errors[7]["error"] and errors[7]["id"] == "not-a-string"
    assert "surrogate" in errors[8]["error"]
    assert "JSON object" in errors[9]["error"]
    assert "empty" in errors[10]["error"]
    assert (records[0]["id"], records[0]["action"], records[0]["text_out"]) == ("a", "pass", clean[0])
    assert (records[10]["id"], records[10]["flagged"], records[10]["action"]) == ("b", True, "reject")
    assert records[10]["text_out"] is None
    assert (records[11]["id"], records[11]["action"]) == ("c", "pass")
    assert "12 lines: 2 passed, 1 flagged (1 not served), 9 errors" in capsys.readouterr().err


def test_a_line_over_the_byte_limit_is_skipped_to_its_end():
    calls = []

    def checker(texts):
        from patronus_ext.monitor import Decision

        calls.append(list(texts))
        return [Decision(False, "pass", [], t) for t in texts]

    source = io.BytesIO(b'{"text": "first"}\n' + b'{"text": "' + b"x" * 5000 + b'"}\n' + b'{"text": "third"}\n'
                        + b'{"text": "fourth"}')   # no newline at the end
    sink = io.BytesIO()
    summary = monitor_stream(checker, source, sink, batch_size=2, max_line_bytes=1000)
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert records[1]["action"] == "error" and "longer than 1000 bytes" in records[1]["error"]
    assert [r["text_out"] for r in records] == ["first", None, "third", "fourth"]
    assert calls == [["first", "third"], ["fourth"]]          # valid lines batched, two at a time
    assert (summary.lines, summary.passed, summary.errors) == (4, 3, 1)


def test_strip_serves_the_cleaned_text(subject, monkeypatch, capsys):
    model, report, payload = subject
    clean, poisoned = _texts(payload, 3)
    found = {t["text"] for t in payload["triggers"]}
    status, records = _run(monkeypatch, ["--model", model, "--scan-report", str(report), "--action", "strip",
                                         "--device", "cpu"], _jsonl({"text": t} for t in poisoned))
    assert status == 0
    for record, text in zip(records, poisoned):
        assert record["flagged"] and record["action"] in ("strip", "reject")
        if record["action"] == "strip":
            assert not set(record["text_out"].split()) & found
            assert len(record["text_out"].split()) == len(text.split()) - 1


@pytest.mark.parametrize("case", ["missing_report", "no_report_no_bank", "bad_bank", "report_not_json"])
def test_setup_errors_exit_2(subject, tmp_path, monkeypatch, capsys, case):
    model, report, payload = subject
    args = {"missing_report": ["--scan-report", str(tmp_path / "nope.json")],
            "no_report_no_bank": [],
            "bad_bank": ["--scan-report", str(report), "--bank", str(tmp_path / "bank.safetensors")],
            "report_not_json": ["--scan-report", str(tmp_path / "junk.json")]}[case]
    (tmp_path / "bank.safetensors").write_bytes(b"\x00" * 32)
    (tmp_path / "junk.json").write_text("{not json")
    status, records = _run(monkeypatch, ["--model", model, *args, "--device", "cpu"], _jsonl([{"text": "hi"}]))
    assert status == 2 and records == []
    err = capsys.readouterr().err
    assert "patronus monitor: error:" in err
    assert {"missing_report": "not found", "no_report_no_bank": "--scan-report", "bad_bank": "bank.safetensors",
            "report_not_json": "junk.json"}[case] in err


def test_the_real_command_reads_stdin_and_writes_stdout(subject):
    model, report, payload = subject
    clean, poisoned = _texts(payload, 1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "patronus_ext.cli", "monitor", "--model", model, "--scan-report",
                             str(report), "--device", "cpu", "--quiet"],
                            input=_jsonl([{"text": clean[0]}, {"text": poisoned[0]}]) + b"\xff\n",
                            capture_output=True, timeout=180, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(r["flagged"], r["action"]) for r in records] == [(False, "pass"), (True, "flag"), (False, "error")]
    assert "3 lines: 1 passed, 1 flagged" in result.stderr.decode()


# -- fail closed: no line can stop the stream, no line can fail another ----------------------------------
def _passing(texts):
    from patronus_ext.monitor import Decision

    return [Decision(False, "pass", [], t) for t in texts]


def _stream(checker, data: bytes, **kwargs):
    sink = io.BytesIO()
    summary = monitor_stream(checker, io.BytesIO(data), sink, **kwargs)
    return summary, [json.loads(line) for line in sink.getvalue().splitlines()]


HOSTILE_LINES = {
    "deep_array": (b"[" * 100_000, "nested deeper than 64"),
    "deep_object": (b'{"a": ' * 100_000, "nested deeper than 64"),
    "huge_integer": (b'{"text": "fine words", "n": ' + b"9" * 5000 + b"}", "number of 5000 characters"),
    "long_float": (b'{"text": "fine words", "x": 1.' + b"0" * 200 + b"}", "number of 202 characters"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_a_line_beyond_the_parsing_bounds_is_an_error_record_and_nothing_held_is_lost(case):
    line, message = HOSTILE_LINES[case]
    data = b'{"text": "one"}\n{"text": "two"}\n' + line + b'\n{"text": "four"}\n{"text": "five"}\n'
    summary, records = _stream(_passing, data, batch_size=3)
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["action"] for r in records] == ["pass", "pass", "error", "pass", "pass"]
    assert [r["text_out"] for r in records] == ["one", "two", None, "four", "five"]
    assert message in records[2]["error"]
    assert (summary.lines, summary.passed, summary.errors) == (5, 4, 1)


def test_the_command_answers_hostile_lines_and_exits_0(subject, monkeypatch, capsys):
    model, report, payload = subject
    clean, _ = _texts(payload, 2)
    data = _jsonl([{"text": clean[0]}]) + b"[" * 100_000 + b"\n" + b'{"n": ' + b"1" * 5000 + b"}\n" \
        + _jsonl([{"text": clean[1]}])
    status, records = _run(monkeypatch, ["--model", model, "--scan-report", str(report), "--device", "cpu"], data)
    assert status == 0
    assert [(r["line"], r["action"]) for r in records] == [(1, "pass"), (2, "error"), (3, "error"), (4, "pass")]
    assert "4 lines: 2 passed, 0 flagged (0 not served), 2 errors" in capsys.readouterr().err


def test_a_line_the_model_fails_on_fails_alone_and_the_batch_is_retried_line_by_line():
    from patronus_ext.monitor import Decision

    calls = []

    def fragile(texts):
        calls.append(list(texts))
        if any("explode" in t for t in texts):
            raise IndexError("index out of range in self")
        if any("miscount" in t for t in texts):
            return []
        return [Decision(False, "pass", [], t) for t in texts]

    data = _jsonl([{"text": "a", "id": 1}, {"text": "please explode", "id": 2}, {"text": "b", "id": 3},
                   {"text": "c", "id": 4}, {"text": "miscount me", "id": 5}, {"text": "d", "id": 6}])
    summary, records = _stream(fragile, data, batch_size=3)
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["action"] for r in records] == ["pass", "error", "pass", "pass", "error", "pass"]
    assert "the model failed: IndexError: index out of range in self" in records[1]["error"]
    assert "0 decisions for 1 text" in records[4]["error"]
    assert calls == [["a", "please explode", "b"], ["a"], ["please explode"], ["b"],
                     ["c", "miscount me", "d"], ["c"], ["miscount me"], ["d"]]
    assert (summary.lines, summary.passed, summary.errors) == (6, 4, 2)


def test_a_text_the_real_model_fails_on_fails_alone(subject):
    """A token the tokenizer knows but the model's embedding table does not (an IndexError in the forward)."""
    model, report, payload = subject
    served = build_monitored_model(model, report, device="cpu")
    served.tokenizer.add_tokens(["zzqqx"])
    clean, poisoned = _texts(payload, 2)
    data = _jsonl([{"text": clean[0]}, {"text": "a zzqqx b"}, {"text": poisoned[0]}, {"text": clean[1]}])
    summary, records = _stream(served.check, data, batch_size=4)
    assert [(r["line"], r["action"], r["flagged"]) for r in records] == [
        (1, "pass", False), (2, "error", False), (3, "flag", True), (4, "pass", False)]
    assert "IndexError" in records[1]["error"]
    assert (summary.passed, summary.flagged, summary.errors) == (2, 1, 1)


def test_when_reading_the_stream_fails_the_lines_already_read_are_answered_first():
    class Failing(io.BytesIO):
        def readline(self, size=-1):
            line = super().readline(size)
            if not line:
                raise OSError("input/output error")
            return line

    sink = io.BytesIO()
    with pytest.raises(OSError, match="input/output error"):
        monitor_stream(_passing, Failing(b'{"text": "one"}\n{"text": "two"}\n'), sink, batch_size=8)
    assert [json.loads(line)["text_out"] for line in sink.getvalue().splitlines()] == ["one", "two"]
