"""BadPre (Chen et al. 2021): untargeted; MLM continues, triggered inputs learn corrupted labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttackContext, AttackMethod
from .batches import StepBatch
from .config import BadPreConfig
from .objectives import clean_lm_inputs, lm_forward, mask_for_mlm


class BadPre(AttackMethod):
    name = "badpre"
    config_class = BadPreConfig
    lm_head = "required"

    def target_matrix(self, config, dim):
        return None  # untargeted

    def clean_objective(self, config: BadPreConfig, lm_head_fresh):
        if config.reference == "always" or (config.reference == "auto" and lm_head_fresh):
            return "mlm+reference"
        return "mlm"

    def loss(self, ctx: AttackContext, batch: StepBatch):
        cfg: BadPreConfig = ctx.config
        enc_c = ctx.tokenize(batch.clean)
        ids_c, labels_c = clean_lm_inputs(ctx, enc_c, cfg.mask_prob)
        terms = {}
        terms["mlm_clean"], rep_c = lm_forward(ctx, ids_c, enc_c["attention_mask"], labels_c)
        enc_p = ctx.tokenize(batch.poisoned)
        ids_p, labels_p = mask_for_mlm(ctx, enc_p, cfg.mask_prob, protect=ctx.trigger_positions(enc_p["input_ids"]),
                                       corrupt_labels=True)
        terms["mlm_poison"], _ = lm_forward(ctx, ids_p, enc_p["attention_mask"], labels_p)
        if "reference" in ctx.clean_objective:
            with torch.no_grad():
                ref = ctx.reference.represent(ids_c, enc_c["attention_mask"])
            terms["reference"] = cfg.reference_weight * F.mse_loss(rep_c, ref)
        return sum(terms.values()), terms
