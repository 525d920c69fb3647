"""One construction of a served, monitored model for every face (``patronus monitor``, ``patronus serve``,
the service benchmark): load the model, read the scan report and the bank, wire the monitors.

    from patronus_ext.monitor.build import build_monitored_model, describe
    served = build_monitored_model("out/por", "scan.json", action="strip", device="cpu")
    [d.to_dict() for d in served.check(["a clean sentence"])]

:class:`PlainModel` serves the same model with no check at all (the same
``check`` interface and decision shape, ``flagged`` always false): the baseline
a benchmark compares the monitor with.  :func:`text_problem` is the input check
every face applies before a text reaches the tokenizer.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import lm
from ..core.validation import check_int
from ..formats import scan_report
from ..formats.bank import load_bank
from ..lm.prompting import PromptFormat
from .generation_guard import MAX_NEW_TOKENS, GuardedGenerator, TargetGuard
from .input import InputMonitor
from .model import MAX_TEXT_CHARS, Decision, MonitoredModel, _served, check_text, screen_texts
from .output import OutputMonitor


def text_problem(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why ``text`` cannot be served (``None`` when it can): :func:`check_text`'s rules, and no lone
    surrogate (``"\\ud800"`` decoded from a JSON escape is not Unicode text; the tokenizer refuses it
    and would fail the whole batch)."""
    problem = check_text(text, max_chars)
    if problem is None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"text holds a lone surrogate at character {exc.start} (not valid Unicode)"
    return problem


def report_bank_path(report: dict, report_path: str | os.PathLike | None) -> str | None:
    """The bank a scan report names (its ``"bank"`` field), if that file exists: as written, else
    beside the report."""
    named = report.get("bank")
    if not isinstance(named, str) or not named:
        return None
    candidates = [Path(named)]
    if report_path is not None and not Path(named).is_absolute():
        candidates.append(Path(report_path).parent / Path(named).name)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return None


def read_report(path: str | os.PathLike) -> dict:
    """A scan report as a dict; a missing or non-JSON file is an error naming it."""
    return scan_report.read_report(path)[0]


def build_monitored_model(model: str, report: str | os.PathLike | None = None, bank: str | os.PathLike | None = None,
                          *, mode: str = "sign", threshold: float | None = None, action: str = "flag",
                          device: str | None = None, allow_pickle: bool = False, max_length: int = 128,
                          max_chars: int = MAX_TEXT_CHARS, use_report_bank: bool = True) -> MonitoredModel:
    """A :class:`MonitoredModel` of ``model`` (folder or hub name) with the input monitor of the scan
    ``report`` and the output monitor of ``bank``.

    At least one of ``report`` and ``bank`` is needed.  Without ``bank`` the
    report's own bank (its ``"bank"`` field) is used when that file exists and
    ``use_report_bank`` is true.  A report with no confirmed trigger gives no
    input monitor when a bank is given, and is an error otherwise.
    """
    if report is None and bank is None:
        raise ValueError("monitoring needs a scan report (--scan-report), an attack-vector bank (--bank) or both")
    payload = read_report(report) if report is not None else None
    if bank is None and payload is not None and use_report_bank:
        bank = report_bank_path(payload, report)
    attack_bank = load_bank(bank) if bank is not None else None
    adapter = lm.load_adapter(model, allow_pickle=allow_pickle, device=device, max_length=max_length)
    lm.check_model_sanity(adapter.model, adapter.tokenizer, str(model))  # never serve a broken model
    input_monitor = None
    if payload is not None and (payload.get("triggers") or attack_bank is None):
        try:
            input_monitor = InputMonitor.from_report(payload, adapter.tokenizer)
        except ValueError as exc:
            raise ValueError(f"{report}: {exc}") from exc
    output_monitor = OutputMonitor(attack_bank, mode, threshold) if attack_bank is not None else None
    monitored = MonitoredModel(adapter.model, adapter.tokenizer, input_monitor=input_monitor,
                               output_monitor=output_monitor, action=action, max_length=max_length,
                               max_chars=max_chars)
    monitored.adapter.source = adapter.source or str(model)
    return monitored


def is_bait_report(payload: dict) -> bool:
    """Whether a scan report is BAIT's (an inverted target of a causal LM, served by :func:`build_guarded_generator`)."""
    return payload.get("method") == "bait"


def build_guarded_generator(model: str, report: str | os.PathLike, *, action: str = "reject",
                            max_new_tokens: int = MAX_NEW_TOKENS, device: str | None = None,
                            allow_pickle: bool = False, max_chars: int = MAX_TEXT_CHARS) -> GuardedGenerator:
    """A :class:`GuardedGenerator` of the causal LM ``model`` under the BAIT ``report``: its inverted target
    guards the answers, its confirmed triggers (if any) the prompts.

    Refused with ``ValueError``: a report that is not BAIT's or found no backdoor (nothing to guard against),
    an encoder ``model``, a report whose target or trigger ids do not spell their texts under the model's
    tokenizer (another model's report); a broken model is refused by the sanity check.
    """
    # The report's own faults first (a clean verdict on an encoder is answered as a clean verdict).
    payload, _ = scan_report.bait_record(report, "there is no target to guard against: serve the model without "
                                                 "this report")
    config = lm.load_config(model)
    if lm.lm_head_kind(config) != "causal":
        raise ValueError(f"{model} is an encoder ({config.model_type}); a BAIT report guards the generation of "
                         "a causal LM: serve an encoder with a Patronus or LMSanitator scan report")
    tokenizer = lm.load_tokenizer(model)
    guard = TargetGuard.from_report(payload, tokenizer, action=action)
    input_monitor = None
    if payload.get("triggers"):
        try:
            input_monitor = InputMonitor.from_report(payload, tokenizer)
        except ValueError as exc:
            raise ValueError(f"{report}: {exc}") from exc
    causal = lm.load_model(model, "causal", allow_pickle=allow_pickle, device=device)
    lm.check_model_sanity(causal, tokenizer, str(model))  # never serve a broken model
    system = (payload.get("config") or {}).get("system")
    return GuardedGenerator(causal, tokenizer, guard, input_monitor=input_monitor,
                            prompt_format=PromptFormat(system=system if isinstance(system, str) else None),
                            max_new_tokens=max_new_tokens, max_chars=max_chars,
                            source=lm.resolve_model_source(model) or str(model))


def build_plain_model(model: str, *, device: str | None = None, allow_pickle: bool = False, max_length: int = 128,
                      max_chars: int = MAX_TEXT_CHARS) -> "PlainModel":
    """``model`` served with no monitor (see :class:`PlainModel`)."""
    adapter = lm.load_adapter(model, allow_pickle=allow_pickle, device=device, max_length=max_length)
    lm.check_model_sanity(adapter.model, adapter.tokenizer, str(model))  # never serve a broken model
    plain = PlainModel(adapter.model, adapter.tokenizer, max_length=max_length, max_chars=max_chars)
    plain.adapter.source = adapter.source or str(model)
    return plain


class PlainModel:
    """The model's own forward with no monitoring: ``check(texts) -> [Decision]`` with ``flagged``
    false and action ``pass`` for every servable text (bad texts get error decisions, as monitored)."""

    input_monitor = None
    output_monitor = None
    action = "none"

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_length: int = 128, max_chars: int = MAX_TEXT_CHARS):
        check_int("max_length", max_length)
        check_int("max_chars", max_chars)
        self.adapter = lm.ModelAdapter(model, tokenizer, max_length=max_length)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_chars = max_chars
        self._lock = threading.Lock()

    @torch.no_grad()
    def check(self, texts: Sequence[str]) -> list[Decision]:
        texts, out, valid = screen_texts(texts, self.max_chars)
        if valid:
            with self._lock:
                enc = self.adapter.tokenize([texts[i] for i in valid], self.max_length)
                result = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], return_dict=True)
            logits = getattr(result, "logits", None)
            if logits is not None and logits.dim() != 2:
                logits = None
            for row, i in enumerate(valid):
                out[i] = Decision(False, "pass", [], texts[i], _served(logits, row))
        return out  # type: ignore[return-value]

    __call__ = check


def describe(served: MonitoredModel | PlainModel | GuardedGenerator) -> dict[str, Any]:
    """What is being served: model, number of monitored triggers, bank size, action, thresholds (a guarded
    generator: its own :meth:`GuardedGenerator.describe`)."""
    if isinstance(served, GuardedGenerator):
        return served.describe()
    inp, out = served.input_monitor, served.output_monitor
    return {"model": served.adapter.source,
            "monitor": inp is not None or out is not None,
            "triggers": len(inp.triggers) if inp is not None else None,
            "bank": len(out.bank) if out is not None else None,
            "mode": out.mode if out is not None else None,
            "threshold": out.threshold if out is not None else None,
            "action": served.action,
            "max_length": served.max_length,
            "max_chars": served.max_chars}


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (strict JSON has no NaN / Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(value) for key, value in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
