"""The record a purified model folder carries: ``purify.json``, one writer and one reader for every purifier.

It says what was purified (``model``; ``pretrained`` clean weights, ``data``
and ``baseline`` where the method takes them), with which triggers and where
they came from (``triggers_source``: a scan report, ``given``, or the
``defender``'s own), how the attack was measured before and after
(``measured_triggers``; ``attack_responses`` for causal LMs), the settings,
the method's own ``details`` and the timings.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

PURIFY_FILE = "purify.json"
PURIFY_FORMAT = "patronus_ext.purify/1"
#: Fields written only when set: they belong to the purifiers of instruction-tuned causal LMs.
OPTIONAL_FIELDS = ("data", "baseline", "attack_responses")


@dataclasses.dataclass
class PurifyRecord:
    """One purification: inputs, triggers, before/after measurements, settings, details, timings."""

    method: str
    model: str
    task: str
    profile: str
    settings: dict[str, Any]
    details: dict[str, Any]
    timings: dict[str, float]
    pretrained: str | None = None
    data: str | None = None
    baseline: str | None = None
    triggers: list[str] = dataclasses.field(default_factory=list)
    trigger_token_ids: list[list[int]] | None = None
    triggers_source: str | None = None
    measured_triggers: list[str] = dataclasses.field(default_factory=list)
    attack_responses: dict[str, str] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    measure: dict[str, Any] | None = None
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""

    def __post_init__(self):
        if not self.created:
            self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``purify.json``."""
        out: dict[str, Any] = {"format": PURIFY_FORMAT}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in OPTIONAL_FIELDS and value is None:
                continue
            out[field.name] = value
        return out


def read_purify_record(path: str | os.PathLike) -> PurifyRecord:
    """Read ``purify.json`` from a purified model folder (or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / PURIFY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a model purified by patronus_ext")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON purification record ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != PURIFY_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: unknown format {found!r} (expected {PURIFY_FORMAT})")
    names = {f.name for f in dataclasses.fields(PurifyRecord)}
    missing = sorted(f.name for f in dataclasses.fields(PurifyRecord)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     and f.name not in raw)
    if missing:
        raise ValueError(f"{path}: a purification record needs {', '.join(missing)}")
    return PurifyRecord(**{key: value for key, value in raw.items() if key in names})
