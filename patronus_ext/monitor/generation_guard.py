"""Guarding a causal LM's generation with an inverted backdoor target (docs/METHODS.md §7).

A BAIT scan report (``patronus scan --method bait --report``) names the attacker's response the model was
found to give.  :class:`TargetGuard` watches the tokens as greedy generation produces them: once the last
``match_tokens`` generated tokens equal the target's first ``match_tokens`` (anywhere in the answer), the
answer is flagged -- with no forward beyond the generation's own.  Actions: ``flag`` (keep generating,
return the text flagged), ``reject`` (stop there, return no text), ``replace`` (stop there, return
``replacement``).

:class:`GuardedGenerator` serves a causal LM under a BAIT report (``patronus serve --scan-report bait.json``,
``POST /generate``): the report's confirmed triggers drive the :class:`~.input.InputMonitor` on the prompt
before any generation (a prompt holding one is flagged; with ``reject``/``replace`` it is not answered at all),
and the target guard watches the answer.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Sequence

import torch
from torch import nn

from ..core.validation import check_choice, check_int
from ..data.instructions import InstructionExample
from ..formats.scan_report import target_from_report
from ..lm.adapter import accepts_argument, position_ids
from ..lm.generation import stop_token_ids
from ..lm.prompting import PromptFormat, left_pad, prompt_token_ids
from .input import InputMonitor, TriggerMatch
from .model import MAX_TEXT_CHARS, Decision, check_text, screen_texts

GUARD_ACTIONS = ("flag", "reject", "replace")
REPLACEMENT = "[withheld: the answer began a backdoor target]"
#: Default cap on the tokens one /generate request may ask for (``patronus serve --max-new-tokens``).
MAX_NEW_TOKENS = 64


@dataclasses.dataclass(frozen=True)
class TargetGuard:
    """Stop condition on a backdoor target's first ``match_tokens`` tokens (see the module doc)."""

    target_ids: tuple[int, ...]
    target_text: str = ""
    match_tokens: int = 4
    action: str = "reject"
    replacement: str = REPLACEMENT

    def __post_init__(self):
        check_choice("action", self.action, GUARD_ACTIONS)
        check_int("match_tokens", self.match_tokens)
        if not self.target_ids:
            raise ValueError("a target guard needs the target's token ids")

    @property
    def head(self) -> tuple[int, ...]:
        return tuple(self.target_ids[:self.match_tokens])

    def tripped(self, generated: Sequence[int], limit: int | None = None) -> bool:
        """Whether ``generated`` ends with the target's head (called once per new token); with ``limit``, only
        a head that begins within the first ``limit`` tokens counts."""
        head = self.head
        begins = len(generated) - len(head)
        return begins >= 0 and (limit is None or begins < limit) and tuple(generated[begins:]) == head

    def pending(self, generated: Sequence[int], limit: int) -> bool:
        """Whether ``generated`` ends with a proper beginning of the head that begins within the first
        ``limit`` tokens: the next tokens decide whether the answer says the target."""
        head = self.head
        return any(len(generated) - k < limit and tuple(generated[-k:]) == head[:k]
                   for k in range(1, min(len(head), len(generated) + 1)))

    def reason(self) -> dict[str, Any]:
        """Why an answer was flagged (the shape of the monitors' reasons: a ``kind`` and what matched)."""
        return {"kind": "target", "target": self.target_text, "token_ids": list(self.head),
                "detail": f"the answer began the backdoor target {self.target_text!r}"}

    @classmethod
    def from_report(cls, report: dict | str | os.PathLike, tokenizer, **settings) -> "TargetGuard":
        """The guard of a BAIT report's inverted target; the target's ids must spell its text under
        ``tokenizer`` (else the report belongs to another model)."""
        target, _ = target_from_report(report, tokenizer, purpose="nothing to guard against")
        return cls(target.token_ids, target.text, **settings)


@torch.no_grad()
def guarded_generate(model: nn.Module, tokenizer, prompts: Sequence[str], guard: TargetGuard, *, templated: bool,
                     max_new_tokens: int = 32, batch_size: int = 16) -> list[dict[str, Any]]:
    """Greedy answers to ``prompts`` under ``guard``: ``{"text", "flagged", "reasons"}`` per prompt.

    Batched with left padding and a key-value cache like :func:`patronus_ext.lm.generation.greedy_generate`;
    a row stops at a stop token, or when the guard trips and its action is ``reject``/``replace``.  An answer
    cut by ``max_new_tokens`` while its last tokens begin the target's head is generated on (at most
    ``match_tokens - 1`` more tokens, never returned) until the head is complete or broken, so a short
    ``max_new_tokens`` cannot return the target's first words unflagged.
    """
    check_int("max_new_tokens", max_new_tokens)
    rows = prompt_token_ids(tokenizer, list(prompts), templated)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(model, tokenizer)
    keep = {"logits_to_keep": 1} if accepts_argument(model, "logits_to_keep") else {}
    cache_name = "cache" if accepts_argument(model, "cache") else "past_key_values"
    lookahead = len(guard.head) - 1
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask = left_pad(chunk, pad)
        ids, mask = ids.to(device), mask.to(device)
        positions = position_ids(mask)
        generated: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        flagged = [False] * len(chunk)
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
        for step in range(max_new_tokens + lookahead):
            token = result.logits[:, -1].argmax(-1)
            for r, t in enumerate(token.tolist()):
                if done[r]:
                    continue
                if t in stops:
                    done[r] = True
                    continue
                generated[r].append(t)
                if not flagged[r] and guard.tripped(generated[r], max_new_tokens):
                    flagged[r] = True
                    done[r] = guard.action != "flag"
                if len(generated[r]) >= max_new_tokens and not done[r]:
                    done[r] = flagged[r] or not guard.pending(generated[r], max_new_tokens)
            if all(done) or step == max_new_tokens + lookahead - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            cache = getattr(result, cache_name, None)
            if cache is None:
                cache = result.past_key_values
            result = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions,
                           use_cache=True, **{cache_name: cache}, **keep)
        for r in range(len(chunk)):
            text = tokenizer.decode(generated[r][:max_new_tokens], skip_special_tokens=True).strip()
            reasons = [guard.reason()] if flagged[r] else []
            if flagged[r] and guard.action == "reject":
                text = ""
            elif flagged[r] and guard.action == "replace":
                text = guard.replacement
            out.append({"text": text, "flagged": flagged[r], "reasons": reasons})
    return out


class GuardedGenerator:
    """A causal LM answering prompts under a BAIT report: the input check with the report's confirmed
    triggers, then greedy generation under the target guard.  ``check(texts) -> [Decision]`` is the input
    side alone (``POST /check``); :meth:`generate` answers (``POST /generate``).  Calls are thread-safe.

    A prompt is the user's message: it is formatted as the scan formatted its prompts (``prompt_format``: the
    model's chat template, with the report's system prompt).  A prompt holding a recovered trigger is flagged
    with a reason naming the trigger; with ``reject`` it gets no text and with ``replace`` the replacement,
    without generating; with ``flag`` it is answered under the guard (both reasons listed).
    """

    def __init__(self, model: nn.Module, tokenizer, guard: TargetGuard, *, input_monitor: InputMonitor | None = None,
                 prompt_format: PromptFormat | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                 max_chars: int = MAX_TEXT_CHARS, source: str = ""):
        check_int("max_new_tokens", max_new_tokens)
        check_int("max_chars", max_chars)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.guard = guard
        self.input_monitor = input_monitor
        self.prompt_format = prompt_format or PromptFormat()
        self.templated = self.prompt_format.uses_template(tokenizer)
        self.max_new_tokens = max_new_tokens
        self.max_chars = max_chars
        self.source = source
        self._lock = threading.Lock()

    @property
    def action(self) -> str:
        return self.guard.action

    def prompt_text(self, prompt: str) -> str:
        """The text the model reads for the user's ``prompt`` (up to where its answer begins)."""
        return self.prompt_format.prompt(self.tokenizer, InstructionExample(prompt, "", ""))

    def check_prompt(self, prompt: Any) -> str:
        """``prompt`` if it can be answered, else ``ValueError`` saying why."""
        problem = check_text(prompt, self.max_chars)
        if problem is not None:
            raise ValueError(problem.replace("text", "prompt", 1))
        return prompt

    def check_max_new_tokens(self, value: Any) -> int:
        """``value`` (``None``: the cap) if it is a token count within the cap, else ``ValueError``."""
        if value is None:
            return self.max_new_tokens
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"max_new_tokens must be an integer, got {type(value).__name__}")
        if not 1 <= value <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in 1..{self.max_new_tokens}, got {value}")
        return value

    def trigger_reasons(self, prompts: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Per prompt, the recovered triggers it holds (on the token ids the model reads; positions count
        from the formatted prompt's first token)."""
        if self.input_monitor is None:
            return [[] for _ in prompts]
        rows = prompt_token_ids(self.tokenizer, [self.prompt_text(p) for p in prompts], self.templated)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = left_pad(rows, pad)
        found = self.input_monitor.matches(self.input_monitor.match(ids, mask))
        return [[_trigger_reason(m, ids.shape[1] - len(row)) for m in matches] for row, matches in zip(rows, found)]

    def check(self, texts: Sequence[str]) -> list[Decision]:
        """The input side alone: a decision per prompt (``reject`` for a flagged prompt under ``reject`` or
        ``replace``, which /generate would not answer; ``flag`` under ``flag``)."""
        texts, out, valid = screen_texts(texts, self.max_chars)
        with self._lock:
            reasons = self.trigger_reasons([texts[i] for i in valid]) if valid else []
        for i, why in zip(valid, reasons):
            if not why:
                out[i] = Decision(False, "pass", [], texts[i])
            elif self.action == "flag":
                out[i] = Decision(True, "flag", why, texts[i])
            else:
                out[i] = Decision(True, "reject", why, None)
        return out  # type: ignore[return-value]

    __call__ = check

    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None, *,
                 batch_size: int = 16) -> list[dict[str, Any]]:
        """``{"text", "flagged", "reasons"}`` per prompt (see the class doc); a bad prompt or token count is
        ``ValueError``."""
        if isinstance(prompts, str):
            raise TypeError("generate expects a list of prompts, got a single string")
        prompts = [self.check_prompt(p) for p in prompts]
        steps = self.check_max_new_tokens(max_new_tokens)
        with self._lock:
            inputs = self.trigger_reasons(prompts)
            out: list[dict[str, Any] | None] = [None] * len(prompts)
            answer = []
            for i, why in enumerate(inputs):
                if why and self.action != "flag":
                    out[i] = {"text": "" if self.action == "reject" else self.guard.replacement, "flagged": True,
                              "reasons": why}
                else:
                    answer.append(i)
            if answer:
                answers = guarded_generate(self.model, self.tokenizer, [self.prompt_text(prompts[i]) for i in answer],
                                           self.guard, templated=self.templated, max_new_tokens=steps,
                                           batch_size=batch_size)
                for i, result in zip(answer, answers):
                    result["reasons"] = inputs[i] + result["reasons"]
                    result["flagged"] = bool(result["reasons"])
                    out[i] = result
        return out  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        """What is served (``GET /health``)."""
        return {"model": self.source, "monitor": True, "generate": True,
                "triggers": len(self.input_monitor.triggers) if self.input_monitor is not None else 0,
                "target": self.guard.target_text, "match_tokens": len(self.guard.head), "action": self.action,
                "max_new_tokens": self.max_new_tokens, "max_chars": self.max_chars,
                "chat_template": self.templated, "system": self.prompt_format.system}


def _trigger_reason(match: TriggerMatch, offset: int) -> dict[str, Any]:
    return {"kind": "trigger", "trigger": match.trigger, "token_ids": list(match.token_ids),
            "start": match.start - offset, "end": match.end - offset,
            "detail": f"the prompt holds the recovered trigger {match.trigger!r}"}
