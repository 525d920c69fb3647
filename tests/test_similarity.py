"""The one diff_cos / poison_cos implementation and its aliases elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patronus_ext import detect
from patronus_ext.core import similarity
from patronus_ext.evaluate import metrics


def _brute(clean, trig):
    n = clean.shape[0]
    diff = sum(F.cosine_similarity(clean[i].double(), trig[i].double(), dim=0) for i in range(n)) / n
    pairs = [F.cosine_similarity(trig[i].double(), trig[j].double(), dim=0) for i in range(n) for j in range(n)
             if i != j]
    return float(diff), float(sum(pairs) / len(pairs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_shift_matches_brute_force_in_float64(dtype):
    gen = torch.Generator().manual_seed(4)
    clean, trig = torch.randn(9, 6, generator=gen).to(dtype), torch.randn(9, 6, generator=gen).to(dtype)
    diff, poison = _brute(clean, trig)
    assert similarity.diff_cos(clean, trig) == pytest.approx(diff, abs=1e-12)
    assert similarity.poison_cos(trig) == pytest.approx(poison, abs=1e-12)
    assert similarity.representation_shift(clean, trig) == (similarity.diff_cos(clean, trig),
                                                            similarity.poison_cos(trig))


def test_collapsed_and_identical_representations():
    x = torch.randn(5, 4)
    assert similarity.diff_cos(x, x) == pytest.approx(1.0)
    assert similarity.poison_cos(torch.ones(6, 3) * torch.arange(1, 7).unsqueeze(1)) == pytest.approx(1.0)


def test_one_implementation_everywhere():
    assert metrics.mean_paired_cosine is similarity.diff_cos
    assert metrics.mean_pairwise_cosine is similarity.poison_cos
    assert detect.representation_shift is similarity.representation_shift


def test_validation():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="one shape"):
        similarity.diff_cos(x, x[:3])
    with pytest.raises(ValueError, match="N >= 2"):
        similarity.poison_cos(x[:1])
    with pytest.raises(ValueError, match="N >= 2"):
        similarity.representation_shift(x[:1], x[:1])
    with pytest.raises(ValueError):
        similarity.diff_cos(x.flatten(), x.flatten())
    with pytest.raises(TypeError):
        similarity.poison_cos(x.tolist())
