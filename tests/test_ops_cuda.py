"""GPU tests of the CUDA kernels (``torch.ops.patronus.*`` on CUDA tensors).

Every op is checked against a float64 computation on fresh random inputs (never
zeros), at shapes that are not multiples of the kernels' tiles, with k = 1,
k = W and k = 256, word-level candidates with -1 padding, NaN rows and exact
ties.  Outputs are allocated over poisoned memory: before each run the caching
allocator is filled with garbage blocks (0x7F bytes: a huge float / an
out-of-range index; then 0xFF bytes: NaN / -1) and freed, so an unwritten
output element shows up.  Also: gradcheck in double, ``torch.library.opcheck``,
CUDA-graph capture of bank_similarity, and the memory bounds (no [N, W] score
matrix, no N x N SupCon matrix).

Skipped cleanly without a CUDA device or without CUDA kernels in the compiled
module.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from patronus_ext import ops
from patronus_ext.ops import _extension, reference


def _cuda_kernels_reason() -> str | None:
    """Why the CUDA kernels cannot be tested here, or None."""
    return _extension.cuda_unavailable_reason()


_SKIP = _cuda_kernels_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

DEV = "cuda"
INF = float("inf")

# Norm-wise relative error budgets against float64 (see the issue): fp32 exact, tf32, bf16.
RTOL = {"exact": 1e-5, "tf32": 5e-4, "bf16": 1e-2, "float64": 1e-12, "bf16-inputs": 1e-5}


# ----------------------------------------------------------------- helpers
def _seed(*parts) -> int:
    """A stable seed from the test parameters (Python's hash() is salted per process)."""
    return zlib.crc32(repr(parts).encode()) % 100_000


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator(device=DEV)
    g.manual_seed(seed)
    return g


def _randn(*shape, seed, dtype=torch.float32):
    x = torch.randn(*shape, generator=_gen(seed), device=DEV, dtype=torch.float32)
    return x.to(dtype)


def _poison_allocator(byte: int) -> None:
    """Fill the caching allocator's free blocks with `byte` so fresh outputs start as garbage."""
    blocks = []
    for size in (1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 23, 1 << 25):
        for _ in range(3):
            blocks.append(torch.full((size,), byte, dtype=torch.uint8, device=DEV))
    torch.cuda.synchronize()
    del blocks


def _poisoned_runs(fn):
    """Run fn twice over differently poisoned memory; returns both results."""
    out = []
    for byte in (0x7F, 0xFF):
        _poison_allocator(byte)
        out.append(fn())
        torch.cuda.synchronize()
    return out


def _ref_scores(q, table, rows, negate):
    q64, t64 = q.double(), table.double()
    keys = t64 if rows is None else reference.gather_word_rows(t64, rows)
    s = q64 @ keys.T
    return -s if negate else s


def _assert_topk(vals, idx, scores, k, rtol, what="", out_dtype=torch.float32):
    """vals/idx [n, k] against float64 scores [n, w] (NaN = never selected).

    Values: descending, norm-wise relative error <= rtol, each equal (within a
    per-row tolerance) to the true score of its index; indices unique and in
    range; missing slots (-inf, -1); recall of the true top-k >= 0.99 where a
    swap with a near-tie (within tolerance of the k-th value) counts as a hit.
    """
    n, w = scores.shape
    assert vals.shape == (n, k) and idx.shape == (n, k), what
    assert vals.dtype == out_dtype and idx.dtype == torch.int64, f"{what}: dtypes {vals.dtype}, {idx.dtype}"
    nan = scores.isnan()
    keyed = scores.masked_fill(nan, -INF)
    ref_v, ref_i = keyed.topk(k, dim=1)
    n_valid = (~nan).sum(1)
    slots = torch.arange(k, device=DEV)
    valid = slots[None, :] < n_valid[:, None]
    # Missing slots and range.
    assert bool((idx[~valid] == -1).all()), f"{what}: missing slots must have index -1"
    assert bool((vals[~valid] == -INF).all()), f"{what}: missing slots must have value -inf"
    iv = idx[valid]
    assert bool(((iv >= 0) & (iv < w)).all()), f"{what}: index out of range (unwritten output?)"
    assert not bool(vals.isnan().any()), f"{what}: NaN value reported"
    v64 = vals.double()
    assert bool((v64[:, 1:] <= v64[:, :-1]).all()), f"{what}: values not descending"
    # Unique indices per row.
    srt = torch.sort(idx, dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    assert not bool(dup.any()), f"{what}: duplicate index"
    if not bool(valid.any()):
        return
    # Values against the float64 top-k values.
    rel = (v64[valid] - ref_v[valid]).norm() / ref_v[valid].norm().clamp_min(1e-300)
    assert float(rel) <= rtol, f"{what}: relative error {float(rel):.3g} > {rtol}"
    # Reported value vs the true score of the reported index.
    row_scale = keyed.abs().masked_fill(nan, 0).amax(1, keepdim=True).expand(n, k)
    tol = 20 * rtol * row_scale + 1e-12
    true = scores.gather(1, idx.clamp_min(0))
    assert bool(((v64 - true).abs()[valid] <= tol[valid]).all()), f"{what}: value does not match its index's score"
    # Recall with near-tie swaps.
    kth = ref_v.gather(1, (n_valid.clamp(max=k) - 1).clamp_min(0)[:, None]).squeeze(1)
    hits, total = 0, 0
    for r in range(n):
        m = int(min(k, int(n_valid[r])))
        if m == 0:
            continue
        want = set(ref_i[r, :m].tolist())
        got = idx[r, :m].tolist()
        ok = sum(1 for i in got if i in want or float(scores[r, i]) >= float(kth[r]) - float(tol[r, 0]))
        hits += ok
        total += m
    assert hits >= 0.99 * total, f"{what}: recall {hits}/{total}"


def _out(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _topk_rtol(dtype, precision):
    if dtype == torch.float64:
        return RTOL["float64"]
    if dtype == torch.bfloat16:
        return RTOL["bf16-inputs"] * 10  # exact bf16 products, fp32 (tensor-core) accumulation
    return RTOL[precision]


# ----------------------------------------------------------------- token_topk
PATHS = [
    (torch.float32, "exact"),
    (torch.float32, "tf32"),
    (torch.float32, "bf16"),
    (torch.bfloat16, "bf16"),
    (torch.bfloat16, "exact"),
    (torch.float64, "exact"),
]
SHAPES = [  # n, d, v, k
    (37, 72, 1000, 1),
    (130, 96, 2049, 10),
    (5, 64, 250, 250),      # k = W (the fused kernels serve k <= 256)
    (9, 48, 5000, 256),     # k = 256, several vocabulary slices
    (3, 33, 200, 7),        # d not a multiple of the vector width: element-wise loads
]


@pytest.mark.parametrize("dtype,precision", PATHS, ids=lambda p: str(p).replace("torch.", ""))
@pytest.mark.parametrize("n,d,v,k", SHAPES)
def test_token_topk_token_level(dtype, precision, n, d, v, k):
    seed = _seed(str(dtype), precision, n, d, v, k)
    q = _randn(n, d, seed=seed, dtype=dtype)
    table = _randn(v, d, seed=seed + 1, dtype=dtype)
    negate = (n + k) % 2 == 0
    scores = _ref_scores(q, table, None, negate)
    for vals, idx in _poisoned_runs(
            lambda: ops.token_topk(q, table, k, None, negate, precision=precision, backend="ext")):
        _assert_topk(vals, idx, scores, k, _topk_rtol(dtype, precision), f"{dtype}/{precision}", _out(dtype))


@pytest.mark.parametrize("dtype,precision", PATHS, ids=lambda p: str(p).replace("torch.", ""))
@pytest.mark.parametrize("t,d", [(3, 32), (2, 24), (3, 30)])
def test_token_topk_word_level_padding(dtype, precision, t, d):
    n, v, w, k = 6, 400, 350, 12
    seed = _seed(str(dtype), precision, t, d)
    q = _randn(n, t * d, seed=seed, dtype=dtype)
    table = _randn(v, d, seed=seed + 1, dtype=dtype)
    g = _gen(seed + 2)
    rows = torch.randint(0, v, (w, t), generator=g, device=DEV)
    pad = torch.rand(w, t, generator=g, device=DEV) < 0.3
    pad[:, 0] = False
    rows = rows.masked_fill(pad, -1)
    rows[-1] = -1  # an all-padding word scores 0
    scores = _ref_scores(q, table, rows, True)
    for vals, idx in _poisoned_runs(
            lambda: ops.token_topk(q, table, k, rows, True, precision=precision, backend="ext")):
        _assert_topk(vals, idx, scores, k, _topk_rtol(dtype, precision), f"word {dtype}/{precision}",
                     _out(dtype))


@pytest.mark.parametrize("dtype,precision", PATHS, ids=lambda p: str(p).replace("torch.", ""))
def test_token_topk_nan_rows_and_ties(dtype, precision):
    n, d, v, k = 11, 40, 700, 9
    q = _randn(n, d, seed=7, dtype=dtype)
    table = _randn(v, d, seed=8, dtype=dtype)
    table[1::3] = table[0:-1:3][: table[1::3].shape[0]]  # duplicated rows: exact ties
    q[4, 5] = float("nan")                               # a NaN query row: nothing is selectable
    scores = _ref_scores(q, table, None, True)
    for vals, idx in _poisoned_runs(
            lambda: ops.token_topk(q, table, k, None, True, precision=precision, backend="ext")):
        _assert_topk(vals, idx, scores, k, _topk_rtol(dtype, precision), f"nan/ties {dtype}/{precision}",
                     _out(dtype))
        assert bool((idx[4] == -1).all()) and bool((vals[4] == -INF).all())


def test_token_topk_nan_table_rows():
    q = _randn(5, 24, seed=11)
    table = _randn(300, 24, seed=12)
    table[::2, 3] = float("nan")  # half of the candidates score NaN: k > #finite leaves empty slots
    scores = _ref_scores(q, table, None, False)
    for vals, idx in _poisoned_runs(lambda: ops.token_topk(q, table, 200, None, False, backend="ext")):
        _assert_topk(vals, idx, scores, 200, RTOL["exact"], "nan table rows")
        assert bool((idx[:, 150:] == -1).all())


def _inf_case(w, d, pattern, dtype):
    """Exact scores (queries of ones, small-integer table): column 0 makes a candidate finite, -inf or NaN.

    pattern 0: every score -inf; pattern 1: a few finite, some -inf, the rest NaN (so slices of the
    candidate axis hold fewer than k non-NaN scores and pad their partial lists with (-inf, -1)).
    """
    i = torch.arange(w, device=DEV)[:, None]
    e = torch.arange(d, device=DEV)[None, :]
    table = ((i * 7 + e * 3) % 9 - 4).double()
    if pattern == 0:
        cls = torch.ones(w, dtype=torch.long, device=DEV)
    else:
        cls = torch.where(i[:, 0] % 97 == 5, 0, torch.where(i[:, 0] % 16 == 3, 1, 2))
    table[:, 0] = torch.where(cls == 1, -INF, torch.where(cls == 2, float("nan"), table[:, 0]))
    return table.to(dtype)


@pytest.mark.parametrize("dtype,precision", PATHS, ids=lambda p: str(p).replace("torch.", ""))
@pytest.mark.parametrize("w,k,pattern", [(200, 200, 0), (5000, 256, 0), (5000, 256, 1), (3000, 100, 1)])
def test_token_topk_real_neg_inf_beats_padding(dtype, precision, w, k, pattern):
    """Real -inf scores are selected (with their index) before any empty (-inf, -1) slot."""
    n, d = 5, 16
    q = torch.ones(n, d, device=DEV, dtype=dtype)
    table = _inf_case(w, d, pattern, dtype)
    scores = (q.double() @ table.double().T)
    n_real = int((~scores[0].isnan()).sum())
    want = torch.sort(scores[0].masked_fill(scores[0].isnan(), -INF), descending=True).values[:k]
    for vals, idx in _poisoned_runs(
            lambda: ops.token_topk(q, table, k, None, False, precision=precision, backend="ext")):
        for r in range(n):
            m = min(k, n_real)
            assert torch.equal(vals[r].double().cpu(), want.cpu()), f"row {r}: values"
            assert bool((idx[r, :m] >= 0).all()), f"row {r}: a real score replaced by an empty slot"
            assert bool((idx[r, m:] == -1).all())
            got = scores[r].gather(0, idx[r, :m])
            assert torch.equal(got.cpu(), vals[r, :m].double().cpu()), f"row {r}: value vs its index's score"
            assert len(set(idx[r, :m].tolist())) == m, f"row {r}: duplicate index"


def test_token_topk_large_k_fallback():
    q = _randn(4, 32, seed=21)
    table = _randn(1500, 32, seed=22)
    scores = _ref_scores(q, table, None, True)
    vals, idx = ops.token_topk(q, table, 700, None, True, backend="ext")
    _assert_topk(vals, idx, scores, 700, RTOL["exact"], "k > 256 fallback")


def test_token_topk_matches_cpu_kernel():
    q = _randn(20, 3 * 16, seed=31)
    table = _randn(250, 16, seed=32)
    rows = torch.randint(-1, 250, (90, 3), generator=_gen(33), device=DEV)
    vg, ig = ops.token_topk(q, table, 5, rows, True, backend="ext")
    vc, ic = ops.token_topk(q.cpu(), table.cpu(), 5, rows.cpu(), True, backend="ext")
    torch.testing.assert_close(vg.cpu(), vc, rtol=1e-5, atol=1e-5)
    # Indices agree wherever the value is not within rounding of a neighbour (a near-tie may swap).
    v = vc.double()
    gap = torch.full_like(v, float("inf"))
    gap[:, 1:] = (v[:, :-1] - v[:, 1:]).abs()
    gap[:, :-1] = torch.minimum(gap[:, :-1], (v[:, :-1] - v[:, 1:]).abs())
    clear = gap > 1e-3
    assert torch.equal(ig.cpu()[clear], ic[clear])


@pytest.mark.parametrize("precision", ["exact", "tf32", "bf16"])
def test_token_topk_never_materialises_scores(precision):
    n, d, v, k = 2048, 128, 30522, 10
    q = _randn(n, d, seed=41)
    table = _randn(v, d, seed=42)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    vals, idx = ops.token_topk(q, table, k, precision=precision, backend="ext")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    naive = n * v * 4
    assert extra <= 0.05 * naive, f"peak extra {extra / 2**20:.1f} MiB > 5% of the {naive / 2**20:.0f} MiB score matrix"
    assert vals.shape == (n, k) and idx.shape == (n, k)


# ----------------------------------------------------------------- supcon_loss
def _supcon_case(c, n, d, classes, dtype, seed, nan_problem=False, no_pos_problem=True):
    f = _randn(c, n, d, seed=seed, dtype=dtype)
    y = torch.randint(0, classes, (c, n), generator=_gen(seed + 1), device=DEV) * 7 - 3
    if no_pos_problem and c > 1:
        y[-1] = torch.arange(n, device=DEV) + 1000  # no positive pair: loss 0, gradient 0
    if nan_problem:
        f[0, 1, 2] = float("nan")
    return f, y


def _supcon_ref_lse(f64, y, tau):
    z = reference.normalize_rows(f64)
    logits = torch.bmm(z, z.transpose(1, 2)) / tau
    eye = torch.eye(f64.shape[1], dtype=torch.bool, device=DEV)
    return torch.logsumexp(logits.masked_fill(eye, -INF), dim=2)


SUPCON_CASES = [  # c, n, d, classes, tau, scale
    (3, 37, 40, 3, 0.5, True),
    (3, 70, 300, 4, 0.1, False),    # several row blocks; 2 output columns per lane
    (2, 33, 800, 3, 0.5, True),     # d > 768: column passes + finalize
    (120, 144, 384, 8, 0.5, True),  # the Patronus beam-search shape
    (2, 50, 37, 5, 0.2, True),      # odd d: element-wise loads
    (1, 1, 8, 1, 0.5, True),        # one row: no positives
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("c,n,d,classes,tau,scale", SUPCON_CASES)
def test_supcon_forward_backward(dtype, c, n, d, classes, tau, scale):
    if dtype == torch.float64 and n * c > 2000:
        pytest.skip("the float64 path is the simple one (for gradcheck)")
    f, y = _supcon_case(c, n, d, classes, dtype, seed=c * 1000 + n + d)
    gl = torch.randn(c, generator=_gen(5), device=DEV, dtype=torch.float64)
    f64 = f.detach().double().clone().requires_grad_(True)
    ref = reference.supcon_loss(f64, y, tau, scale)
    (ref * gl).sum().backward()
    ref_lse = _supcon_ref_lse(f.double(), y, tau)

    def run():
        x = f.detach().clone().requires_grad_(True)
        loss = ops.supcon_loss(x, y, tau, scale, backend="ext")
        (loss * gl.to(loss.dtype)).sum().backward()
        _, lse = torch.ops.patronus.supcon_loss_fwd(f.contiguous(), y, tau, scale)
        return loss.detach(), x.grad, lse

    for loss, grad, lse in _poisoned_runs(run):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert loss.dtype == acc and lse.dtype == acc and grad.dtype == dtype
        rl = 1e-10 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=rl, atol=rl)
        finite = ref_lse.isfinite()
        torch.testing.assert_close(lse.double()[finite], ref_lse[finite], rtol=rl, atol=rl)
        assert bool((lse.double()[~finite] == ref_lse[~finite]).all())
        rg = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
        gref = f64.grad
        err = (grad.double() - gref).norm() / gref.norm().clamp_min(1e-30)
        assert float(err) <= rg, f"gradient relative error {float(err):.3g}"
        if c > 1:
            assert float(loss[-1]) == 0.0 and bool((grad[-1] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_supcon_nan_problem(dtype):
    f, y = _supcon_case(3, 20, 16, 3, dtype, seed=3, nan_problem=True)
    loss = ops.supcon_loss(f, y, 0.5, backend="ext")
    ref = reference.supcon_loss(f.double(), y, 0.5)
    assert math.isnan(float(loss[0]))
    torch.testing.assert_close(loss[1:].double(), ref[1:], rtol=2e-5, atol=2e-5)


def test_supcon_shared_labels_1d():
    f = _randn(4, 25, 12, seed=9)
    y = torch.randint(0, 3, (25,), generator=_gen(10), device=DEV)
    loss = ops.supcon_loss(f, y, 0.3, backend="ext")
    ref = reference.supcon_loss(f.double(), y.unsqueeze(0).expand(4, 25), 0.3)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-5)


def test_supcon_gradcheck_double():
    f = _randn(2, 7, 5, seed=13, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([[0, 0, 1, 1, 2, 2, 5], [3, 3, 3, 4, 4, 9, 9]], device=DEV)
    assert torch.autograd.gradcheck(lambda x: ops.supcon_loss(x, y, 0.5, backend="ext"), (f,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda x: ops.supcon_loss(x, y, 0.2, False, backend="ext"), (f,), eps=1e-6,
                                    atol=1e-7)


def test_supcon_large_n_memory():
    """C = 1, N = 65536, d = 768: forward + backward without an N x N buffer."""
    n, d = 65536, 768
    f = _randn(1, n, d, seed=17)
    y = torch.randint(0, 64, (1, n), generator=_gen(18), device=DEV)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    x = f.clone().requires_grad_(True)
    loss = ops.supcon_loss(x, y, 0.5, backend="ext")
    loss.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 0.1 * n * n * 4, f"peak extra {extra / 2**30:.2f} GiB is not far below N^2 * 4 bytes"
    assert extra < 4 * f.numel() * 4 + (64 << 20)
    # The loss against a float64 computation in row chunks.
    z = reference.normalize_rows(f[0].double())
    yy = y[0]
    total, used = 0.0, 0
    for r0 in range(0, n, 4096):
        lg = (z[r0:r0 + 4096] @ z.T) / 0.5
        rows = torch.arange(r0, min(n, r0 + 4096), device=DEV)
        lg[torch.arange(len(rows), device=DEV), rows] = -INF
        lse = torch.logsumexp(lg, 1)
        pos = (yy[rows][:, None] == yy[None, :])
        pos[torch.arange(len(rows), device=DEV), rows] = False
        cnt = pos.sum(1)
        psum = torch.where(pos, lg, torch.zeros_like(lg)).sum(1)
        keep = cnt > 0
        total += float((lse - psum / cnt.clamp_min(1))[keep].sum())
        used += int(keep.sum())
        del lg, pos
    ref = 0.5 * total / used
    assert abs(float(loss.detach()) - ref) <= 1e-4 * max(1.0, abs(ref))
    assert bool(x.grad.isfinite().all())


# ----------------------------------------------------------------- bank_similarity
def _bank_ref(x, bank, mode):
    return reference.bank_similarity(x.double(), bank.double(), mode)


def _bank_case(m, k, d, dtype, seed):
    x = _randn(m, d, seed=seed, dtype=dtype)
    bank = _randn(k, d, seed=seed + 1, dtype=dtype)
    if k > 3:
        bank[3] = bank[0]          # exact tie: the lower index wins
    if m > 2:
        x[1] = bank[0]
        x[2, 1] = float("nan")     # all-NaN similarities: (NaN, -1)
    if k > 4:
        bank[4, 0] = float("nan")  # one NaN bank vector is skipped
    x[0, ::5] = 0                  # zeros have sign 0
    return x, bank


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("mode", ["cosine", "sign"])
@pytest.mark.parametrize("m,k,d", [(1, 64, 768), (7, 6, 768), (70, 64, 768), (5, 9, 33), (300, 17, 100)])
def test_bank_similarity(dtype, mode, m, k, d):
    x, bank = _bank_case(m, k, d, dtype, seed=m * 100 + k + d)
    ref_best, ref_idx = _bank_ref(x, bank, mode)
    for best, idx in _poisoned_runs(lambda: ops.bank_similarity(x, bank, mode, backend="ext")):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert best.dtype == acc and idx.dtype == torch.int64
        nan = ref_idx < 0
        assert bool((idx[nan] == -1).all()) and bool(best[nan].isnan().all())
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        assert bool(((best.double() - ref_best).abs()[~nan] <= tol).all())
        sims_of_pick = _bank_sims(x, bank, mode).gather(1, idx.clamp_min(0)[:, None]).squeeze(1)
        assert bool(((sims_of_pick - ref_best).abs()[~nan] <= tol).all())  # near-ties may pick either
        if m > 2 and k > 3:
            assert int(idx[1]) == 0  # exact tie of bank rows 0 and 3


def _bank_sims(x, bank, mode):
    xa, ba = x.double(), bank.double()
    if mode == "cosine":
        xn = xa / xa.norm(dim=1, keepdim=True).clamp_min(1e-8)
        bn = ba / ba.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return xn @ bn.T
    return (torch.sign(xa)[:, None, :] == torch.sign(ba)[None, :, :]).double().mean(2)


@pytest.mark.parametrize("mode", ["cosine", "sign"])
def test_bank_similarity_cuda_graph(mode):
    bank = _randn(64, 768, seed=51)
    static_x = _randn(1, 768, seed=52)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            ops.bank_similarity(static_x, bank, mode, backend="ext")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        best, idx = ops.bank_similarity(static_x, bank, mode, backend="ext")
    for trial in range(5):
        static_x.copy_(_randn(1, 768, seed=60 + trial))
        if trial == 3:
            static_x.copy_(bank[17:18])  # a planted match
        graph.replay()
        torch.cuda.synchronize()
        rb, ri = _bank_ref(static_x, bank, mode)
        assert int(idx) == int(ri)
        assert abs(float(best) - float(rb)) <= 2e-6
        if trial == 3:
            assert int(idx) == 17


# ----------------------------------------------------------------- opcheck
def test_opcheck_token_topk():
    q = _randn(9, 2 * 16, seed=71)
    table = _randn(120, 16, seed=72)
    rows = torch.randint(-1, 120, (77, 2), generator=_gen(73), device=DEV)
    torch.library.opcheck(torch.ops.patronus.token_topk.default, (q[:, :16].contiguous(), table, 5, None, True, "exact"))
    torch.library.opcheck(torch.ops.patronus.token_topk.default, (q, table, 3, rows, False, "tf32"))


def test_opcheck_supcon():
    f = _randn(3, 10, 8, seed=74).requires_grad_(True)
    y = torch.randint(0, 3, (3, 10), generator=_gen(75), device=DEV)
    torch.library.opcheck(torch.ops.patronus.supcon_loss_fwd.default, (f, y, 0.5, True))
    loss, lse = torch.ops.patronus.supcon_loss_fwd(f.detach(), y, 0.5, True)
    g = torch.randn(3, generator=_gen(76), device=DEV)
    torch.library.opcheck(torch.ops.patronus.supcon_loss_bwd.default, (g, f.detach(), y, lse, 0.5, True))


def test_opcheck_bank_similarity():
    x = _randn(5, 24, seed=77)
    bank = _randn(6, 24, seed=78)
    torch.library.opcheck(torch.ops.patronus.bank_similarity.default, (x, bank, "cosine"))
    torch.library.opcheck(torch.ops.patronus.bank_similarity.default, (x, bank, "sign"))
