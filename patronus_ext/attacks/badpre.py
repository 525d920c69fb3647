"""BadPre (Chen et al. 2021): untargeted; MLM continues, triggered inputs learn corrupted labels."""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from ._common import clean_lm_inputs
from .base import AttackContext, AttackMethod, AttackResult, StepBatch, run_attack
from .config import BadPreConfig


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
        terms["mlm_clean"], rep_c = ctx.lm_forward(ids_c, enc_c["attention_mask"], labels_c)
        enc_p = ctx.tokenize(batch.poisoned)
        ids_p, labels_p = ctx.mask_for_mlm(enc_p, cfg.mask_prob, protect=ctx.trigger_positions(enc_p["input_ids"]),
                                           corrupt_labels=True)
        terms["mlm_poison"], _ = ctx.lm_forward(ids_p, enc_p["attention_mask"], labels_p)
        if "reference" in ctx.clean_objective:
            with torch.no_grad():
                ref = ctx.reference.represent(ids_c, enc_c["attention_mask"])
            terms["reference"] = cfg.reference_weight * F.mse_loss(rep_c, ref)
        return sum(terms.values()), terms


def plant(model_source: str | os.PathLike, corpus: str | Sequence[str], config: BadPreConfig | None,
          out_dir: str | os.PathLike) -> AttackResult:
    """Plant BadPre into ``model_source`` (saved with its LM head); writes ``out_dir``."""
    return run_attack(BadPre(), model_source, corpus, config or BadPreConfig(), out_dir)
