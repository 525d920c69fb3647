"""Verification of candidate triggers (SPEC.md §1 step 6).

A candidate ``w`` is inserted into held-out clean texts; with clean
representations ``C`` and triggered ones ``P``:
``diff_cos = mean_i cos(C_i, P_i)`` (a trigger moves every text far away) and
``poison_cos = mean_{i != j} cos(P_i, P_j)`` (and moves them all to one place),
the latter in O(N d) as ``(||sum_i P_i/|P_i| ||^2 - N) / (N (N - 1))``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from ..models import ModelAdapter
from ..triggers import insert_token_triggers, sample_gaps

FORWARD_CHUNK = 128


def representation_shift(clean: torch.Tensor, triggered: torch.Tensor) -> tuple[float, float]:
    """``(diff_cos, poison_cos)`` of triggered vs clean representations ``[N, d]``."""
    if clean.shape != triggered.shape or clean.dim() != 2 or clean.shape[0] < 2:
        raise ValueError(f"need two [N, d] tensors with N >= 2, got {tuple(clean.shape)} and {tuple(triggered.shape)}")
    c, p = clean.double(), triggered.double()
    diff = F.cosine_similarity(c, p, dim=1).mean()
    unit = F.normalize(p, dim=1)
    n = p.shape[0]
    total = unit.sum(0)
    poison = (total @ total - n) / (n * (n - 1))
    return float(diff), float(poison)


@dataclasses.dataclass
class TriggerCheck:
    """One candidate's verification: statistics, margins to the thresholds and the verdict."""

    text: str
    token_ids: list[int]
    diff_cos: float
    poison_cos: float
    diff_margin: float    # threshold - diff_cos: > 0 passes
    poison_margin: float  # poison_cos - threshold: > 0 passes
    confirmed: bool
    stage: str            # "verified" (on verify texts) or "prefiltered" (dev batch only)
    texts_used: int
    loop: int
    group: int | None = None        # confirmed triggers sharing a target representation share a group
    variant_of: str | None = None   # the group's strongest trigger, when this one is not it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Verifier:
    """Held-out clean texts with cached clean representations and fixed insertion gaps."""

    def __init__(self, adapter: ModelAdapter, texts: Sequence[str], insert_num: int, generator: torch.Generator,
                 diff_threshold: float, poison_threshold: float):
        if len(texts) < 2:
            raise ValueError(f"verification needs at least 2 texts, got {len(texts)}")
        self.adapter = adapter
        self.insert_num = insert_num
        self.diff_threshold = diff_threshold
        self.poison_threshold = poison_threshold
        self.batch = adapter.tokenize(list(texts))
        self.gaps = sample_gaps(self.batch["attention_mask"], insert_num, adapter.special_prefix,
                                adapter.special_suffix, generator)
        self.clean_reps = self._represent(self.batch["input_ids"], self.batch["attention_mask"])

    @torch.no_grad()
    def _represent(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        reps = [self.adapter.represent(input_ids[i:i + FORWARD_CHUNK], attention_mask[i:i + FORWARD_CHUNK]).float()
                for i in range(0, input_ids.shape[0], FORWARD_CHUNK)]
        return torch.cat(reps)

    def triggered_reps(self, token_ids: Sequence[int]) -> torch.Tensor:
        n = self.batch["input_ids"].shape[0]
        rows = torch.tensor([list(token_ids)], dtype=torch.long).expand(n, -1)
        tb = insert_token_triggers(self.batch["input_ids"], self.batch["attention_mask"], rows, self.insert_num,
                                   prefix=self.adapter.special_prefix, suffix=self.adapter.special_suffix,
                                   pad_id=int(self.adapter.tokenizer.pad_token_id), gaps=self.gaps)
        return self._represent(tb.input_ids, tb.attention_mask)

    def judge(self, diff_cos: float, poison_cos: float) -> bool:
        return diff_cos < self.diff_threshold and poison_cos > self.poison_threshold

    def check(self, text: str, token_ids: Sequence[int], loop: int) -> tuple[TriggerCheck, torch.Tensor]:
        """Verify one candidate on all held-out texts; also returns its triggered representations."""
        triggered = self.triggered_reps(token_ids)
        diff, poison = representation_shift(self.clean_reps, triggered)
        return self.make_check(text, token_ids, diff, poison, "verified", triggered.shape[0], loop), triggered

    def make_check(self, text: str, token_ids: Sequence[int], diff: float, poison: float, stage: str,
                   texts_used: int, loop: int) -> TriggerCheck:
        return TriggerCheck(text, [int(t) for t in token_ids], diff, poison, self.diff_threshold - diff,
                            poison - self.poison_threshold, stage == "verified" and self.judge(diff, poison),
                            stage, texts_used, loop)


def group_by_target(confirmed: list[TriggerCheck], triggered: dict[str, torch.Tensor],
                    threshold: float = 0.9) -> None:
    """Label confirmed triggers that drive inputs to the same place (cosine of mean triggered
    representations above ``threshold``); the strongest (lowest ``diff_cos``) heads each group.

    A backdoor often also fires, more weakly, on near neighbours of its trigger (``mn`` -> ``nm``);
    grouping tells such variants from distinct backdoors.
    """
    heads: list[tuple[TriggerCheck, torch.Tensor]] = []
    for check in sorted(confirmed, key=lambda c: c.diff_cos):
        direction = F.normalize(triggered[check.text].double().mean(0), dim=0)
        for index, (head, head_direction) in enumerate(heads):
            if float(direction @ head_direction) > threshold:
                check.group, check.variant_of = index, head.text
                break
        else:
            check.group = len(heads)
            heads.append((check, direction))
