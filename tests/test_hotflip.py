"""HotFlip candidate scoring: the one helper behind trigger search and UOR refinement."""

from __future__ import annotations

import pytest
import torch

from patronus_ext import ops
from patronus_ext.ops.hotflip import hotflip_candidates


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(11)


def _direct(scores: torch.Tensor, k: int, skip=None) -> list[list[int]]:
    order = torch.argsort(scores.double(), dim=1, descending=True, stable=True).tolist()
    return [[c for c in row if skip is None or c not in skip[i]][:k] for i, row in enumerate(order)]


def test_token_level_scores_are_minus_g_dot_e(gen):
    grads, table = torch.randn(3, 8, generator=gen), torch.randn(40, 8, generator=gen)
    got = hotflip_candidates(grads, table, 5, backend="reference")
    assert got == _direct(-(grads.double() @ table.double().T), 5)
    assert hotflip_candidates(grads, table, 5) == got                      # auto backend: same ranking
    assert hotflip_candidates(grads.unsqueeze(1), table, 5) == got         # [K, 1, d] is the same query


def test_word_level_rows_with_padding(gen):
    grads, table = torch.randn(2, 3, 6, generator=gen), torch.randn(30, 6, generator=gen)
    rows = torch.randint(0, 30, (12, 3), generator=gen)
    rows[::3, 2] = -1
    rows[1, 1:] = -1
    emb = torch.where((rows >= 0).unsqueeze(-1), table[rows.clamp_min(0)], torch.zeros(()))  # [W, T, d]
    scores = -(grads.reshape(2, -1).double() @ emb.reshape(12, -1).double().T)
    assert hotflip_candidates(grads, table, 4, rows=rows) == _direct(scores, 4)


def test_candidate_subset_and_exclusions(gen):
    grads, table = torch.randn(2, 5, generator=gen), torch.randn(50, 5, generator=gen)
    subset = torch.tensor([7, 3, 44, 12, 0, 31, 9])
    scores = -(grads.double() @ table[subset].double().T)
    got = hotflip_candidates(grads, table, 3, candidate_ids=subset)
    assert got == _direct(scores, 3)                                         # indices into the subset
    skip = [{got[0][0]}, {got[1][0], got[1][1]}]
    excluded = hotflip_candidates(grads, table, 3, candidate_ids=subset, exclude=skip)
    assert excluded == _direct(scores, 3, skip) and all(len(r) == 3 for r in excluded)
    assert hotflip_candidates(grads, table, 20, candidate_ids=subset) == _direct(scores, 7)  # k capped by the pool
    with pytest.raises(ValueError, match="at most one"):
        hotflip_candidates(grads, table, 3, rows=subset.view(-1, 1), candidate_ids=subset)
    with pytest.raises(ValueError, match="one collection per trigger"):
        hotflip_candidates(grads, table, 3, exclude=[()])
    with pytest.raises(ValueError, match="k must be"):
        hotflip_candidates(grads, table, 0)


def test_nan_candidates_are_never_returned(gen):
    grads, table = torch.randn(2, 4, generator=gen), torch.randn(6, 4, generator=gen)
    table[2] = float("nan")
    got = hotflip_candidates(grads, table, 6)
    assert all(2 not in row and len(row) == 5 for row in got)


def test_same_numbers_as_the_inline_search_and_uor_code(gen):
    """The helper reproduces what detect/search.py and attacks/uor.py computed inline before."""
    table = torch.randn(60, 8, generator=gen)
    grads = torch.randn(4, 2, 8, generator=gen)
    rows = torch.randint(0, 60, (25, 2), generator=gen)
    current = [0, 5, 9, 24]
    # search.py: want = min(W, n + 1), drop -1 and the slot's current candidate, keep n
    _, index = ops.token_topk(grads.reshape(4, 16), table, min(25, 4 + 1), rows, negate=True)
    inline = [[p for p in picks if p >= 0 and p != current[s]][:4] for s, picks in enumerate(index.tolist())]
    assert hotflip_candidates(grads, table, 4, rows=rows, exclude=[(c,) for c in current]) == inline
    # uor.py: a float32 table of the candidate ids, k = min(n, C), drop -1
    gsum, ids = torch.randn(3, 8, generator=gen), torch.tensor([3, 17, 40, 2, 59, 33])
    _, top = ops.token_topk(gsum.float(), table[ids].float(), min(5, 6), negate=True)
    inline = [[c for c in row if c >= 0] for row in top.tolist()]
    assert hotflip_candidates(gsum, table, 5, candidate_ids=ids, dtype=torch.float32) == inline
