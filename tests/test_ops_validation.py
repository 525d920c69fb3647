"""Bad input: ops.* raise ValueError/TypeError naming the argument; raw torch.ops raise RuntimeError.

Every case must fail cleanly (never crash the interpreter or return garbage).
"""

from __future__ import annotations

import math

import pytest
import torch

from patronus_ext import ops

from conftest import requires_ext

Q = torch.randn(4, 6)
TABLE = torch.randn(10, 6)
FEATS = torch.randn(2, 5, 3)
LABELS = torch.tensor([0, 0, 1, 1, 2])
X = torch.randn(3, 6)
BANK = torch.randn(2, 6)


def raises(exc, match):
    return pytest.raises(exc, match=match)


# --------------------------------------------------------------------------- ops.token_topk

@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("call, exc, match", [
    (lambda b: ops.token_topk(Q[0], TABLE, 2, backend=b), ValueError, "queries must be 2-D"),
    (lambda b: ops.token_topk(Q, TABLE[0], 2, backend=b), ValueError, "table must be 2-D"),
    (lambda b: ops.token_topk(Q.numpy(), TABLE, 2, backend=b), TypeError, "queries must be a torch.Tensor"),
    (lambda b: ops.token_topk(Q.long(), TABLE.long(), 2, backend=b), ValueError, "queries must be a floating"),
    (lambda b: ops.token_topk(Q, TABLE.double(), 2, backend=b), ValueError, "queries and table must have the same dtype"),
    (lambda b: ops.token_topk(Q, TABLE[:, :5], 2, backend=b), ValueError, "queries must have T\\*d"),
    (lambda b: ops.token_topk(Q[:0], TABLE, 2, backend=b), ValueError, "queries must not be empty"),
    (lambda b: ops.token_topk(Q, TABLE[:0], 1, backend=b), ValueError, "table must not be empty"),
    (lambda b: ops.token_topk(Q, TABLE, 0, backend=b), ValueError, "k must lie in \\[1, 10\\]"),
    (lambda b: ops.token_topk(Q, TABLE, 11, backend=b), ValueError, "k must lie in \\[1, 10\\]"),
    (lambda b: ops.token_topk(Q, TABLE, -3, backend=b), ValueError, "k must lie"),
    (lambda b: ops.token_topk(Q, TABLE, 2.0, backend=b), TypeError, "k must be an int"),
    (lambda b: ops.token_topk(Q, TABLE, True, backend=b), TypeError, "k must be an int"),
    (lambda b: ops.token_topk(Q, TABLE, 2, precision="fp8", backend=b), ValueError, "precision must be one of"),
    (lambda b: ops.token_topk(Q, TABLE, 2, torch.tensor([[0], [10]]), backend=b), ValueError, "rows entries must lie in \\[-1, 9\\]"),
    (lambda b: ops.token_topk(Q, TABLE, 2, torch.tensor([[0], [-2]]), backend=b), ValueError, "rows entries must lie"),
    (lambda b: ops.token_topk(Q, TABLE, 2, torch.tensor([[0.0], [1.0]]), backend=b), ValueError, "rows must be an integer"),
    (lambda b: ops.token_topk(Q, TABLE, 2, torch.tensor([0, 1]), backend=b), ValueError, "rows must be 2-D"),
    (lambda b: ops.token_topk(Q, TABLE, 2, torch.zeros(0, 1, dtype=torch.long), backend=b), ValueError, "rows must not be empty"),
    (lambda b: ops.token_topk(Q.repeat(1, 2), TABLE, 3, torch.tensor([[0, 1], [2, 3]]), backend=b), ValueError, "k must lie in \\[1, 2\\]"),
    (lambda b: ops.token_topk(Q, TABLE, 2, torch.tensor([[0, 1], [2, 3]]), backend=b), ValueError, "queries must have T\\*d = 2\\*6"),
    (lambda b: ops.token_topk(Q.to("meta"), TABLE, 2, backend=b), ValueError, "one device"),
])
def test_token_topk_rejects(backend, call, exc, match):
    with raises(exc, match):
        call(backend)


def test_unknown_backend_is_rejected():
    with raises(ValueError, "backend must be one of"):
        ops.token_topk(Q, TABLE, 2, backend="cuda")
    with raises(ValueError, "backend must be one of"):
        ops.supcon_loss(FEATS, LABELS, backend="fast")
    with raises(ValueError, "backend must be one of"):
        ops.bank_similarity(X, BANK, backend=None)


def test_ext_backend_without_a_kernel_says_why():
    if ops._extension.state().loaded:
        with raises(RuntimeError, "no compiled cpu kernel for dtype torch.float16"):
            ops.token_topk(Q.half(), TABLE.half(), 2, backend="ext")
    else:
        with raises(RuntimeError, "backend='ext' requested but"):
            ops.token_topk(Q, TABLE, 2, backend="ext")


# --------------------------------------------------------------------------- ops.supcon_loss

@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("call, exc, match", [
    (lambda b: ops.supcon_loss(FEATS[0, 0], LABELS, backend=b), ValueError, "features must be 2-D or 3-D"),
    (lambda b: ops.supcon_loss(FEATS[None], LABELS, backend=b), ValueError, "features must be 2-D or 3-D"),
    (lambda b: ops.supcon_loss(FEATS.long(), LABELS, backend=b), ValueError, "features must be a floating"),
    (lambda b: ops.supcon_loss(FEATS, LABELS.float(), backend=b), ValueError, "labels must be an integer"),
    (lambda b: ops.supcon_loss(FEATS, LABELS.bool(), backend=b), ValueError, "labels must be an integer"),
    (lambda b: ops.supcon_loss(FEATS, LABELS[:4], backend=b), ValueError, "labels \\[N\\] must have N = 5"),
    (lambda b: ops.supcon_loss(FEATS, LABELS.expand(3, 5), backend=b), ValueError, "labels must be \\[N\\] or \\[C, N\\]"),
    (lambda b: ops.supcon_loss(FEATS, LABELS[None, None], backend=b), ValueError, "labels must be 1-D or 2-D"),
    (lambda b: ops.supcon_loss(FEATS[:, :0], LABELS[:0], backend=b), ValueError, "features must not be empty"),
    (lambda b: ops.supcon_loss(FEATS, LABELS, 0.0, backend=b), ValueError, "temperature must be a finite number > 0"),
    (lambda b: ops.supcon_loss(FEATS, LABELS, -0.5, backend=b), ValueError, "temperature must be a finite number > 0"),
    (lambda b: ops.supcon_loss(FEATS, LABELS, math.nan, backend=b), ValueError, "temperature must be a finite"),
    (lambda b: ops.supcon_loss(FEATS, LABELS, math.inf, backend=b), ValueError, "temperature must be a finite"),
    (lambda b: ops.supcon_loss(FEATS, LABELS, "0.5", backend=b), TypeError, "temperature must be a number"),
    (lambda b: ops.supcon_loss(FEATS, LABELS, True, backend=b), TypeError, "temperature must be a number"),
    (lambda b: ops.supcon_loss(FEATS, LABELS.to("meta"), backend=b), ValueError, "one device"),
])
def test_supcon_rejects(backend, call, exc, match):
    with raises(exc, match):
        call(backend)


# --------------------------------------------------------------------------- ops.bank_similarity

@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("call, exc, match", [
    (lambda b: ops.bank_similarity(X[0], BANK, backend=b), ValueError, "x must be 2-D"),
    (lambda b: ops.bank_similarity(X, BANK[0], backend=b), ValueError, "bank must be 2-D"),
    (lambda b: ops.bank_similarity(X, BANK[:, :5], backend=b), ValueError, "same width d"),
    (lambda b: ops.bank_similarity(X, BANK.double(), backend=b), ValueError, "x and bank must have the same dtype"),
    (lambda b: ops.bank_similarity(X.int(), BANK.int(), backend=b), ValueError, "x must be a floating"),
    (lambda b: ops.bank_similarity(X[:0], BANK, backend=b), ValueError, "x must not be empty"),
    (lambda b: ops.bank_similarity(X, BANK, "dot", backend=b), ValueError, "mode must be one of"),
    (lambda b: ops.bank_similarity(X, BANK.to("meta"), backend=b), ValueError, "one device"),
])
def test_bank_rejects(backend, call, exc, match):
    with raises(exc, match):
        call(backend)


# --------------------------------------------------------------------------- raw torch.ops

def raw():
    return torch.ops.patronus


@requires_ext
@pytest.mark.parametrize("call, match", [
    (lambda: raw().token_topk(Q, TABLE, 0), "k must lie in \\[1, 10\\]"),
    (lambda: raw().token_topk(Q, TABLE, 11), "k must lie in \\[1, 10\\]"),
    (lambda: raw().token_topk(Q[0], TABLE, 2), "queries must be 2-D"),
    (lambda: raw().token_topk(Q, TABLE.double(), 2), "same dtype"),
    (lambda: raw().token_topk(Q.half(), TABLE.half(), 2), "must be float32, float64 or bfloat16"),
    (lambda: raw().token_topk(Q.long(), TABLE.long(), 2), "must be float32, float64 or bfloat16"),
    (lambda: raw().token_topk(Q[:0], TABLE, 2), "queries must not be empty"),
    (lambda: raw().token_topk(Q, TABLE[:, :5], 2), "queries must have T\\*d"),
    (lambda: raw().token_topk(Q, TABLE, 2, torch.tensor([[0], [10]])), "rows entries must lie"),
    (lambda: raw().token_topk(Q, TABLE, 2, torch.tensor([[0], [-5]])), "rows entries must lie"),
    (lambda: raw().token_topk(Q, TABLE, 2, torch.tensor([[0], [1]], dtype=torch.int32)), "rows must be int64"),
    (lambda: raw().token_topk(Q, TABLE, 2, None, True, "int8"), "precision must be"),
    (lambda: raw().supcon_loss_fwd(FEATS, LABELS.expand(2, 5), 0.0), "temperature must be a finite number > 0"),
    (lambda: raw().supcon_loss_fwd(FEATS, LABELS.expand(2, 5), math.nan), "temperature must be a finite number > 0"),
    (lambda: raw().supcon_loss_fwd(FEATS, LABELS, 0.5), "labels must be 2-D"),
    (lambda: raw().supcon_loss_fwd(FEATS, LABELS[:4].expand(2, 4), 0.5), "labels must be \\[C, N\\]"),
    (lambda: raw().supcon_loss_fwd(FEATS, LABELS.expand(2, 5).int(), 0.5), "labels must be int64"),
    (lambda: raw().supcon_loss_fwd(FEATS[0], LABELS, 0.5), "features must be 3-D"),
    (lambda: raw().supcon_loss_bwd(torch.ones(2), FEATS, LABELS.expand(2, 5), torch.zeros(2, 4), 0.5), "lse must be \\[C, N\\]"),
    (lambda: raw().supcon_loss_bwd(torch.ones(3), FEATS, LABELS.expand(2, 5), torch.zeros(2, 5), 0.5), "grad_loss must be \\[C\\]"),
    (lambda: raw().supcon_loss_bwd(torch.ones(2).double(), FEATS, LABELS.expand(2, 5), torch.zeros(2, 5), 0.5), "grad_loss must be \\[C\\]"),
    (lambda: raw().bank_similarity(X, BANK, "dot"), "mode must be 'cosine' or 'sign'"),
    (lambda: raw().bank_similarity(X, BANK[:, :5]), "same width d"),
    (lambda: raw().bank_similarity(X[:0], BANK), "x must not be empty"),
])
def test_raw_ops_raise_runtime_error(call, match):
    with raises(RuntimeError, match):
        call()


@requires_ext
def test_raw_ops_reject_mixed_devices():
    with pytest.raises(RuntimeError):
        raw().token_topk(Q, TABLE.to("meta"), 2)
    with pytest.raises(RuntimeError):
        raw().bank_similarity(X.to("meta"), BANK)
