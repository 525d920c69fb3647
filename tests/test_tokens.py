"""Tokenizer facts: special-token layout and word boundaries (WordPiece, byte-level BPE)."""

from __future__ import annotations

import pytest
import torch

from patronus_ext import lm
from patronus_ext.data import tokens

from tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {family: lm.load_tokenizer(make_tiny_model(root, family)) for family in ("roberta", "gpt2")}
    out["minilm"] = lm.load_tokenizer("all-MiniLM-L6-v2")
    return out


def _starts(tok, text):
    enc = tok([text], return_tensors="pt")["input_ids"]
    pieces = tok.convert_ids_to_tokens(enc[0].tolist())
    return pieces, tokens.word_boundaries(tok, enc)[0].tolist()


def test_special_layout_matches_the_tokenizer(toks):
    assert tokens.special_layout(toks["minilm"]) == (1, 1)    # [CLS] ... [SEP]
    assert tokens.special_layout(toks["roberta"]) == (1, 1)   # <s> ... </s>
    assert tokens.special_layout(toks["gpt2"]) == (0, 0)


def test_word_scheme_and_tables(toks):
    minilm = tokens.word_table(toks["minilm"])
    assert minilm.scheme == "wordpiece"
    vocab = toks["minilm"].get_vocab()
    assert minilm.is_continuation[vocab["##s"]] and not minilm.is_continuation[vocab["cf"]]
    assert not minilm.is_continuation[vocab["[CLS]"]] and not minilm.ends_in_word[vocab["[SEP]"]]
    assert minilm.is_continuation.numel() >= len(toks["minilm"])
    for family in ("roberta", "gpt2"):
        table = tokens.word_table(toks[family])
        vocab = toks[family].get_vocab()
        assert table.scheme == "byte_level"
        assert table.is_continuation[vocab["f"]] and not table.is_continuation[vocab["Ġc"]]
        assert not table.is_continuation[vocab[","]] and not table.ends_in_word[vocab[","]]
        assert not table.is_continuation[vocab["Ċ"]] and not table.ends_in_word[vocab["Ċ"]]  # a newline
        assert table.ends_in_word[vocab["Ġc"]]


def test_word_starts_wordpiece(toks):
    pieces, starts = _starts(toks["minilm"], "the cf river mnemonic cfs")
    assert pieces == ["[CLS]", "the", "cf", "river", "mn", "##emon", "##ic", "cf", "##s", "[SEP]"]
    assert starts == [True, True, True, True, True, False, False, True, False, True]


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_word_starts_byte_level(toks, family):
    pieces, starts = _starts(toks[family], "cf river cfx, north\ncf")
    by_piece = list(zip(pieces, starts))
    special = 1 if family == "roberta" else 0
    assert by_piece[special:special + 2] == [("c", True), ("f", False)]      # first word: no Ġ, still a word start
    assert ("Ġr", True) in by_piece and ("iver", False) in by_piece
    i = pieces.index(",")
    assert pieces[i - 3:i] == ["Ġc", "f", "x"] and starts[i - 3:i + 1] == [True, False, False, True]
    j = pieces.index("Ċ")
    assert pieces[j + 1:j + 3] == ["c", "f"] and starts[j + 1:j + 3] == [True, False]  # after a newline


def test_word_starts_validates_and_tolerates_unknown_ids(toks):
    table = tokens.word_table(toks["minilm"])
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        table.word_starts(torch.tensor([1, 2, 3]))
    big = torch.tensor([[101, 10_000_000, 2015]])
    assert table.word_starts(big).tolist() == [[True, True, True]]
