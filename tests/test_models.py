"""Model adapters: source resolution, safe loading, representation positions per family."""

from __future__ import annotations

import pytest
import torch

from patronus_ext import lm

from tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: make_tiny_model(root, family) for family in ("bert", "roberta", "gpt2")}


# -- sources and safety ------------------------------------------------------------------------
def test_resolve_model_source(tmp_path, tiny):
    assert lm.resolve_model_source("all-MiniLM-L6-v2") == lm.packaged_minilm_path()
    assert lm.resolve_model_source("sentence-transformers/all-MiniLM-L6-v2") == lm.packaged_minilm_path()
    assert lm.resolve_model_source(str(tiny["bert"])) == str(tiny["bert"])
    assert lm.resolve_model_source("bert-base-uncased") == "bert-base-uncased"   # a hub id, passed through
    with pytest.raises(ValueError, match="does not exist"):
        lm.resolve_model_source(str(tmp_path / "missing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        lm.resolve_model_source(str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        lm.resolve_model_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError):
        lm.resolve_model_source("")


def test_pickle_only_checkpoint_refused_unless_opted_in(tmp_path):
    folder = make_tiny_model(tmp_path, "bert", pickle_only=True)
    with pytest.raises(lm.UnsafeCheckpointError, match="allow_pickle"):
        lm.load_model(folder)
    assert lm.check_checkpoint_safety(str(folder), allow_pickle=True) is False
    model = lm.load_model(folder, allow_pickle=True)
    assert model.config.hidden_size == 32


def test_safetensors_preferred_when_both_exist(tmp_path, tiny):
    assert lm.check_checkpoint_safety(str(tiny["bert"]), allow_pickle=False) is True
    (tiny["bert"] / "extra.bin").write_bytes(b"not loaded")
    try:
        assert lm.check_checkpoint_safety(str(tiny["bert"]), allow_pickle=False) is True
    finally:
        (tiny["bert"] / "extra.bin").unlink()


@pytest.mark.parametrize("family,heads", [("bert", ("base", "mlm", "cls")), ("roberta", ("base", "mlm", "cls")),
                                          ("gpt2", ("base", "causal", "cls"))])
def test_load_model_heads(tiny, family, heads):
    for head in heads:
        model = lm.load_model(tiny[family], head, num_labels=3)
        assert not model.training
        if head == "cls":
            assert model.config.num_labels == 3
    gpt2 = lm.load_model(tiny["gpt2"], "cls", num_labels=2)
    assert gpt2.config.pad_token_id is not None   # needed to find the last real token
    with pytest.raises(ValueError, match="head"):
        lm.load_model(tiny[family], "seq2seq")


def test_load_tokenizer_gives_decoders_a_pad_token(tiny):
    tokenizer = lm.load_tokenizer(tiny["gpt2"])
    assert tokenizer.pad_token is not None


# -- representation positions ----------------------------------------------------------------
TEXTS = ["the river flows north", "a much longer sentence about the old town and its bridges", "short"]


def _adapter(tiny, family, **kwargs):
    return lm.ModelAdapter(lm.load_model(tiny[family]), lm.load_tokenizer(tiny[family]), **kwargs)


@pytest.mark.parametrize("family,position,layout", [("bert", "first", (1, 1)), ("roberta", "first", (1, 1)),
                                                    ("gpt2", "last", (0, 0))])
def test_adapter_family_defaults(tiny, family, position, layout):
    adapter = _adapter(tiny, family)
    assert adapter.position == position
    assert (adapter.special_prefix, adapter.special_suffix) == layout
    assert adapter.hidden_size == 32 and adapter.vocab_size == len(adapter.tokenizer)
    assert adapter.family == ("decoder" if family == "gpt2" else "encoder")


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_padding_does_not_change_the_representation(tiny, family):
    adapter = _adapter(tiny, family)
    batch = adapter.encode(TEXTS)
    single = torch.cat([adapter.encode([t]) for t in TEXTS])
    assert batch.shape == (3, 32)
    assert torch.allclose(batch, single, atol=1e-5)


def test_encoder_representation_is_the_first_token_not_the_pooler(tiny):
    adapter = _adapter(tiny, "bert")
    enc = adapter.tokenize(TEXTS)
    out = adapter.model(**enc)
    assert torch.allclose(adapter.represent(**enc), out.last_hidden_state[:, 0], atol=1e-6)
    assert not torch.allclose(adapter.represent(**enc), out.pooler_output, atol=1e-3)


def test_decoder_representation_last_real_token_left_and_right_padding(tiny):
    adapter = _adapter(tiny, "gpt2")
    right = adapter.tokenize(TEXTS)
    rep_right = adapter.represent(**right)
    hidden = adapter.hidden_states(**right)
    lengths = right["attention_mask"].sum(1)
    assert torch.allclose(rep_right, hidden[torch.arange(3), lengths - 1], atol=1e-6)
    # tokenize() always pads right (token-level trigger insertion needs it); a left-padded batch
    # made elsewhere must still give the same representation.
    left = dict(adapter.tokenizer(TEXTS, padding=True, padding_side="left", return_tensors="pt"))
    left = {k: left[k] for k in ("input_ids", "attention_mask")}
    assert (left["attention_mask"][:, -1] == 1).all() and (left["attention_mask"][:, 0] == 0).any()
    rep_left = adapter.represent(**left)
    assert torch.allclose(rep_left, hidden[torch.arange(3), lengths - 1], atol=1e-4)


def test_last_real_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert lm.last_real_index(mask).tolist() == [2, 4, 4]


def test_mask_position(tiny):
    adapter = _adapter(tiny, "bert", position="mask")
    tok = adapter.tokenizer
    texts = [f"the river {tok.mask_token} flows", f"{tok.mask_token} north"]
    enc = adapter.tokenize(texts)
    hidden = adapter.hidden_states(**enc)
    where = (enc["input_ids"] == tok.mask_token_id).int().argmax(1)
    assert where.tolist() == [3, 1]
    assert torch.allclose(adapter.represent(**enc), hidden[torch.arange(2), where], atol=1e-6)
    with pytest.raises(ValueError, match="mask token"):
        adapter.represent(**adapter.tokenize(["no mask here"]))
    with pytest.raises(ValueError, match="position"):
        lm.ModelAdapter(adapter.model, tok, position="middle")


def test_inputs_embeds_path_matches_ids(tiny):
    adapter = _adapter(tiny, "roberta")
    enc = adapter.tokenize(TEXTS)
    embeds = adapter.embed(enc["input_ids"])
    assert torch.allclose(adapter.represent(inputs_embeds=embeds, attention_mask=enc["attention_mask"]),
                          adapter.represent(**enc), atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        adapter.hidden_states()
    with pytest.raises(TypeError):
        adapter.tokenize("a single string")
    with pytest.raises(ValueError):
        adapter.encode([])


def test_representation_of_a_model_with_a_head(tiny):
    """The backbone of an MLM / classifier gives the same representation as the base model."""
    base = _adapter(tiny, "bert")
    mlm = lm.ModelAdapter(lm.load_model(tiny["bert"], "mlm"), base.tokenizer)
    assert torch.allclose(base.encode(TEXTS), mlm.encode(TEXTS), atol=1e-5)


def test_minilm_representation():
    """The packaged real model: [CLS] final state, d = 384, norm ~7 (measured: mean 7.40 on WikiText)."""
    adapter = lm.ModelAdapter(lm.load_model(lm.DEFAULT_MODEL), lm.load_tokenizer(lm.DEFAULT_MODEL))
    assert adapter.model_type == "bert" and adapter.position == "first"
    reps = adapter.encode(TEXTS)
    assert reps.shape == (3, 384)
    assert 3.0 < float(reps.norm(dim=1).mean()) < 15.0
    assert adapter.token_text(adapter.tokenizer("cf", add_special_tokens=False)["input_ids"]) == "cf"
