"""The compiled ops as torch.library citizens: schemas, fake impls, autograd, torch.compile."""

from __future__ import annotations

import pytest
import torch

from patronus_ext import ops

from conftest import requires_ext
from oracles import random_tensor

pytestmark = [requires_ext,
              # opcheck's internals still touch torch.jit, which warns on every call.
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


def topk_samples(generator):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        q = random_tensor((5, 8), dtype, generator)
        table = random_tensor((40, 8), dtype, generator)
        yield (q, table, 3)
        yield (q, table, 40, None, False, "exact")
        rows = torch.randint(-1, 40, (25, 2), generator=generator)
        rows[:, 0] = rows[:, 0].clamp_min(0)
        yield (random_tensor((3, 16), dtype, generator), table, 4, rows, True, "exact")


@pytest.mark.parametrize("op", ["token_topk", "supcon_loss_fwd", "supcon_loss_bwd", "bank_similarity"])
def test_opcheck(op, generator):
    if op == "token_topk":
        samples = list(topk_samples(generator))
    elif op == "supcon_loss_fwd":
        samples = [(random_tensor((2, 6, 4), dtype, generator).requires_grad_(),
                    torch.randint(0, 3, (2, 6), generator=generator), 0.5, scale)
                   for dtype in (torch.float32, torch.float64) for scale in (True, False)]
    elif op == "supcon_loss_bwd":
        samples = []
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            feats = random_tensor((3, 7, 5), dtype, generator)
            labels = torch.randint(0, 2, (3, 7), generator=generator)
            _, lse = torch.ops.patronus.supcon_loss_fwd(feats, labels, 0.3)
            grad = torch.rand(3, generator=generator, dtype=lse.dtype) + 0.5
            samples.append((grad, feats, labels, lse, 0.3, True))
    else:
        samples = [(random_tensor((6, 9), dtype, generator), random_tensor((4, 9), dtype, generator), mode)
                   for dtype in (torch.float32, torch.float64, torch.bfloat16) for mode in ("cosine", "sign")]
    for args in samples:
        torch.library.opcheck(getattr(torch.ops.patronus, op).default, args)


def test_supcon_autograd_goes_through_the_compiled_backward(generator):
    features = random_tensor((2, 6, 4), torch.float32, generator).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = ops.supcon_loss(features, labels, backend="ext")
    assert "patronus_supcon_loss_fwd" in loss.grad_fn.name()
    loss.sum().backward()
    expected = features.detach().clone().requires_grad_()
    ops.supcon_loss(expected, labels, backend="reference").sum().backward()
    torch.testing.assert_close(features.grad, expected.grad, atol=1e-6, rtol=1e-5)


def test_torch_compile_fullgraph(generator):
    """Fake impls and the autograd registration let a compiled graph hold all three ops."""
    torch._dynamo.reset()

    def step(queries, table, features, labels, x, bank):
        values, indices = ops.token_topk(queries, table, 3, backend="ext")
        loss = ops.supcon_loss(features, labels, 0.5, backend="ext")
        best, index = ops.bank_similarity(x, bank, "sign", backend="ext")
        return values, indices, loss, best, index

    args = (random_tensor((5, 8), torch.float32, generator), random_tensor((40, 8), torch.float32, generator),
            random_tensor((2, 6, 4), torch.float32, generator).requires_grad_(), torch.tensor([0, 0, 1, 1, 2, 2]),
            random_tensor((3, 8), torch.float32, generator), random_tensor((4, 8), torch.float32, generator))
    compiled = torch.compile(step, fullgraph=True)(*args)
    compiled[2].sum().backward()
    compiled_grad = args[2].grad.clone()
    args[2].grad = None
    eager = step(*args)
    eager[2].sum().backward()
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(compiled_grad, args[2].grad)
