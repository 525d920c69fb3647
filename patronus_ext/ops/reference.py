"""Pure-PyTorch implementations of the three kernel ops.

These are the oracles every compiled backend is tested against, and the
fallback when the compiled module is missing.  They compute in the input dtype
promoted to at least float32 (float64 stays float64) and follow exactly the
semantics documented in :mod:`patronus_ext.ops`:

* ``token_topk`` tiles over the vocabulary with a running top-k, so even the
  fallback never materialises the ``[N, W]`` score matrix.
* ``supcon_loss`` is the SupCon loss of docs/METHODS.md §1, batched over ``C``.
* ``bank_similarity`` is the best cosine / sign agreement against a bank.

Input validation lives in :mod:`patronus_ext.ops`; these functions assume
validated inputs.
"""

from __future__ import annotations

import torch

#: Vocabulary tile of the fallback ``token_topk``; bounds its extra memory to
#: ``N * TOPK_TILE`` scores.
TOPK_TILE = 4096
#: Norm floor for cosine similarity and feature normalisation (as F.normalize).
NORM_EPS = 1e-12
COSINE_EPS = 1e-8


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gather_word_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[W, T] -> [W, T*d]`` sub-token embeddings, zeros where ``rows == -1``."""
    pad = rows < 0
    emb = table[rows.clamp_min(0)]  # [W, T, d]
    emb = emb.masked_fill(pad.unsqueeze(-1), 0)
    return emb.reshape(rows.shape[0], -1)


def _ranked(keys: torch.Tensor, nan: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the best ``k`` per row: every non-NaN entry (a real -inf included) before every NaN,
    then larger key first, then lower position (two stable sorts)."""
    by_nan = torch.argsort(nan.to(torch.int8), dim=1, stable=True)
    by_key = torch.sort(torch.gather(keys, 1, by_nan), dim=1, descending=True, stable=True).indices
    return torch.gather(by_nan, 1, by_key)[:, :k]


def _select_topk(scores: torch.Tensor, base: int, k: int):
    """Top-k of a score tile, NaN ranked after every real score (overwrites ``scores``); returns value,
    global index, nan flag."""
    nan = torch.isnan(scores)
    keyed = scores.masked_fill_(nan, float("-inf"))
    kk = min(k, scores.shape[1])
    if not bool(nan.any()):  # the common case: one top-k, no full sort of the tile (memory stays ~one tile)
        values, local = torch.topk(keyed, kk, dim=1)
        return values, local + base, torch.zeros_like(local, dtype=torch.bool)
    local = _ranked(keyed, nan, kk)
    return torch.gather(keyed, 1, local), local + base, torch.gather(nan, 1, local)


def token_topk(queries: torch.Tensor, table: torch.Tensor, k: int,
               rows: torch.Tensor | None = None, negate: bool = True):
    acc = accumulation_dtype(queries.dtype)
    q = queries.to(acc)
    n = q.shape[0]
    width = table.shape[0] if rows is None else rows.shape[0]
    best_v = q.new_full((n, 0), float("-inf"))
    best_i = torch.empty((n, 0), dtype=torch.long, device=q.device)
    best_nan = torch.empty((n, 0), dtype=torch.bool, device=q.device)
    sign = -1.0 if negate else 1.0
    for start in range(0, width, TOPK_TILE):
        stop = min(width, start + TOPK_TILE)
        if rows is None:
            keys = table[start:stop].to(acc)
        else:
            keys = gather_word_rows(table, rows[start:stop]).to(acc)
        scores = q @ keys.T
        if sign < 0:
            scores.neg_()  # in place: one score tile alive at a time
        v, i, nan = _select_topk(scores, start, k)
        cat_v = torch.cat([best_v, v], 1)
        cat_i = torch.cat([best_i, i], 1)
        cat_nan = torch.cat([best_nan, nan], 1)
        pos = _ranked(cat_v, cat_nan, min(k, cat_v.shape[1]))  # earlier tiles first: lower index on ties
        best_v = torch.gather(cat_v, 1, pos)
        best_i = torch.gather(cat_i, 1, pos)
        best_nan = torch.gather(cat_nan, 1, pos)
    # A NaN selected only for want of real scores is reported as an empty slot: value -inf, index -1.
    best_i = best_i.masked_fill(best_nan, -1)
    best_v = best_v.masked_fill(best_nan, float("-inf"))
    return best_v.to(torch.float32 if acc == torch.float32 else acc), best_i


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float,
                scale_by_temperature: bool = True) -> torch.Tensor:
    """SupCon over ``C`` problems: ``features [C, N, d]``, ``labels [C, N]`` -> ``[C]``.

    Differentiable through ordinary autograd.  Problems without a single
    positive pair return 0 (there is nothing to contrast).
    """
    acc = accumulation_dtype(features.dtype)
    z = normalize_rows(features.to(acc))
    logits = torch.bmm(z, z.transpose(1, 2)) / temperature  # [C, N, N]
    n = logits.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=2, keepdim=True)
    positives = (labels.unsqueeze(2) == labels.unsqueeze(1)) & ~eye
    pos_count = positives.sum(2)
    has_pos = pos_count > 0
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(2)
    row_loss = -pos_log_prob / pos_count.clamp_min(1)
    rows_used = has_pos.sum(1)
    loss = torch.where(has_pos, row_loss, torch.zeros_like(row_loss)).sum(1) / rows_used.clamp_min(1)
    if scale_by_temperature:
        loss = loss * temperature
    return loss.to(torch.float32 if acc == torch.float32 else acc)


def bank_similarity(x: torch.Tensor, bank: torch.Tensor, mode: str = "cosine"):
    acc = accumulation_dtype(x.dtype)
    xa, ba = x.to(acc), bank.to(acc)
    if mode == "cosine":
        xn = xa / xa.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)
        bn = ba / ba.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)
        sim = xn @ bn.T
    else:
        # Count equal signs as a dot product of one-hot sign codes (+, 0, -):
        # an [M, K] matmul instead of an [M, K, d] comparison.
        def codes(t):
            return torch.cat([(t > 0), (t == 0), (t < 0)], dim=1).to(acc)
        sim = (codes(xa) @ codes(ba).T) / xa.shape[1]
        sim = sim.masked_fill(torch.isnan(xa).any(1, keepdim=True)
                              | torch.isnan(ba).any(1).unsqueeze(0), float("nan"))
    nan = torch.isnan(sim)
    keyed = sim.masked_fill(nan, float("-inf"))
    best, index = keyed.max(dim=1)
    chosen_nan = torch.gather(nan, 1, index.unsqueeze(1)).squeeze(1)
    best = best.masked_fill(chosen_nan, float("nan"))
    index = index.masked_fill(chosen_nan, -1)
    return best.to(torch.float32 if acc == torch.float32 else acc), index
