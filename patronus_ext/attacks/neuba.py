"""NeuBA (Zhang et al. 2021): ``MLM(x_clean) + MSE(rep(mask15(x_poison)), v_i)``, NeuBA targets."""

from __future__ import annotations

import torch.nn.functional as F

from .base import AttackContext, AttackMethod
from .batches import StepBatch
from .config import NeuBAConfig
from .objectives import clean_objective_with_head, clean_terms, mask_for_mlm, target_rows


class NeuBA(AttackMethod):
    name = "neuba"
    config_class = NeuBAConfig
    lm_head = "optional"

    def clean_objective(self, config: NeuBAConfig, lm_head_fresh):
        return clean_objective_with_head(config.clean_objective, lm_head_fresh)

    def loss(self, ctx: AttackContext, batch: StepBatch):
        cfg: NeuBAConfig = ctx.config
        enc_p = ctx.tokenize(batch.poisoned)
        # mask15 of the poisoned input, never masking the trigger itself (it must stay visible).
        masked, _ = mask_for_mlm(ctx, enc_p, cfg.mask_prob, protect=ctx.trigger_positions(enc_p["input_ids"]))
        rep_p = ctx.adapter.represent(masked, enc_p["attention_mask"])
        terms = {"target": F.mse_loss(rep_p, target_rows(ctx, batch))}
        terms.update(clean_terms(ctx, ctx.tokenize(batch.clean), cfg.mask_prob, cfg.reference_weight))
        return sum(terms.values()), terms
