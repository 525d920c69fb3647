"""supcon_loss (forward and backward) against direct float64 formulas, on both backends."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from patronus_ext import ops

from oracles import direct_supcon, random_tensor


def tolerance(dtype, n):
    """Forward/gradient error budget: float32 accumulation over rows of length N."""
    return {torch.float64: 1e-10, torch.float32: 2e-5 * math.sqrt(n), torch.bfloat16: 2e-5 * math.sqrt(n)}[dtype]


def check_supcon(backend, features, labels, temperature=0.5, scale=True):
    """Loss and gradient of ops.supcon_loss vs the float64 formula on the same (rounded) inputs."""
    dtype = features.dtype
    leaf = features.detach().clone().requires_grad_()
    loss = ops.supcon_loss(leaf, labels, temperature, scale, backend=backend)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    feats3 = features.detach().to(torch.float64).reshape((-1,) + features.shape[-2:]).requires_grad_()
    labels2 = labels.expand(feats3.shape[0], -1) if labels.dim() == 1 else labels
    expected = direct_supcon(feats3, labels2, temperature, scale)
    assert loss.shape == (() if features.dim() == 2 else (features.shape[0],))
    n = features.shape[-2]
    torch.testing.assert_close(loss.to(torch.float64).reshape(-1), expected.detach(),
                               atol=tolerance(dtype, n), rtol=tolerance(dtype, n))
    weights = torch.linspace(0.5, 1.5, feats3.shape[0], dtype=torch.float64)  # distinct grad_loss per problem
    (grad,) = torch.autograd.grad((loss.to(torch.float64).reshape(-1) * weights).sum(), leaf)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), feats3)
    assert grad.dtype == dtype
    grad_tol = tolerance(dtype, n) if dtype != torch.bfloat16 else 2 ** -7  # bf16 output rounding
    torch.testing.assert_close(grad.to(torch.float64).reshape(feats3.shape), expected_grad,
                               atol=grad_tol * max(1.0, float(expected_grad.abs().max())), rtol=grad_tol)
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("c, n, dim, classes", [
    (1, 2, 3, 1),
    (3, 17, 8, 3),        # one past the 16-wide vector lanes
    (5, 40, 33, 4),
    (2, 150, 20, 6),
])
def test_supcon_matches_direct_formula(backend, generator, dtype, c, n, dim, classes):
    features = random_tensor((c, n, dim), dtype, generator)
    labels = torch.randint(0, classes, (c, n), generator=generator)
    check_supcon(backend, features, labels)


def test_supcon_problem_larger_than_one_tile(backend, generator):
    """N past the CPU kernel's one-tile limit: row blocks share one normalised copy."""
    features = random_tensor((1, 1100, 6), torch.float64, generator)
    labels = torch.randint(0, 5, (1, 1100), generator=generator)
    leaf = features.clone().requires_grad_()
    loss = ops.supcon_loss(leaf, labels, 0.3, backend=backend)
    loss.sum().backward()
    # The float64 oracle is too slow at this N; the reference's vectorised formula is checked against it elsewhere.
    ref_leaf = features.clone().requires_grad_()
    ref = ops.supcon_loss(ref_leaf, labels, 0.3, backend="reference")
    ref.sum().backward()
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-12, rtol=1e-8)


@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("scale", [True, False])
def test_supcon_temperature_and_scaling(backend, generator, temperature, scale):
    features = random_tensor((2, 12, 5), torch.float32, generator)
    labels = torch.randint(0, 3, (12,), generator=generator)
    check_supcon(backend, features, labels, temperature, scale)


def test_supcon_small_temperature_far_apart_features(backend, generator):
    """Every similarity far below 1/tau: the kernel's cheap shift underflows and must fall back."""
    features = random_tensor((1, 6, 2), torch.float64, generator)
    angles = torch.arange(6, dtype=torch.float64) * (2 * math.pi / 6)
    features[0] = torch.stack([angles.cos(), angles.sin()], 1)   # cosine <= 0.5 between distinct rows
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    for dtype in (torch.float64, torch.float32):
        check_supcon(backend, features.to(dtype), labels, temperature=0.004)


def test_supcon_labels_per_problem_and_shared(backend, generator):
    features = random_tensor((3, 10, 4), torch.float32, generator)
    shared = torch.randint(0, 2, (10,), generator=generator)
    per_problem = torch.randint(0, 3, (3, 10), generator=generator)
    check_supcon(backend, features, shared)
    check_supcon(backend, features, per_problem)
    torch.testing.assert_close(ops.supcon_loss(features, shared, backend=backend),
                               ops.supcon_loss(features, shared.expand(3, 10), backend=backend))


def test_supcon_two_dimensional_features_give_a_scalar(backend, generator):
    features = random_tensor((9, 6), torch.float32, generator)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1, 2])
    loss = check_supcon(backend, features, labels)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, ops.supcon_loss(features.unsqueeze(0), labels, backend=backend)[0])


def test_supcon_without_positives_is_zero(backend, generator):
    features = random_tensor((2, 5, 3), torch.float32, generator).requires_grad_()
    labels = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]])   # problem 0 has no positive pair
    loss = ops.supcon_loss(features, labels, backend=backend)
    assert float(loss[0].detach()) == 0.0 and float(loss[1].detach()) > 0.0
    (grad,) = torch.autograd.grad(loss[0], features)
    assert bool((grad == 0).all())
    single = random_tensor((1, 4), torch.float32, generator)       # N = 1: nothing to contrast
    assert float(ops.supcon_loss(single, torch.tensor([3]), backend=backend)) == 0.0


def test_supcon_nan_feature_poisons_only_its_problem(backend, generator):
    features = random_tensor((3, 8, 4), torch.float32, generator)
    features[1, 2, 0] = math.nan
    labels = torch.randint(0, 2, (8,), generator=generator)
    labels[:2] = 0
    leaf = features.clone().requires_grad_()
    loss = ops.supcon_loss(leaf, labels, backend=backend)
    assert torch.isnan(loss.detach()).tolist() == [False, True, False]
    (grad,) = torch.autograd.grad(loss[0] + loss[2], leaf)
    assert bool(torch.isfinite(grad[[0, 2]]).all())


def test_supcon_hand_computed(backend):
    """Three 2-D vectors at hand-picked angles, computed with plain loops and math."""
    vectors = [(1.0, 0.0), (0.6, 0.8), (0.0, -2.0)]
    labels = [0, 0, 1]
    tau = 0.5
    unit = [(x / math.hypot(x, y), y / math.hypot(x, y)) for x, y in vectors]
    logit = [[(a[0] * b[0] + a[1] * b[1]) / tau for b in unit] for a in unit]
    row_losses = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        lse = math.log(sum(math.exp(logit[i][j]) for j in others))
        positives = [j for j in others if labels[j] == labels[i]]
        if positives:
            row_losses.append(-sum(logit[i][j] - lse for j in positives) / len(positives))
    expected = tau * sum(row_losses) / len(row_losses)        # rows 0 and 1 have a positive; row 2 has none
    features = torch.tensor(vectors, dtype=torch.float64)
    got = ops.supcon_loss(features, torch.tensor(labels), tau, backend=backend)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # Four vectors, two pairs: rows 0/1 and 2/3 are positives of each other.
    vectors4 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    # Every row: logits to its twin 1/tau = 2, to the other pair 0; lse = log(e^2 + 2).
    expected4 = tau * (math.log(math.exp(2) + 2) - 2)
    got4 = ops.supcon_loss(vectors4, torch.tensor([5, 5, 9, 9]), tau, backend=backend)
    assert float(got4) == pytest.approx(expected4, rel=1e-12)


@pytest.mark.parametrize("backend_name", ["ext", "reference"])
def test_supcon_gradcheck_double(backend_name, generator):
    if backend_name == "ext" and not ops._extension.state().loaded:
        pytest.skip("compiled module not loaded")
    features = random_tensor((2, 7, 3), torch.float64, generator).requires_grad_()
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 0, 1, 0, 1, 3]])

    def loss(f):
        return ops.supcon_loss(f, labels, 0.7, backend=backend_name)

    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda f: ops.supcon_loss(f, labels[0], 0.7, False, backend=backend_name), (features[0].detach().requires_grad_(),))


@given(c=st.integers(1, 4), n=st.integers(1, 70), dim=st.integers(1, 24), classes=st.integers(1, 8),
       temperature=st.floats(0.05, 2.0), seed=st.integers(0, 2**31 - 1))
def test_supcon_random_shapes(backend, c, n, dim, classes, temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    features = random_tensor((c, n, dim), torch.float32, generator)
    labels = torch.randint(0, classes, (c, n), generator=generator)
    check_supcon(backend, features, labels, temperature)
