"""The audit folder: ``results.jsonl`` (append-only, one fsync'd line per finished model), ``audit.json`` (the
settings the folder was audited with), ``reports/`` and the summary tables regenerated from the results.

Resume reads ``results.jsonl`` back: the last line for a (content hash, method)
wins, so a model that failed and then succeeded on a later run counts as done.
A line torn by a crash mid-write is skipped when read and never glued to the
next one.
"""

from __future__ import annotations

import contextlib
import csv
import io as text_io
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..core.files import read_jsonl, to_jsonable, write_json

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "audit.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
REPORTS_DIR = "reports"
LOCK_FILE = ".audit.lock"
AUDIT_FORMAT = "patronus_ext.audit/1"


def report_name(content_hash: str, method: str) -> str:
    return f"{content_hash}.{method}.json"


def bank_name(content_hash: str, method: str) -> str:
    return f"{content_hash}.{method}.bank.safetensors"


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every complete record of a results file, in order (a torn or garbled line is skipped, with a warning)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [record for _, record in read_jsonl(path, skip_bad_lines=True)
            if isinstance(record, dict) and "model" in record and "method" in record]


def latest_by(records: Iterable[dict], *fields: str) -> dict[tuple, dict]:
    """The last record for each value of ``fields`` (later lines supersede earlier ones)."""
    latest: dict[tuple, dict] = {}
    for record in records:
        latest[tuple(record.get(f) for f in fields)] = record
    return latest


class ResultsLog:
    """Appends records to ``results.jsonl``, each line flushed and fsync'd before the next task's result."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle = None

    def __enter__(self) -> "ResultsLog":
        self._handle = open(self.path, "a+b")
        self._handle.seek(0, os.SEEK_END)
        if self._handle.tell():
            self._handle.seek(-1, os.SEEK_END)
            if self._handle.read(1) != b"\n":  # a line torn by a crash: end it, so the next record stands alone
                self._handle.write(b"\n")
        return self

    def __exit__(self, *exc) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None

    def append(self, record: dict) -> None:
        line = json.dumps(to_jsonable(record), separators=(",", ":"), ensure_ascii=False) + "\n"
        self._handle.write(line.encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """One audit writes a folder at a time (two would scan the same models and interleave lines)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(out_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise RuntimeError(f"another audit is writing {out_dir} (lock {out_dir / LOCK_FILE})") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_folder(out_dir: str | os.PathLike, fingerprint: dict) -> Path:
    """Create the audit folder, or check that an existing one was audited with the same settings."""
    out = Path(out_dir)
    manifest = out / MANIFEST_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if manifest.is_file():
        with open(manifest, encoding="utf-8") as handle:
            recorded = json.load(handle)
        if recorded.get("format") != AUDIT_FORMAT:
            raise ValueError(f"{manifest}: unknown format {recorded.get('format')!r} (expected {AUDIT_FORMAT})")
        wanted = json.loads(json.dumps(to_jsonable(fingerprint)))
        if recorded.get("settings") != wanted:
            changed = sorted(key for key in set(wanted) | set(recorded.get("settings", {}))
                             if wanted.get(key) != recorded.get("settings", {}).get(key))
            raise ValueError(f"{out} was audited with other settings ({', '.join(changed)} differ); resume with "
                             "the same --profile/--corpus/--seed and scan options, or choose another --out")
    elif out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise ValueError(f"--out {out} exists and is not an audit folder (no {MANIFEST_FILE}); choose another")
    else:
        if not out.parent.exists():
            raise FileNotFoundError(f"folder {out.parent} does not exist")
        out.mkdir(exist_ok=True)
        write_json(manifest, {"format": AUDIT_FORMAT, "settings": fingerprint})
    (out / REPORTS_DIR).mkdir(exist_ok=True)
    return out


#: Columns of the summary tables.
COLUMNS = ("model", "method", "verdict", "triggers", "attack_vectors", "seconds", "node", "attempts", "error")


def summary_rows(records: Iterable[dict]) -> list[dict]:
    """One row per (model as given, method): its latest record."""
    rows = []
    for record in latest_by(records, "model", "method").values():
        timings = record.get("timings") or {}
        rows.append({
            "model": record["model"], "method": record["method"], "verdict": record.get("verdict") or "error",
            "triggers": " ".join(record.get("triggers") or []), "attack_vectors": record.get("attack_vectors", 0),
            "seconds": "" if timings.get("task") is None else f"{timings['task']:.1f}",
            "node": record.get("node") or "", "attempts": record.get("attempts", ""),
            "error": record.get("error") or "",
        })
    return rows


def write_summary(out_dir: Path, records: list[dict], remaining: int = 0) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.csv`` from the records (replaced each time: they are derived)."""
    from ..core.files import atomic_write

    rows = summary_rows(records)
    verdicts = [r["verdict"] for r in rows]
    counts = (f"{len(rows)} model scan(s): {verdicts.count('clean')} clean, {verdicts.count('backdoored')} "
              f"backdoored, {verdicts.count('error')} failed" + (f"; {remaining} not done yet" if remaining else ""))
    lines = ["# Audit summary", "", counts, "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        cells = [str(row[c]).replace("|", "\\|").replace("\n", " ") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = []
    for name, text in ((SUMMARY_MD, markdown), (SUMMARY_CSV, buffer.getvalue())):
        def write(tmp: str, text: str = text) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)

        paths.append(atomic_write(out_dir / name, write, overwrite=True))
    return paths[0], paths[1]
