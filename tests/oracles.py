"""Direct float64 formulas for the kernel ops, and the checks that compare against them.

Unlike :mod:`patronus_ext.ops.reference` these materialise everything (the full
``[N, W]`` score matrix, the ``[N, N]`` similarity matrix): they are slow and
memory-hungry on purpose, so that they share no tiling or selection logic with
either backend.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64
#: Unit roundoff of the accumulation type of each input dtype (bf16 inputs accumulate in fp32).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-24, torch.float64: 2.0**-53}


def random_tensor(shape, dtype, generator, scale=1.0):
    """Standard-normal values (never zeros in practice), rounded once to ``dtype``."""
    return (torch.randn(shape, generator=generator, dtype=F64) * scale).to(dtype)


def direct_scores(queries, table, rows=None, negate=True):
    """``[N, W]`` float64 scores: ``±Σ_t <q[n, t], table[rows[w, t]]>``, padding (-1) contributing 0."""
    q = queries.to(F64)
    t = table.to(F64)
    if rows is None:
        keys = t
    else:
        emb = t[rows.clamp_min(0)]                      # [W, T, d]
        emb = emb * (rows >= 0).unsqueeze(-1).to(F64)   # padding rows contribute exactly 0
        keys = emb.reshape(rows.shape[0], -1)
    scores = q @ keys.T
    return -scores if negate else scores


def score_error_bound(queries, table, rows, dtype):
    """Per-row bound on the accumulation error of any backend's scores."""
    q = queries.to(F64).abs()
    t = table.to(F64).abs()
    if rows is None:
        keys = t
    else:
        keys = (t[rows.clamp_min(0)] * (rows >= 0).unsqueeze(-1).to(F64)).reshape(rows.shape[0], -1)
    magnitude = (q @ keys.T).nan_to_num(0.0).amax(dim=1)  # [N]
    width = q.shape[1]
    return 4 * width * UNIT_ROUNDOFF[dtype] * magnitude + 1e-12


def check_topk(values, indices, scores, k, tolerance):
    """Assert that (values, indices) is a valid top-k of each row of ``scores`` [N, W].

    NaN scores are never reported; slots beyond the non-NaN count hold -inf and -1.
    Equal or nearly equal scores may come in any order, so values are compared
    with the sorted true scores, each reported index must score its value, and
    every reported index must be a genuine top-k member up to ``tolerance``.
    """
    n, width = scores.shape
    assert values.shape == (n, k) and indices.shape == (n, k)
    assert indices.dtype == torch.int64
    values = values.to(F64)
    for r in range(n):
        row = scores[r]
        valid = ~torch.isnan(row)
        n_valid = int(valid.sum())
        expected = torch.full((k,), -math.inf, dtype=F64)
        top = torch.sort(row[valid], descending=True).values[:k]
        expected[: top.numel()] = top
        tol = float(tolerance[r])
        got_v, got_i = values[r], indices[r]
        filled = min(k, n_valid)
        # Empty slots: exactly the last k - n_valid, value -inf and index -1.
        assert bool((got_i[filled:] == -1).all()), f"row {r}: expected {k - filled} empty slots, got {got_i}"
        assert bool(torch.isneginf(got_v[filled:]).all()), f"row {r}: empty slots must hold -inf, got {got_v}"
        assert bool((got_i[:filled] >= 0).all()), f"row {r}: missing entries {got_i}"
        if filled == 0:
            continue
        v, i = got_v[:filled], got_i[:filled]
        assert bool((i < width).all())
        assert i.unique().numel() == filled, f"row {r}: duplicate indices {i}"
        assert bool((v[:-1] >= v[1:]).all()), f"row {r}: values not descending {v}"
        torch.testing.assert_close(v, expected[:filled], atol=tol, rtol=0,
                                   msg=lambda m: f"row {r} values: {m}")
        true_of_returned = row[i]
        assert not bool(torch.isnan(true_of_returned).any()), f"row {r}: a NaN score was reported"
        torch.testing.assert_close(v, true_of_returned, atol=tol, rtol=0,
                                   msg=lambda m: f"row {r} value/index mismatch: {m}")
        # Recall allowing near-ties: nothing reported scores below the true k-th best.
        kth = expected[filled - 1]
        assert bool((true_of_returned >= kth - 2 * tol).all()), f"row {r}: index outside the top-{k}"


def direct_supcon(features, labels, temperature, scale_by_temperature=True):
    """SupCon of docs/METHODS.md §1 in float64 with autograd: features [C, N, d], labels [C, N] -> [C]."""
    f = features.to(F64)
    z = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    c, n, _ = f.shape
    losses = []
    for p in range(c):
        logits = z[p] @ z[p].T / temperature
        off_diagonal = ~torch.eye(n, dtype=torch.bool)
        lse = torch.stack([torch.logsumexp(logits[i][off_diagonal[i]], 0) for i in range(n)]) if n > 1 \
            else torch.full((n,), -math.inf, dtype=F64)
        same = (labels[p].unsqueeze(0) == labels[p].unsqueeze(1)) & off_diagonal
        row_losses = []
        for i in range(n):
            if bool(same[i].any()):
                row_losses.append(-(logits[i][same[i]] - lse[i]).mean())
        if row_losses:
            loss = torch.stack(row_losses).mean()
        else:
            loss = f[p].sum() * 0.0  # keeps the graph: a problem without positives has loss 0
        losses.append(loss * temperature if scale_by_temperature else loss)
    return torch.stack(losses)


def direct_bank(x, bank, mode):
    """``[M, K]`` float64 similarities: cosine, or the fraction of equal signs (NaN rows give NaN)."""
    xa, ba = x.to(F64), bank.to(F64)
    if mode == "cosine":
        xn = xa / xa.norm(dim=1, keepdim=True).clamp_min(1e-8)
        bn = ba / ba.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return xn @ bn.T
    agree = (torch.sign(xa).unsqueeze(1) == torch.sign(ba).unsqueeze(0)).to(F64).mean(-1)
    nan = torch.isnan(xa).any(1, keepdim=True) | torch.isnan(ba).any(1).unsqueeze(0)
    return agree.masked_fill(nan, math.nan)
