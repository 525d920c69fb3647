"""The triggers a ``patronus scan`` report confirmed, checked against the model they are used on.

The monitor and the purifiers take what the scan found.  A report is accepted
only if it belongs to the model: every trigger's token ids must decode to its
text under the model's tokenizer, and the report's ``model.hidden_size`` (when
present) must match.  One module below the defenses, so they share the check.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class ScannedTriggers:
    """Confirmed triggers of a scan report: words, token ids, groups (variants share a group)."""

    words: list[str]
    token_ids: list[tuple[int, ...]]
    groups: list[Any]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"words": list(self.words), "token_ids": [list(t) for t in self.token_ids],
                "groups": list(self.groups), "source": self.source}


def read_report(report: dict | str | os.PathLike) -> tuple[dict, str]:
    """The report as a dict and a name for messages (a dict passes through); a missing file, one that is
    not JSON or not a JSON object is an error naming it."""
    if isinstance(report, dict):
        return report, "scan report"
    path = Path(report)
    if not path.is_file():
        raise FileNotFoundError(f"scan report {path} not found")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON scan report ({exc})") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a scan report (a JSON object is expected)")
    return payload, str(path)


def _norm(text: str) -> str:
    return "".join(str(text).split()).lower()


def triggers_from_report(report: dict | str | os.PathLike, tokenizer, hidden_size: int | None = None, *,
                         include_variants: bool = True, purpose: str = "nothing to purify against"
                         ) -> ScannedTriggers:
    """The confirmed triggers of ``report`` (dict or JSON file), checked against the model.

    ``ValueError`` "the report belongs to another model" when a trigger's ids
    fall outside the tokenizer's vocabulary or do not spell its text, or when
    ``hidden_size`` differs from the report's; ``ValueError`` when the report
    has no confirmed trigger.  ``include_variants=False`` keeps one trigger per
    group (variants of a confirmed trigger share its target representation).
    """
    payload, where = read_report(report)
    entries = payload.get("triggers")
    if not isinstance(entries, list):
        raise ValueError(f"{where}: not a scan report (no 'triggers' list)")
    if not entries:
        raise ValueError(f"{where}: the report has no confirmed trigger (verdict "
                         f"{payload.get('verdict', 'unknown')!r}); {purpose}")
    reported = (payload.get("model") or {}).get("hidden_size")
    if hidden_size is not None and reported is not None and int(reported) != int(hidden_size):
        raise ValueError(f"{where}: the report belongs to another model (hidden size {reported}, "
                         f"this model has {hidden_size})")
    vocab = len(tokenizer)
    words, ids_out, groups = [], [], []
    for entry in entries:
        if not include_variants and entry.get("variant_of"):
            continue
        ids = tuple(int(i) for i in entry.get("token_ids") or ())
        text = str(entry.get("text", "")).strip()
        if not text:
            raise ValueError(f"{where}: a trigger entry has no text")
        if not ids or any(i < 0 or i >= vocab for i in ids):
            raise ValueError(f"{where}: trigger {text!r} has token ids {list(ids)} outside this tokenizer's "
                             f"vocabulary of {vocab}: the report belongs to another model")
        spelled = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()
        if _norm(spelled) != _norm(text):
            raise ValueError(f"{where}: trigger {text!r} is {spelled!r} under this model's tokenizer: "
                             "the report belongs to another model")
        if text in words:
            continue
        words.append(text)
        ids_out.append(ids)
        groups.append(entry.get("group"))
    return ScannedTriggers(words, ids_out, groups, where)
