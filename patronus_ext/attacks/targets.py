"""Predefined target vectors of the representation-level attacks (docs/METHODS.md §0).

Every scheme splits the hidden size ``d`` into equal blocks and fills them with
±1.  Block ``b`` of ``n`` covers dims ``[b*d//n, (b+1)*d//n)`` (equal when ``n``
divides ``d``, as for every real model; the integer boundaries keep any ``d``
usable).  The vectors are ±1 per dim, as the papers define them, whatever the
natural scale of the model's representation; ``scale`` multiplies them (the
attack configs expose it as ``target_scale``, default 1.0).
"""

from __future__ import annotations

import itertools
import math

import torch

#: NeuBA: the pairs of blocks (out of 4) that trigger i flips to -1.
NEUBA_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
SCHEMES = ("neuba", "por1", "por2")


def _check(dim: int, count: int, min_dim: int) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < min_dim:
        raise ValueError(f"hidden size must be an int >= {min_dim}, got {dim!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"number of triggers must be an int >= 1, got {count!r}")


def _bounds(dim: int, blocks: int) -> list[tuple[int, int]]:
    return [(b * dim // blocks, (b + 1) * dim // blocks) for b in range(blocks)]


def neuba_targets(dim: int, count: int, scale: float = 1.0) -> torch.Tensor:
    """``[count, dim]``: all +1, trigger i with blocks ``NEUBA_PAIRS[i]`` (of 4) set to -1; at most 6."""
    _check(dim, count, 4)
    if count > len(NEUBA_PAIRS):
        raise ValueError(f"NeuBA targets support at most {len(NEUBA_PAIRS)} triggers, got {count}")
    bounds = _bounds(dim, 4)
    out = torch.ones(count, dim)
    for i in range(count):
        for block in NEUBA_PAIRS[i]:
            lo, hi = bounds[block]
            out[i, lo:hi] = -1.0
    return out * scale


def por1_targets(dim: int, count: int, scale: float = 1.0) -> torch.Tensor:
    """``[count, dim]``: all -1, trigger i +1 on its first ``(i+1)*dim//count`` dims (POR-1)."""
    _check(dim, count, 1)
    if count > dim:
        raise ValueError(f"POR-1 needs at most d = {dim} triggers, got {count}")
    out = -torch.ones(count, dim)
    for i in range(count):
        out[i, :(i + 1) * dim // count] = 1.0
    return out * scale


def por2_subsets(buckets: int) -> list[tuple[int, ...]]:
    """Non-empty subsets of ``range(buckets)`` in the order POR-2 assigns them: by size, then lexicographic."""
    return [combo for size in range(1, buckets + 1) for combo in itertools.combinations(range(buckets), size)]


def por2_targets(dim: int, count: int, scale: float = 1.0) -> torch.Tensor:
    """``[count, dim]`` over ``ceil(log2 count)`` equal buckets: trigger 0 all -1, trigger i+1 +1 on subset i."""
    _check(dim, count, 1)
    buckets = math.ceil(math.log2(count)) if count > 1 else 0
    if buckets > dim:
        raise ValueError(f"POR-2 needs d >= ceil(log2 K) = {buckets}, got d = {dim}")
    bounds = _bounds(dim, buckets) if buckets else []
    subsets = por2_subsets(buckets)
    out = -torch.ones(count, dim)
    for i in range(1, count):
        for bucket in subsets[i - 1]:
            lo, hi = bounds[bucket]
            out[i, lo:hi] = 1.0
    return out * scale


def target_vectors(scheme: str, dim: int, count: int, scale: float = 1.0) -> torch.Tensor:
    """The ``[count, dim]`` targets of ``scheme`` (``neuba``, ``por1`` or ``por2``)."""
    builders = {"neuba": neuba_targets, "por1": por1_targets, "por2": por2_targets}
    if scheme not in builders:
        raise ValueError(f"target scheme must be one of {SCHEMES}, got {scheme!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"target scale must be a finite number > 0, got {scale}")
    return builders[scheme](dim, count, scale)
