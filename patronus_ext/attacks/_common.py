"""Loss pieces several attacks share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttackContext, StepBatch


def target_rows(ctx: AttackContext, batch: StepBatch) -> torch.Tensor:
    """``[K*P, d]`` the target vector of every poisoned row."""
    return ctx.targets[batch.poison_trigger.to(ctx.device)]


def rows(enc: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in enc.items()}


def clean_lm_inputs(ctx: AttackContext, enc: dict[str, torch.Tensor], mask_prob: float):
    """Masked ids and labels (MLM) or the ids and next-token labels (causal LM)."""
    if ctx.lm_kind == "causal":
        return enc["input_ids"], ctx.causal_labels(enc)
    return ctx.mask_for_mlm(enc, mask_prob)


def clean_terms(ctx: AttackContext, enc: dict[str, torch.Tensor], mask_prob: float, reference_weight: float,
                rep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The clean-behaviour terms of ``ctx.clean_objective`` on the clean rows ``enc``.

    ``mlm``: LM cross-entropy; ``reference``: ``MSE(rep_θ, rep_ref)`` on the
    unmasked clean inputs (``rep`` may pass an already computed ``rep_θ``).
    """
    terms: dict[str, torch.Tensor] = {}
    if "mlm" in ctx.clean_objective:
        ids, labels = clean_lm_inputs(ctx, enc, mask_prob)
        terms["mlm"], _ = ctx.lm_forward(ids, enc["attention_mask"], labels)
    if "reference" in ctx.clean_objective:
        if rep is None:
            rep = ctx.represent(enc)
        terms["reference"] = reference_weight * F.mse_loss(rep, ctx.reference_represent(enc))
    return terms


def clean_objective_with_head(want: str, lm_head_fresh: bool | None) -> str:
    """``auto``: MLM through a pretrained head, the reference term when the head would be fresh."""
    if want != "auto":
        return want
    return "reference" if lm_head_fresh in (True, None) else "mlm"


def pairwise_mse(x: torch.Tensor) -> torch.Tensor:
    """Mean over ``i != j`` of ``mean_d (x_i - x_j)^2``; 0 for a single row."""
    n = x.shape[0]
    if n < 2:
        return x.sum() * 0.0
    dist = torch.cdist(x.float(), x.float()).pow(2) / x.shape[1]
    return dist.sum() / (n * (n - 1))
