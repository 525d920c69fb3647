"""The scan report (``patronus scan --report``): one layout for both detectors, one writer, one reader.

* :func:`scan_record` lays a detector's findings out (both Patronus'
  :class:`~patronus_ext.detect.ScanReport` and LMSanitator's report build their
  JSON with it); :func:`write_scan_outputs` writes the report and, for a
  backdoored verdict, the attack-vector bank beside it (the ``scan`` command
  and the audit both write through it).
* :func:`triggers_from_report`: the monitor and the purifiers take what the
  scan found; :func:`target_from_report`: a BAIT report's inverted target (the generation guard and
  ``purify --method unlearn`` read it).  A report is accepted only if it belongs to the model: every
  trigger's token ids must decode to its text under the model's tokenizer, and
  the report's ``model.hidden_size`` (when present) must match.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from ..core.files import write_json
from .bank import AttackBank, save_bank
from .records import check_format, load_json_object

SCAN_REPORT_FORMAT = "patronus_ext.scan/1"
VERDICTS = ("clean", "backdoored")


def scan_record(method: str, verdict: str, *, model: Mapping[str, Any], config: Mapping[str, Any],
                timings: Mapping[str, float], environment: Mapping[str, Any], groups: list[dict] | None = None,
                triggers: list[dict] | None = None, **findings: Any) -> dict[str, Any]:
    """A scan report's JSON.  It leads with what a reader wants first: the ``verdict``, the backdoor's target
    ``groups`` (Patronus) and the confirmed ``triggers`` (``[]`` for a detector that inverts vectors); then the
    detector's other ``findings`` (Patronus: candidates, loops; LMSanitator: vectors), ``method``, ``config``,
    ``model``, ``timings``, ``environment``, ``bank`` (the bank's path once written, else None) and
    ``format``."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    out: dict[str, Any] = {"verdict": verdict}
    if groups is not None:
        out["groups"] = list(groups)
    out["triggers"] = list(triggers or [])
    out.update(findings)
    out.update(method=method, config=dict(config), model=dict(model), timings=dict(timings),
               environment=dict(environment), bank=None, format=SCAN_REPORT_FORMAT)
    return out


def write_scan_outputs(payload: dict[str, Any], model_name: str, bank: AttackBank | None, *,
                       report_path: str | os.PathLike | None, bank_path: str | os.PathLike | None,
                       overwrite: bool = False) -> dict[str, Any]:
    """Name the model in ``payload`` as the user gave it, write ``bank`` (a backdoored verdict's vectors) to
    ``bank_path`` and the report to ``report_path`` (each when given, atomically; the bank first, so a report
    never names a bank that is not there).  Returns the payload as written."""
    payload = dict(payload, model=dict(payload.get("model") or {}, source=str(model_name)), bank=None)
    if bank is not None and bank_path:
        save_bank(bank, bank_path, overwrite=overwrite)
        payload["bank"] = str(bank_path)
    if report_path:
        write_json(report_path, payload, overwrite=overwrite)
    return payload


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
    not JSON, not a JSON object or of another format is an error naming it.  A report without a
    ``format`` key (written before there was one) is read as this format."""
    if isinstance(report, dict):
        payload, where = report, "scan report"
    else:
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f"scan report {path} not found")
        payload, where = load_json_object(path, "scan report"), str(path)
    check_format(payload, SCAN_REPORT_FORMAT, where, default=SCAN_REPORT_FORMAT)
    return payload, where


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


@dataclasses.dataclass
class ScannedTarget:
    """A BAIT report's inverted target: the response the model was found to give, as text and token ids."""

    text: str
    token_ids: tuple[int, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": list(self.token_ids), "source": self.source}


def bait_record(report: dict | str | os.PathLike, purpose: str) -> tuple[dict, str]:
    """A BAIT scan ``report`` (dict or JSON file) that found a backdoor, and where it came from; ``ValueError``
    otherwise: not a BAIT report (no inverted target), or a verdict that is not backdoored (``purpose`` ends
    the message).  Nothing is checked against a model here (see :func:`target_from_report`)."""
    payload, where = read_report(report)
    if payload.get("method") != "bait":
        raise ValueError(f"{where}: not a BAIT scan report (method {payload.get('method', 'unknown')!r}): run "
                         "`patronus scan --method bait --report`")
    if payload.get("verdict") != "backdoored":
        raise ValueError(f"{where}: the scan found no backdoor (verdict {payload.get('verdict')!r}); {purpose}")
    if not isinstance(payload.get("target"), dict):
        raise ValueError(f"{where}: not a BAIT scan report (a backdoored verdict without its inverted target)")
    return payload, where


def target_from_report(report: dict | str | os.PathLike, tokenizer, *, purpose: str = "nothing to act on"
                       ) -> tuple[ScannedTarget, dict]:
    """The inverted target of a BAIT scan ``report`` (dict or JSON file), checked against the model, and the
    report itself.

    ``ValueError`` when the report is not a BAIT report (no ``target``), when its verdict is not backdoored
    (``purpose`` ends the message), or when the target's token ids fall outside ``tokenizer``'s vocabulary or
    do not spell its text under it ("the report belongs to another model").
    """
    payload, where = bait_record(report, purpose)
    target = payload["target"]
    ids = tuple(int(i) for i in target.get("token_ids") or ())
    text = str(target.get("text") or "")
    if not ids or any(i < 0 or i >= len(tokenizer) for i in ids) or \
            tokenizer.decode(list(ids), skip_special_tokens=True).strip() != text.strip():
        raise ValueError(f"{where}: the target's token ids do not spell its text under this tokenizer: "
                         "the report belongs to another model")
    return ScannedTarget(text, ids, where), payload
