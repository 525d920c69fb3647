"""POR (Shen et al. 2021): ``c·MSE(rep_θ(x_c), rep_ref(x_c)) + MSE(rep_θ(x_p), v_i)``, POR-1/POR-2 targets."""

from __future__ import annotations

import torch.nn.functional as F

from .base import AttackContext, AttackMethod
from .batches import StepBatch
from .config import PORConfig
from .objectives import rows, target_rows

#: POR weighs the clean term 0.5 for BERT and 1 for the other families.
BERT_CLEAN_WEIGHT = 0.5


def clean_weight(config: PORConfig, model_type: str) -> float:
    if config.clean_weight is not None:
        return float(config.clean_weight)
    return BERT_CLEAN_WEIGHT if model_type == "bert" else 1.0


def por_terms(ctx: AttackContext, batch: StepBatch):
    """The POR terms and the representations of clean and poisoned rows (one forward)."""
    enc = ctx.tokenize(batch.clean + batch.poisoned)
    reps = ctx.represent(enc)
    size = len(batch.clean)
    rep_c, rep_p = reps[:size], reps[size:]
    weight = clean_weight(ctx.config, ctx.adapter.model_type)
    ref = ctx.reference_represent(rows(enc, slice(0, size)))
    terms = {"reference": weight * F.mse_loss(rep_c, ref), "target": F.mse_loss(rep_p, target_rows(ctx, batch))}
    return terms, rep_c, rep_p


class POR(AttackMethod):
    name = "por"
    config_class = PORConfig

    def __init__(self, variant: int | None = None):
        self.variant = variant
        if variant == 2:
            self.name = "por2"

    def loss(self, ctx: AttackContext, batch: StepBatch):
        terms, _, _ = por_terms(ctx, batch)
        return sum(terms.values()), terms
