"""Loss pieces several attacks share: targets per row, BERT-style masking, the LM objective,
the clean-behaviour terms and pairwise distances."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttackContext
from .batches import StepBatch


def target_rows(ctx: AttackContext, batch: StepBatch) -> torch.Tensor:
    """``[K*P, d]`` the target vector of every poisoned row."""
    return ctx.targets[batch.poison_trigger.to(ctx.device)]


def rows(enc: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {key: value[index] for key, value in enc.items()}


def special_positions(ctx: AttackContext, input_ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(input_ids, ctx.special_ids.to(input_ids.device))


def mask_for_mlm(ctx: AttackContext, enc: dict[str, torch.Tensor], prob: float, protect: torch.Tensor | None = None,
                 corrupt_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: ``prob`` of eligible tokens -> 80% mask, 10% random, 10% kept.

    Returns masked ``input_ids`` and labels (-100 elsewhere); ``corrupt_labels``
    replaces the labels with random token ids (BadPre).  Decoders (no mask
    token) keep their inputs and get the labels only, for the causal-LM loss.
    """
    ids = enc["input_ids"]
    eligible = enc["attention_mask"].bool() & ~special_positions(ctx, ids)
    if protect is not None:
        eligible &= ~protect
    chosen = (ctx.rand(ids.shape) < prob) & eligible
    vocab = ctx.adapter.vocab_size
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    if corrupt_labels:
        noise = torch.randint(0, vocab, ids.shape, generator=ctx.generator).to(ids.device)
        labels = torch.where(chosen, noise, labels)
    mask_id = ctx.adapter.tokenizer.mask_token_id
    if not ctx.can_mask or mask_id is None:
        return ids, labels
    roll = ctx.rand(ids.shape)
    random_ids = torch.randint(0, vocab, ids.shape, generator=ctx.generator).to(ids.device)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, labels


def lm_forward(ctx: AttackContext, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM cross-entropy, representation) from one forward of the LM model.

    Causal models: ``labels`` are per-position targets (the model shifts them);
    rows whose labels are all -100 contribute nothing.
    """
    if ctx.lm_kind is None:
        raise RuntimeError("this attack was set up without an LM head")
    out = ctx.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    return_dict=True)
    logits = out.logits
    if ctx.lm_kind == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    if bool((labels != -100).any()):
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=-100)
    else:
        loss = logits.sum() * 0.0
    rep = ctx.adapter.select_position(out.hidden_states[-1], input_ids, attention_mask)
    return loss, rep


def causal_labels(enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token labels of the real tokens (the model shifts them), -100 on padding."""
    return torch.where(enc["attention_mask"].bool(), enc["input_ids"], torch.full_like(enc["input_ids"], -100))


def clean_lm_inputs(ctx: AttackContext, enc: dict[str, torch.Tensor], mask_prob: float):
    """Masked ids and labels (MLM) or the ids and next-token labels (causal LM)."""
    if ctx.lm_kind == "causal":
        return enc["input_ids"], causal_labels(enc)
    return mask_for_mlm(ctx, enc, mask_prob)


def clean_terms(ctx: AttackContext, enc: dict[str, torch.Tensor], mask_prob: float, reference_weight: float,
                rep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The clean-behaviour terms of ``ctx.clean_objective`` on the clean rows ``enc``.

    ``mlm``: LM cross-entropy; ``reference``: ``MSE(rep_θ, rep_ref)`` on the
    unmasked clean inputs (``rep`` may pass an already computed ``rep_θ``).
    """
    terms: dict[str, torch.Tensor] = {}
    if "mlm" in ctx.clean_objective:
        ids, labels = clean_lm_inputs(ctx, enc, mask_prob)
        terms["mlm"], _ = lm_forward(ctx, ids, enc["attention_mask"], labels)
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
