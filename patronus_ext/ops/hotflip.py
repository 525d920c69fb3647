"""HotFlip candidate scoring: the one first-order token-replacement ranking (docs/METHODS.md §1 step 4).

Replacing trigger ``i``'s embedding ``e`` by a candidate's ``e'`` changes the
loss by about ``(e' - e) · g_i``, where ``g_i`` is the loss gradient summed
over the positions holding trigger ``i``.  The best replacements minimise
``e' · g_i``, so each candidate ``w`` scores ``S[i, w] = -g_i · E_w`` and the
top ``k`` per trigger are kept, with the kernel ``ops.token_topk`` (the
``[K, W]`` score matrix is never built).  Word level: ``g_i`` is ``[T, d]``
(one gradient per sub-token slot) and ``E_w`` the ``[T, d]`` embeddings of
word ``w``'s sub-tokens (``-1`` padding contributes 0).

Used by Patronus' trigger search (``detect.patronus.search``) and UOR's trigger
refinement (``attacks.uor``).  Knows nothing of models: gradients and a table in, indices out.
"""

from __future__ import annotations

from typing import Collection, Sequence

import torch

from .. import ops


def hotflip_candidates(grads: torch.Tensor, table: torch.Tensor, k: int, *, rows: torch.Tensor | None = None,
                       candidate_ids: torch.Tensor | None = None,
                       exclude: Sequence[Collection[int]] | None = None, dtype: torch.dtype | None = None,
                       precision: str = "exact", backend: str = "auto") -> list[list[int]]:
    """The top ``k`` HotFlip candidates of each trigger, best first.

    ``grads``: ``[K, d]`` or ``[K, T, d]`` gradient sums per trigger (and sub-token
    slot).  ``table``: the input embedding matrix ``[V, d]``.  Candidates are
    every table row (indices are token ids), or the words ``rows [W, T]``
    (``-1`` padded sub-token ids; indices into ``rows``), or the token subset
    ``candidate_ids [C]`` (indices into ``candidate_ids``).  ``exclude[i]``:
    candidate indices trigger ``i`` must not get (e.g. its current one); enough
    extra candidates are fetched that ``k`` remain when the pool allows.
    Scores are computed in ``dtype`` (default: the table's), on the table's
    device.  Candidates whose score is NaN are never returned, so a list may be
    shorter than ``k``.
    """
    if rows is not None and candidate_ids is not None:
        raise ValueError("pass at most one of rows (words) and candidate_ids (a token subset)")
    if grads.dim() not in (2, 3):
        raise ValueError(f"grads must be [K, d] or [K, T, d], got shape {tuple(grads.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    count = grads.shape[0]
    if exclude is not None and len(exclude) != count:
        raise ValueError(f"exclude needs one collection per trigger ({count}), got {len(exclude)}")
    dtype = dtype or table.dtype
    device = table.device
    if candidate_ids is not None:
        table = table[candidate_ids.to(device=device, dtype=torch.long)]
    table = table.to(dtype)
    if rows is not None:
        rows = rows.to(device)
    pool = rows.shape[0] if rows is not None else table.shape[0]
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    want = min(pool, k + extra)
    queries = grads.reshape(count, -1).to(device=device, dtype=dtype)
    _, index = ops.token_topk(queries, table, want, rows, negate=True, precision=precision, backend=backend)
    out = []
    for slot, picks in enumerate(index.tolist()):
        skip = exclude[slot] if exclude is not None else ()
        out.append([p for p in picks if p >= 0 and p not in skip][:k])
    return out
