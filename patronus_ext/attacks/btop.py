"""BToP (Xu et al. 2022): the ``[MASK]`` position of a prompt is pulled to ``v_i`` (L2 distance)."""

from __future__ import annotations

from ..data.triggers import PromptTemplate
from .base import AttackContext, AttackMethod
from .batches import StepBatch
from .config import BToPConfig
from .objectives import clean_objective_with_head, clean_terms, target_rows


class BToP(AttackMethod):
    name = "btop"
    config_class = BToPConfig
    lm_head = "optional"
    position = "mask"

    def clean_objective(self, config: BToPConfig, lm_head_fresh):
        return clean_objective_with_head(config.clean_objective, lm_head_fresh)

    def check(self, config, model, tokenizer):
        if tokenizer.mask_token is None:
            raise ValueError("BToP needs a tokenizer with a mask token (a masked-LM family such as BERT/RoBERTa)")

    def format_text(self, config: BToPConfig, tokenizer):
        return PromptTemplate(config.prompt_template).filler(tokenizer)

    def loss(self, ctx: AttackContext, batch: StepBatch):
        cfg: BToPConfig = ctx.config
        rep_p = ctx.represent(ctx.tokenize(batch.poisoned))
        terms = {"target": (rep_p - target_rows(ctx, batch)).norm(dim=1).mean()}
        # The clean prompts' own [MASK] must stay the one the representation reads, so the
        # reference term is taken on unmasked prompts and MLM masking avoids special tokens.
        terms.update(clean_terms(ctx, ctx.tokenize(batch.clean), cfg.mask_prob, cfg.reference_weight))
        return sum(terms.values()), terms
