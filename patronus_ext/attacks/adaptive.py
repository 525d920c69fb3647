"""Adaptive attacks aimed at contrastive trigger search: POR plus ``λ·L_adapt`` (docs/METHODS.md §0).

Type 1 keeps triggered outputs near their clean texts (small representation
shift), type 2 spreads one trigger's outputs apart (no tight cluster), type 3
pulls different triggers' outputs together (one shared cluster, which defeats
a search that separates triggers from each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttackContext, AttackMethod
from .batches import StepBatch
from .config import AdaptiveConfig
from .objectives import pairwise_mse
from .por import por_terms


def adaptive_term(kind: int, rep_c: torch.Tensor, rep_p: torch.Tensor, batch: StepBatch, count: int) -> torch.Tensor:
    """``L_adapt`` of type ``kind`` for clean reps ``[B, d]`` and poisoned reps ``[K*P, d]`` (grouped by trigger)."""
    per = batch.per_trigger
    if kind == 1:
        return F.mse_loss(rep_p, rep_c[batch.pair_index.to(rep_c.device)])
    groups = rep_p.view(count, per, -1)
    if kind == 2:
        return -torch.stack([pairwise_mse(g) for g in groups]).mean()
    if kind == 3:
        total = rep_p.sum() * 0.0
        for i in range(count):
            for j in range(i + 1, count):
                total = total + F.mse_loss(groups[i], groups[j])
        return total
    raise ValueError(f"adaptive type must be 1, 2 or 3, got {kind!r}")


class Adaptive(AttackMethod):
    config_class = AdaptiveConfig

    def __init__(self, kind: int):
        if kind not in (1, 2, 3):
            raise ValueError(f"adaptive type must be 1, 2 or 3, got {kind!r}")
        self.kind = kind
        self.name = f"adaptive{kind}"

    def loss(self, ctx: AttackContext, batch: StepBatch):
        cfg: AdaptiveConfig = ctx.config
        terms, rep_c, rep_p = por_terms(ctx, batch)
        terms["adaptive"] = cfg.adaptive_lambda * adaptive_term(self.kind, rep_c, rep_p, batch, len(cfg.triggers))
        return sum(terms.values()), terms
