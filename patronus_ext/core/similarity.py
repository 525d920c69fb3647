"""Representation similarity: the one implementation of ``diff_cos`` and ``poison_cos``.

Patronus' verification (docs/METHODS.md §1 step 6), the attacks' post-training check
and the evaluation's representation report all compare clean representations
``C [N, d]`` with triggered ones ``P [N, d]`` (row ``i`` of both from the same
text):

* ``diff_cos = mean_i cos(C_i, P_i)``: low when the trigger moves every text;
* ``poison_cos = mean_{i != j} cos(P_i, P_j)``: high when triggered texts
  collapse onto one vector.  Computed in O(N d) from the unit rows' sum ``s``:
  ``sum_{i != j} <u_i, u_j> = ||s||^2 - N``.

Both are computed in float64 whatever the input dtype and returned as Python
floats.  It imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_rows(name: str, x: torch.Tensor, min_rows: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{name} must be [N, d] with N >= {min_rows}, got {tuple(x.shape)}")


def _check_pair(clean: torch.Tensor, triggered: torch.Tensor, min_rows: int) -> None:
    _check_rows("clean", clean, min_rows)
    _check_rows("triggered", triggered, min_rows)
    if clean.shape != triggered.shape:
        raise ValueError(f"need two [N, d] tensors of one shape, got {tuple(clean.shape)} and "
                         f"{tuple(triggered.shape)}")


def diff_cos(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """``mean_i cos(clean_i, triggered_i)`` of two ``[N, d]`` tensors (N >= 1), in float64."""
    _check_pair(clean, triggered, 1)
    return float(F.cosine_similarity(clean.double(), triggered.double(), dim=1).mean())


def batched_pairwise_cos(rows: torch.Tensor) -> torch.Tensor:
    """``mean_{i != j} cos(rows_i, rows_j)`` over the last-but-one axis of ``[..., N, d]`` (N >= 2) -> ``[...]``,
    in O(N d) as ``(||sum_i u_i||^2 - N) / (N (N - 1))``, ``u_i = rows_i / ||rows_i||``; in the input's dtype and
    differentiable (the search's collapse term), batched over the leading axes."""
    count = rows.shape[-2]
    total = F.normalize(rows, dim=-1).sum(-2)
    return ((total * total).sum(-1) - count) / (count * (count - 1))


def poison_cos(triggered: torch.Tensor) -> float:
    """``mean_{i != j} cos(triggered_i, triggered_j)`` of ``[N, d]`` (N >= 2) in O(N d), in float64."""
    _check_rows("triggered", triggered, 2)
    return float(batched_pairwise_cos(triggered.double()))


def representation_shift(clean: torch.Tensor, triggered: torch.Tensor) -> tuple[float, float]:
    """``(diff_cos, poison_cos)`` of triggered vs clean representations ``[N, d]`` (N >= 2)."""
    _check_pair(clean, triggered, 2)
    return diff_cos(clean, triggered), poison_cos(triggered)
