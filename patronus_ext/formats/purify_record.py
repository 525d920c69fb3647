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
import os
from typing import Any

from .records import read_record, record_dict, required_fields

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
        return record_dict(self, PURIFY_FORMAT, optional=OPTIONAL_FIELDS)


def read_purify_record(path: str | os.PathLike) -> PurifyRecord:
    """Read ``purify.json`` from a purified model folder (or the file itself)."""
    raw, path = read_record(path, PURIFY_FILE, PURIFY_FORMAT, "purification record",
                            "not a model purified by patronus_ext")
    missing = sorted(set(required_fields(PurifyRecord)) - set(raw))
    if missing:
        raise ValueError(f"{path}: a purification record needs {', '.join(missing)}")
    names = {f.name for f in dataclasses.fields(PurifyRecord)}
    return PurifyRecord(**{key: value for key, value in raw.items() if key in names})
