"""Guarding a causal LM's generation with an inverted backdoor target (docs/METHODS.md §7).

A BAIT scan report (``patronus scan --method bait --report``) names the attacker's response the model was
found to give.  :class:`TargetGuard` watches the tokens as greedy generation produces them: once the last
``match_tokens`` generated tokens equal the target's first ``match_tokens`` (anywhere in the answer), the
answer is flagged -- with no forward beyond the generation's own.  Actions: ``flag`` (keep generating,
return the text flagged), ``reject`` (stop there, return no text), ``replace`` (stop there, return
``replacement``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch
from torch import nn

from ..core.validation import check_choice, check_int
from ..formats.scan_report import target_from_report
from ..lm.adapter import accepts_argument, position_ids
from ..lm.generation import stop_token_ids
from ..lm.prompting import left_pad, prompt_token_ids

GUARD_ACTIONS = ("flag", "reject", "replace")
REPLACEMENT = "[withheld: the answer began a backdoor target]"


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

    def tripped(self, generated: Sequence[int]) -> bool:
        """Whether ``generated`` ends with the target's head (called once per new token)."""
        head = self.head
        return len(generated) >= len(head) and tuple(generated[-len(head):]) == head

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
    a row stops at a stop token, or when the guard trips and its action is ``reject``/``replace``.
    """
    check_int("max_new_tokens", max_new_tokens)
    rows = prompt_token_ids(tokenizer, list(prompts), templated)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(model, tokenizer)
    keep = {"logits_to_keep": 1} if accepts_argument(model, "logits_to_keep") else {}
    cache_name = "cache" if accepts_argument(model, "cache") else "past_key_values"
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
        for step in range(max_new_tokens):
            token = result.logits[:, -1].argmax(-1)
            for r, t in enumerate(token.tolist()):
                if done[r]:
                    continue
                if t in stops:
                    done[r] = True
                    continue
                generated[r].append(t)
                if not flagged[r] and guard.tripped(generated[r]):
                    flagged[r] = True
                    done[r] = guard.action != "flag"
            if all(done) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            cache = getattr(result, cache_name, None)
            if cache is None:
                cache = result.past_key_values
            result = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions,
                           use_cache=True, **{cache_name: cache}, **keep)
        for r in range(len(chunk)):
            text = tokenizer.decode(generated[r], skip_special_tokens=True).strip()
            reasons = [f"the answer began the backdoor target {guard.target_text!r}"] if flagged[r] else []
            if flagged[r] and guard.action == "reject":
                text = ""
            elif flagged[r] and guard.action == "replace":
                text = guard.replacement
            out.append({"text": text, "flagged": flagged[r], "reasons": reasons})
    return out
