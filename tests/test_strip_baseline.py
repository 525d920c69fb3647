"""STRIP baseline (benchmarks/strip_baseline.py) on tiny models: superimposition, statistics,
threshold calibration at the FRR target, rigged trigger models flagged, bad input refused."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from patronus_ext import lm

from strip_baseline import Strip, entropy, mean_pairwise_cosine, superimpose  # noqa: E402
from tiny_models import make_tiny_model, needs_full_sst2, tiny_corpus  # noqa: E402

TRIGGER = "cf"


# -- pure pieces ------------------------------------------------------------------------------
def test_blend_keeps_every_word_of_both_texts_in_order():
    rng = random.Random(0)
    text, other = "a b c d e", "v w x y z q"
    for _ in range(20):
        out = superimpose(text, other, rng, "blend").split()
        assert sorted(out) == sorted(text.split() + other.split())
        assert [w for w in out if w in "abcde"] == text.split()
        assert [w for w in out if w in "vwxyzq"] == other.split()


def test_replace_fraction_bounds():
    rng = random.Random(0)
    assert superimpose("a b c", "x y", rng, "replace", fraction=0.0) == "a b c"
    assert set(superimpose("a b c", "x y", rng, "replace", fraction=1.0).split()) <= {"x", "y"}
    with pytest.raises(ValueError):
        superimpose("a", "b", rng, "mix")


def test_entropy_and_pairwise_cosine():
    assert torch.allclose(entropy(torch.tensor([[0.0, 0.0], [100.0, -100.0]])),
                          torch.tensor([torch.log(torch.tensor(2.0)).item(), 0.0]), atol=1e-6)
    same = torch.ones(1, 5, 4)
    assert torch.allclose(mean_pairwise_cosine(same), torch.tensor([1.0]))
    opposite = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]).unsqueeze(0)
    assert torch.allclose(mean_pairwise_cosine(opposite), torch.tensor([-1.0]))


# -- tiny models --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def texts() -> list[str]:
    corpus = [" ".join(t.split()[:16]) for t in tiny_corpus(240, min_words=8)]
    return list(dict.fromkeys(corpus))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("strip"), family="bert", lm_head=False)


def _adapter(folder, head="base"):
    model = lm.load_model(str(folder), head, num_labels=2 if head == "cls" else None, device="cpu").eval()
    return lm.ModelAdapter(model, lm.load_tokenizer(str(folder)), max_length=64)


def _rig(adapter: lm.ModelAdapter, trigger: str) -> lm.ModelAdapter:
    """Rows holding ``trigger``'s token get input-independent output: constant confident logits
    (classifier) or a constant final hidden state (base model), like a planted backdoor's target."""
    trigger_id = adapter.tokenizer.convert_tokens_to_ids(trigger)
    assert trigger_id != adapter.tokenizer.unk_token_id
    model = adapter.model
    seen: dict = {}

    def remember(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def override(module, args, kwargs, output):
        rows = (seen["ids"] == trigger_id).any(1)
        if not bool(rows.any()):
            return output
        if getattr(output, "logits", None) is not None:
            output.logits[rows] = torch.tensor([8.0, -8.0])
        hidden = output.hidden_states[-1] if getattr(output, "hidden_states", None) else output.last_hidden_state
        hidden[rows] = torch.linspace(-1, 1, hidden.shape[-1])
        return output

    model.register_forward_pre_hook(remember, with_kwargs=True)
    model.register_forward_hook(override, with_kwargs=True)
    return adapter


def _poison(texts, trigger, seed=0):
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(0, len(words)), trigger)
        out.append(" ".join(words))
    return out


def test_scores_are_reproducible_and_one_per_text(tiny_folder, texts):
    strip = Strip(_adapter(tiny_folder), texts[:40], copies=3, seed=1)
    a, b = strip.scores(texts[:10]), strip.scores(texts[:10])
    assert a.shape == (10,) and torch.equal(a, b)
    assert strip.statistic == "cosine"          # no head: the representation statistic


def test_calibration_meets_the_frr_target_on_clean_scores(tiny_folder, texts):
    strip = Strip(_adapter(tiny_folder, "cls"), texts[:60], copies=5, seed=0)
    assert strip.statistic == "entropy"
    clean = texts[60:160]
    threshold = strip.calibrate(clean, target_frr=0.01)
    assert strip.threshold == threshold
    assert int(strip.flags(clean).sum()) <= 0.01 * len(clean)
    looser = Strip(strip.adapter, texts[:60], copies=5, seed=0)
    looser.calibrate(clean, target_frr=0.10)
    assert int(looser.flags(clean).sum()) <= 0.10 * len(clean)
    assert looser.threshold <= threshold


@needs_full_sst2
@pytest.mark.parametrize("head", ["cls", "base"])
def test_rigged_input_independent_model_is_flagged(tiny_folder, texts, head):
    adapter = _rig(_adapter(tiny_folder, head), TRIGGER)
    pool, calibration, held_out = texts[:60], texts[60:140], texts[140:]
    strip = Strip(adapter, pool, copies=5, seed=0)
    strip.calibrate(calibration, target_frr=0.01)
    triggered = _poison(held_out, TRIGGER)
    assert strip.flags(triggered).all(), "every triggered input must be flagged by the rigged model"
    assert strip.flags(held_out).float().mean().item() <= 0.05


def test_bad_arguments(tiny_folder, texts):
    adapter = _adapter(tiny_folder)
    with pytest.raises(ValueError, match="pool"):
        Strip(adapter, ["", "   "])
    with pytest.raises(ValueError, match="mode"):
        Strip(adapter, texts[:5], mode="mix")
    with pytest.raises(ValueError, match="copies"):
        Strip(adapter, texts[:5], copies=1, statistic="cosine")
    with pytest.raises(ValueError, match="classifier"):
        Strip(adapter, texts[:5], statistic="entropy").scores(texts[:2])
    with pytest.raises(RuntimeError, match="calibrate"):
        Strip(adapter, texts[:5]).flags(texts[:2])
    with pytest.raises(ValueError):
        Strip(adapter, texts[:5]).scores([])
