"""Input monitoring (Patronus, docs/METHODS.md §2): flag inputs that hold a confirmed trigger.

The check runs on the token ids the model will actually see (the same
tokenisation as the serving forward), matches every trigger's full token window
(multi-token words included) in one vectorised pass over the batch
(:func:`patronus_ext.data.triggers.match_triggers`), and by default counts a match
only on whole words (:mod:`patronus_ext.data.tokens` word starts), so a benign word
that merely contains a trigger's sub-token is not flagged on that alone.  No
model pass is needed; :meth:`InputMonitor.strip` removes the matched words from
the text (character spans from the tokenizer's offsets).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import torch

from ..data import tokens
from ..data.triggers import match_triggers, trigger_ids
from ..formats.scan_report import triggers_from_report


@dataclasses.dataclass(frozen=True)
class MonitoredTrigger:
    """A trigger the monitor looks for: its text (for reasons) and its identity (token ids)."""

    text: str
    token_ids: tuple[int, ...]
    group: int | None = None


@dataclasses.dataclass
class TriggerMatch:
    trigger: str
    token_ids: tuple[int, ...]
    start: int      # token positions [start, end) in the tokenised input
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "token_ids": list(self.token_ids), "start": self.start, "end": self.end}


class InputMonitor:
    """Lexical trigger check on token ids; build it from a scan report or a trigger list."""

    def __init__(self, tokenizer, triggers: Iterable[MonitoredTrigger | str | Sequence[int]], *,
                 whole_words: bool = True):
        items = list(triggers)
        if not items:
            raise ValueError("an input monitor needs at least one trigger")
        monitored: list[MonitoredTrigger] = []
        for item in items:
            if isinstance(item, MonitoredTrigger):
                monitored.append(item)
            else:
                ids = trigger_ids(tokenizer, [item])[0]
                text = item if isinstance(item, str) else tokenizer.decode(list(ids)).strip()
                monitored.append(MonitoredTrigger(text, ids))
        unique: dict[tuple[int, ...], MonitoredTrigger] = {}
        for trigger in monitored:
            unique.setdefault(tuple(trigger.token_ids), trigger)
        # Longer windows first: where a short trigger is part of a longer one, the longer one is reported.
        self.triggers = sorted(unique.values(), key=lambda t: -len(t.token_ids))
        self.tokenizer = tokenizer
        self.whole_words = whole_words
        self.table = tokens.word_table(tokenizer) if whole_words else None
        self._patterns = torch.full((len(self.triggers), max(len(t.token_ids) for t in self.triggers)), -1,
                                    dtype=torch.long)
        for index, trigger in enumerate(self.triggers):
            self._patterns[index, :len(trigger.token_ids)] = torch.tensor(trigger.token_ids)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    # -- construction from a scan report ---------------------------------------------------
    @classmethod
    def from_report(cls, report: dict | str | os.PathLike, tokenizer, *, whole_words: bool = True,
                    include_variants: bool = True) -> "InputMonitor":
        """The confirmed triggers of a ``patronus scan`` report (a dict or the JSON file).

        Refuses a report whose token ids do not spell its trigger texts under
        ``tokenizer`` (a report of another model's vocabulary), and a report
        with no confirmed trigger.
        """
        found = triggers_from_report(report, tokenizer, include_variants=include_variants,
                                     purpose="nothing to monitor")
        chosen = [MonitoredTrigger(text, ids, group)
                  for text, ids, group in zip(found.words, found.token_ids, found.groups)]
        return cls(tokenizer, chosen, whole_words=whole_words)

    # -- checking ----------------------------------------------------------------------------
    def _patterns_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = self._patterns.to(device)
        return self._on_device[device]

    def match(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, L]`` index into :attr:`triggers` of the trigger covering each position, ``-1`` elsewhere."""
        hits = torch.full_like(input_ids, -1)
        # Fast path: most served inputs hold no trigger's first token at all; only rows that do are matched.
        patterns = self._patterns_on(input_ids.device)
        candidate = torch.isin(input_ids, patterns[:, 0])
        if attention_mask is not None:
            candidate &= attention_mask.bool()
        rows = candidate.any(1).nonzero().flatten()
        if rows.numel() == 0:
            return hits
        ids = input_ids[rows]
        word_start = self.table.word_starts(ids) if self.table is not None else None
        found = match_triggers(ids, patterns, word_start=word_start)
        if attention_mask is not None:
            found = found.masked_fill(~attention_mask[rows].bool(), -1)
        hits[rows] = found
        return hits

    def flags(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[N]`` True for rows holding a trigger."""
        return (self.match(input_ids, attention_mask) >= 0).any(1)

    def matches(self, hits: torch.Tensor) -> list[list[TriggerMatch]]:
        """Per row, the trigger windows found (from :meth:`match`'s output)."""
        out: list[list[TriggerMatch]] = [[] for _ in range(hits.shape[0])]
        rows, cols = (hits >= 0).nonzero(as_tuple=True)
        if rows.numel() == 0:
            return out
        rows, cols, which = rows.tolist(), cols.tolist(), hits[hits >= 0].tolist()
        for row, col, index in zip(rows, cols, which):
            found = out[row]
            if found and found[-1].end == col and found[-1].token_ids == self.triggers[index].token_ids \
                    and col - found[-1].start < len(found[-1].token_ids):
                found[-1].end = col + 1       # the same window continues
            else:
                trigger = self.triggers[index]
                found.append(TriggerMatch(trigger.text, trigger.token_ids, col, col + 1))
        return out

    # -- cleaning ----------------------------------------------------------------------------
    def strip(self, texts: Sequence[str], max_length: int | None = None) -> list[str]:
        """``texts`` with every matched trigger word removed (whitespace tidied)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise RuntimeError("strip needs a fast tokenizer (character offsets)")
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=max_length is not None,
                             max_length=max_length, padding=True, return_offsets_mapping=True, return_tensors="pt")
        hits = self.match(enc["input_ids"], enc["attention_mask"])
        out = []
        for text, row_hits, offsets in zip(texts, hits, enc["offset_mapping"]):
            spans = [(int(a), int(b)) for (a, b), hit in zip(offsets.tolist(), row_hits.tolist()) if hit >= 0 and b > a]
            out.append(remove_spans(text, spans))
        return out


def remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the character ``spans`` (merged), white space tidied."""
    if not spans:
        return text
    spans = sorted(spans)
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, last = [], 0
    for start, end in merged:
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return " ".join("".join(pieces).split())

