"""token_topk and bank_similarity against direct float64 formulas, on both backends.

Shapes are chosen around the CPU kernels' tiles (equal row blocks of at most
384 query rows, vocabulary tiles of ~500-4096 columns, vocabulary splits when
rows are few) and are never tile multiples.  SupCon lives in test_ops_supcon.py, input validation
in test_ops_validation.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from patronus_ext import ops

from oracles import check_topk, direct_bank, direct_scores, random_tensor, score_error_bound

DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def out_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def run_topk(backend, queries, table, k, rows=None, negate=True):
    values, indices = ops.token_topk(queries, table, k, rows, negate, backend=backend)
    assert values.dtype == out_dtype(queries.dtype)
    assert indices.dtype == torch.int64
    scores = direct_scores(queries, table, rows, negate)
    check_topk(values, indices, scores, k, score_error_bound(queries, table, rows, queries.dtype))
    return values, indices


# --------------------------------------------------------------------------- token level

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, vocab, dim, k", [
    (1, 1, 3, 1),          # smallest problem, k = W
    (3, 50, 7, 50),        # k = W, vocabulary split across threads
    (5, 1301, 24, 10),     # few rows: the vocabulary is split and merged
    (130, 1500, 20, 1),    # crosses the 128-row block and the vocabulary tile, k = 1
    (257, 777, 33, 17),    # one row block, vocabulary split, odd everything
    (401, 300, 9, 5),      # two row blocks (at most 384 rows each)
    (1001, 150, 5, 150),   # four row blocks, k = W
])
def test_token_topk_matches_direct_scores(backend, generator, dtype, n, vocab, dim, k):
    queries = random_tensor((n, dim), dtype, generator)
    table = random_tensor((vocab, dim), dtype, generator)
    run_topk(backend, queries, table, k)


@pytest.mark.parametrize("negate", [True, False])
def test_token_topk_sign_of_scores(backend, generator, negate):
    queries = random_tensor((4, 16), torch.float32, generator)
    table = random_tensor((300, 16), torch.float32, generator)
    values, _ = run_topk(backend, queries, table, 5, negate=negate)
    flipped, _ = ops.token_topk(queries, table, 5, negate=not negate, backend=backend)
    # The best of -s is minus the worst of s, never the same set.
    assert not torch.allclose(values, flipped)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_topk_ties_from_duplicate_rows(backend, generator, dtype):
    table = random_tensor((400, 12), dtype, generator)
    table[5] *= 10                   # long enough to be the best match of -table[5] below
    table[10:20] = table[5]          # eleven candidates with exactly equal scores
    table[300:310] = table[7]
    queries = random_tensor((6, 12), dtype, generator)
    queries[3] = -table[5]           # makes the duplicated row the best of query 3 (negate=True)
    values, indices = run_topk(backend, queries, table, 15)
    assert set(indices[3, :11].tolist()) == {5, *range(10, 20)}


@pytest.mark.parametrize("k", [1, 4, 9])
def test_token_topk_nan_scores_are_never_reported(backend, generator, k):
    queries = random_tensor((6, 8), torch.float32, generator)
    table = random_tensor((9, 8), torch.float32, generator)
    table[[1, 4, 6, 7]] = math.nan       # 5 finite candidates remain
    queries[2, 3] = math.nan             # every score of query 2 is NaN
    values, indices = run_topk(backend, queries, table, k)
    assert bool((indices[2] == -1).all()) and bool(torch.isneginf(values[2]).all())
    reported = set(indices[indices >= 0].tolist())
    assert reported.isdisjoint({1, 4, 6, 7})
    if k > 5:
        assert bool((indices[:2, 5:] == -1).all())


def test_token_topk_a_real_minus_inf_outranks_nan(backend):
    """Every backend: NaN is never selected, a real -inf score is (with its index)."""
    queries = torch.ones((2, 4))
    table = torch.full((6, 4), 0.5)
    table[[0, 3]] = math.nan          # NaN scores at the lowest indices
    table[4] = math.inf               # q . e = +inf -> score -inf (negate=True)
    values, indices = run_topk(backend, queries, table, 5)
    for r in range(2):
        assert set(indices[r].tolist()[:3]) == {1, 2, 5} and indices[r].tolist()[3:] == [4, -1]  # ties: any order
        assert values[r, 3].item() == -math.inf and values[r, 4].item() == -math.inf


def test_token_topk_nan_in_a_large_vocabulary(backend, generator):
    """NaN columns scattered across vocabulary tiles and splits."""
    queries = random_tensor((3, 16), torch.float32, generator)
    table = random_tensor((2500, 16), torch.float32, generator)
    nan_rows = torch.randperm(2500, generator=generator)[:700]
    table[nan_rows] = math.nan
    _, indices = run_topk(backend, queries, table, 40)
    assert not set(indices.flatten().tolist()) & set(nan_rows.tolist())


def test_token_topk_accepts_non_contiguous_inputs(backend, generator):
    queries = random_tensor((16, 10), torch.float32, generator).T      # [10, 16] view
    table = random_tensor((16, 200), torch.float32, generator).T       # [200, 16] view
    assert not queries.is_contiguous() and not table.is_contiguous()
    run_topk(backend, queries, table, 7)


@given(n=st.integers(1, 140), vocab=st.integers(1, 1400), dim=st.integers(1, 40),
       k_fraction=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from(DTYPES), negate=st.booleans())
def test_token_topk_random_shapes(backend, n, vocab, dim, k_fraction, seed, dtype, negate):
    generator = torch.Generator().manual_seed(seed)
    k = max(1, round(k_fraction * min(vocab, 64)))
    queries = random_tensor((n, dim), dtype, generator)
    table = random_tensor((vocab, dim), dtype, generator)
    run_topk(backend, queries, table, k, negate=negate)


# --------------------------------------------------------------------------- word level

def random_rows(words, tokens, vocab, generator, pad_fraction=0.3):
    """``[W, T]`` sub-token ids; trailing ``-1`` padding on some words (first token always real)."""
    rows = torch.randint(0, vocab, (words, tokens), generator=generator)
    lengths = torch.randint(1, tokens + 1, (words,), generator=generator)
    padded = torch.rand(words, generator=generator) < pad_fraction
    lengths = torch.where(padded, lengths, torch.full_like(lengths, tokens))
    rows[torch.arange(tokens).unsqueeze(0) >= lengths.unsqueeze(1)] = -1
    return rows


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, words, tokens, vocab, dim, k", [
    (1, 1, 1, 3, 5, 1),
    (4, 60, 3, 40, 8, 60),        # k = W, words sharing sub-tokens
    (8, 1100, 4, 300, 16, 5),     # several gathered tiles, vocabulary split
    (131, 700, 2, 500, 12, 3),    # gathered tiles, vocabulary split
    (390, 90, 3, 50, 6, 7),       # two row blocks
])
def test_word_topk_matches_direct_scores(backend, generator, dtype, n, words, tokens, vocab, dim, k):
    table = random_tensor((vocab, dim), dtype, generator)
    rows = random_rows(words, tokens, vocab, generator)
    queries = random_tensor((n, tokens * dim), dtype, generator)
    run_topk(backend, queries, table, k, rows=rows)


def test_word_topk_padding_contributes_zero(backend, generator):
    table = random_tensor((5, 4), torch.float64, generator)
    rows = torch.tensor([[2, -1], [2, 3], [-1, -1]])     # the last word is all padding: score 0
    queries = random_tensor((3, 8), torch.float64, generator)
    values, indices = ops.token_topk(queries, table, 3, rows, negate=False, backend=backend)
    expected = {0: queries[:, :4] @ table[2], 1: queries[:, :4] @ table[2] + queries[:, 4:] @ table[3],
                2: torch.zeros(3, dtype=torch.float64)}
    for r in range(3):
        for slot in range(3):
            word = int(indices[r, slot])
            torch.testing.assert_close(values[r, slot], expected[word][r])


def test_word_topk_with_nan_sub_token(backend, generator):
    table = random_tensor((30, 6), torch.float32, generator)
    table[7] = math.nan
    rows = random_rows(200, 3, 30, generator)
    rows[rows == 7] = 8
    rows[[3, 50, 120], 1] = 7                            # three words contain the NaN token
    queries = random_tensor((5, 18), torch.float32, generator)
    _, indices = run_topk(backend, queries, table, 20, rows=rows)
    assert not {3, 50, 120} & set(indices.flatten().tolist())


@given(n=st.integers(1, 20), words=st.integers(1, 300), tokens=st.integers(1, 4),
       vocab=st.integers(1, 60), dim=st.integers(1, 12), k_fraction=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1))
def test_word_topk_random_shapes(backend, n, words, tokens, vocab, dim, k_fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    k = max(1, round(k_fraction * words))
    table = random_tensor((vocab, dim), torch.float32, generator)
    rows = random_rows(words, tokens, vocab, generator)
    queries = random_tensor((n, tokens * dim), torch.float32, generator)
    run_topk(backend, queries, table, k, rows=rows)


def test_token_topk_hand_example(backend):
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    queries = torch.tensor([[3.0, 1.0]])
    # scores q.t = [3, 2, -4]; negate=True ranks -scores: [-3, -2, 4]
    values, indices = ops.token_topk(queries, table, 2, backend=backend)
    assert indices.tolist() == [[2, 1]]
    assert values.tolist() == [[4.0, -2.0]]
    rows = torch.tensor([[0, 1], [2, -1]])
    words_q = torch.tensor([[1.0, 1.0, 1.0, 1.0]])         # token 0 part (1,1), token 1 part (1,1)
    values, indices = ops.token_topk(words_q, table, 2, rows, negate=False, backend=backend)
    # word 0: <(1,1),(1,0)> + <(1,1),(0,2)> = 1 + 2 = 3; word 1: <(1,1),(-1,-1)> + 0 = -2
    assert indices.tolist() == [[0, 1]]
    assert values.tolist() == [[3.0, -2.0]]


def test_backends_agree_on_the_selected_set(generator):
    """auto picks a backend; any backend returns the same top-k up to ties."""
    queries = random_tensor((20, 32), torch.float32, generator)
    table = random_tensor((3000, 32), torch.float32, generator)
    sets = []
    for backend in ("auto", "reference") + (("ext",) if ops._extension.state().loaded else ()):
        _, indices = ops.token_topk(queries, table, 8, backend=backend)
        sets.append([set(row) for row in indices.tolist()])
    assert all(s == sets[0] for s in sets)


# --------------------------------------------------------------------------- bank_similarity

def check_bank(best, index, sims, tolerance, exact_ties=False):
    m = sims.shape[0]
    assert best.shape == (m,) and index.shape == (m,) and index.dtype == torch.int64
    best = best.to(torch.float64)
    for r in range(m):
        row = sims[r]
        valid = ~torch.isnan(row)
        if not bool(valid.any()):
            assert math.isnan(best[r]) and int(index[r]) == -1, f"row {r}: all NaN -> NaN, -1"
            continue
        top = row[valid].max()
        assert abs(float(best[r]) - float(top)) <= tolerance, f"row {r}: best {best[r]} vs {top}"
        i = int(index[r])
        assert 0 <= i < row.numel() and not math.isnan(row[i])
        assert abs(float(row[i]) - float(best[r])) <= tolerance
        if exact_ties:  # ties go to the lowest index
            first = int(torch.nonzero(row == top)[0])
            assert i == first, f"row {r}: tie must go to index {first}, got {i}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, kbank, dim", [(1, 1, 1), (7, 3, 17), (130, 9, 64), (65, 40, 100)])
def test_bank_cosine_matches_direct(backend, generator, dtype, m, kbank, dim):
    x = random_tensor((m, dim), dtype, generator)
    bank = random_tensor((kbank, dim), dtype, generator)
    best, index = ops.bank_similarity(x, bank, "cosine", backend=backend)
    assert best.dtype == out_dtype(dtype)
    tolerance = 16 * dim * (2.0**-53 if dtype == torch.float64 else 2.0**-24)
    check_bank(best, index, direct_bank(x, bank, "cosine"), tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, kbank, dim", [(1, 1, 1), (9, 4, 63), (70, 12, 64), (129, 5, 130)])
def test_bank_sign_matches_direct(backend, generator, dtype, m, kbank, dim):
    x = random_tensor((m, dim), dtype, generator)
    bank = random_tensor((kbank, dim), dtype, generator)
    best, index = ops.bank_similarity(x, bank, "sign", backend=backend)
    check_bank(best, index, direct_bank(x, bank, "sign"), 1e-6, exact_ties=True)


def test_bank_ties_go_to_the_lowest_index(backend, generator):
    x = random_tensor((5, 24), torch.float32, generator)
    bank = random_tensor((6, 24), torch.float32, generator)
    bank[4] = bank[1]
    bank[5] = bank[1]
    x[2] = bank[1] * 3.0                       # cosine 1 with bank rows 1, 4 and 5
    for mode in ("cosine", "sign"):
        best, index = ops.bank_similarity(x, bank, mode, backend=backend)
        assert int(index[2]) == 1
        assert float(best[2]) == pytest.approx(1.0, abs=1e-6)


def test_bank_nan_rows(backend, generator):
    x = random_tensor((4, 10), torch.float32, generator)
    bank = random_tensor((3, 10), torch.float32, generator)
    x[1, 5] = math.nan
    bank[0, 2] = math.nan
    for mode in ("cosine", "sign"):
        best, index = ops.bank_similarity(x, bank, mode, backend=backend)
        assert math.isnan(best[1]) and int(index[1]) == -1
        assert bool((index[[0, 2, 3]] > 0).all()), "the NaN bank row is never chosen"
        check_bank(best, index, direct_bank(x, bank, mode), 1e-5)
        all_nan = torch.full_like(bank, math.nan)
        best, index = ops.bank_similarity(x, all_nan, mode, backend=backend)
        assert bool(torch.isnan(best).all()) and bool((index == -1).all())


def test_bank_sign_hand_example(backend):
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.0, 1.0, -1.0, 0.0]])
    bank = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0], [1.0, -1.0, 1.0, -1.0]])
    best, index = ops.bank_similarity(x, bank, "sign", backend=backend)
    # row 0 agrees on 2/4, 2/4, 4/4; row 1 (zeros agree only with zeros) on 1/4, 1/4, 0 -> index 0
    assert best.tolist() == [1.0, 0.25] and index.tolist() == [2, 0]
    best, index = ops.bank_similarity(x[:1], bank, "cosine", backend=backend)
    assert int(index[0]) == 2
    assert float(best[0]) == pytest.approx(10 / (math.sqrt(30) * 2), rel=1e-6)
