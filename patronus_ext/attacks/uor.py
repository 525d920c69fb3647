"""UOR (Du et al. 2023): learned targets through supervised contrastive learning.

``SupCon(rep(all), labels) + reference_weight·MSE(rep_θ(x_c), rep_ref(x_c))``,
clean rows label 0, trigger i rows label i+1: each trigger's outputs form their
own tight cluster, away from clean outputs and from the other triggers,
wherever training puts it.  Optional trigger refinement replaces each trigger
token by a HotFlip candidate (gradient at the trigger positions scored against
the embedding table with :func:`patronus_ext.ops.hotflip.hotflip_candidates`, the
same first-order scoring as Patronus) when that lowers the loss on the current batch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .. import ops
from ..data import triggers as trig
from ..ops.hotflip import hotflip_candidates
from .base import AttackContext, AttackMethod
from .batches import StepBatch
from .config import UORConfig
from .objectives import rows

log = logging.getLogger(__name__)


def contrastive_labels(batch: StepBatch, device) -> torch.Tensor:
    clean = torch.zeros(len(batch.clean), dtype=torch.long)
    return torch.cat([clean, batch.poison_trigger + 1]).to(device)


def refinement_vocabulary(tokenizer, special_ids) -> tuple[torch.Tensor, list[str]]:
    """Token ids usable as one-token trigger words: alphabetic, >= 2 letters, re-tokenising to themselves."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids, words = [], []
    candidates = []
    for index, token in enumerate(tokens):
        if token is None or index in special_ids:
            continue
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if len(word) >= 2 and word.isascii() and word.isalpha():
            candidates.append((index, word))
    if not candidates:
        return torch.empty(0, dtype=torch.long), []
    encoded = tokenizer([" " + w for _, w in candidates], add_special_tokens=False)["input_ids"]
    for (index, word), toks in zip(candidates, encoded):
        if toks == [index]:
            ids.append(index)
            words.append(word)
    return torch.tensor(ids, dtype=torch.long), words


class UOR(AttackMethod):
    name = "uor"
    config_class = UORConfig
    learns_targets = True

    def __init__(self):
        self._vocab: tuple[torch.Tensor, list[str]] | None = None

    def target_matrix(self, config, dim):
        return None  # learned

    def check(self, config: UORConfig, model, tokenizer):
        if config.refine_triggers:
            widths = trig.word_token_ids(tokenizer, config.triggers).ne(-1).sum(1)
            if bool((widths != 1).any()):
                multi = [t for t, w in zip(config.triggers, widths.tolist()) if w != 1]
                raise ValueError(f"UOR trigger refinement needs single-token triggers; {multi} are several tokens")

    def loss(self, ctx: AttackContext, batch: StepBatch):
        cfg: UORConfig = ctx.config
        enc = ctx.tokenize(batch.clean + batch.poisoned)
        reps = ctx.represent(enc)
        size = len(batch.clean)
        terms = {"supcon": ops.supcon_loss(reps.float(), contrastive_labels(batch, reps.device), cfg.temperature)}
        ref = ctx.reference_represent(rows(enc, slice(0, size)))
        terms["reference"] = cfg.reference_weight * F.mse_loss(reps[:size], ref)
        return sum(terms.values()), terms

    def after_step(self, ctx: AttackContext, batch: StepBatch, step: int, updates: list[dict]) -> None:
        cfg: UORConfig = ctx.config
        if cfg.refine_triggers and (step + 1) % cfg.refine_every == 0:
            was_training = ctx.model.training
            ctx.model.eval()  # score candidates without dropout noise
            try:
                self.refine(ctx, batch, step + 1, updates)
            finally:
                ctx.model.train(was_training)

    def refine(self, ctx: AttackContext, batch: StepBatch, step: int, updates: list[dict]) -> None:
        """One round of HotFlip refinement over every trigger (greedy, accepted only if the loss drops)."""
        cfg: UORConfig = ctx.config
        adapter = ctx.adapter
        if self._vocab is None:
            self._vocab = refinement_vocabulary(adapter.tokenizer, adapter.special_ids)
        vocab_ids, vocab_words = self._vocab
        if vocab_ids.numel() == 0:
            log.warning("UOR refinement: no single-token word candidates in this vocabulary")
            return
        count = len(ctx.triggers)
        enc = ctx.tokenize(batch.clean)
        base = rows(enc, batch.pair_index.to(ctx.device))
        which = batch.poison_trigger.to(ctx.device)
        current = torch.tensor([ids[0] for ids in ctx.trigger_ids], device=ctx.device)
        inserted = trig.insert_token_triggers(base["input_ids"], base["attention_mask"], current[which].unsqueeze(1),
                                              cfg.insert_num, prefix=adapter.special_prefix,
                                              suffix=adapter.special_suffix,
                                              pad_id=adapter.tokenizer.pad_token_id or 0, generator=ctx.generator)
        labels = contrastive_labels(batch, ctx.device)
        with torch.no_grad():
            rep_c = ctx.represent(enc).float()
        embeds = adapter.embed(inserted.input_ids).detach().requires_grad_(True)
        rep_p = adapter.represent(inputs_embeds=embeds, attention_mask=inserted.attention_mask).float()
        loss = ops.supcon_loss(torch.cat([rep_c, rep_p]), labels, cfg.temperature)
        (grad,) = torch.autograd.grad(loss, embeds)
        # g_k: gradient summed over trigger i's rows and its positions (one masked reduction).
        per_row = (grad * inserted.trigger_mask.unsqueeze(-1)).sum(1)
        gsum = torch.zeros(count, grad.shape[-1], device=grad.device).index_add_(0, which, per_row)
        top = hotflip_candidates(gsum, adapter.embedding_matrix().detach(), cfg.refine_candidates,
                                 candidate_ids=vocab_ids, dtype=torch.float32)
        best_loss = float(loss.detach())
        rep_p = rep_p.detach()
        with torch.no_grad():
            for t in range(count):
                mine = (which == t).nonzero().squeeze(1)
                choice = None
                for cand in top[t]:
                    token = int(vocab_ids[cand])
                    if token in current.tolist():
                        continue
                    swapped = trig.replace_trigger_tokens(inserted, current[which].unsqueeze(1))
                    swapped[mine] = torch.where(inserted.trigger_mask[mine], torch.full_like(swapped[mine], token),
                                                swapped[mine])
                    trial = rep_p.clone()
                    trial[mine] = adapter.represent(swapped[mine], inserted.attention_mask[mine]).float()
                    value = float(ops.supcon_loss(torch.cat([rep_c, trial]), labels, cfg.temperature))
                    if value < best_loss:
                        best_loss, choice, best_rep = value, (cand, token), trial
                if choice is not None:
                    cand, token = choice
                    old = ctx.triggers[t]
                    updates.append({"step": step, "trigger_index": t, "old": old, "new": vocab_words[cand],
                                    "loss_after": best_loss})
                    log.info("UOR step %d: trigger %r -> %r (loss %.4f)", step, old, vocab_words[cand], best_loss)
                    current[t] = token
                    ctx.trigger_ids[t] = [token]
                    ctx.triggers[t] = vocab_words[cand]  # in place: the batch iterator reads this list
                    rep_p = best_rep
