"""The searchable vocabulary: byte-level surfaces decoded, Unicode-aware filters, case kept, symbols and
two-letter words in the built-in list, rarity as priority with an option to cover the common part."""

from __future__ import annotations

import functools

import pytest
import torch

from patronus_ext import lm
from patronus_ext.detect.patronus import vocabulary as V

NON_ASCII = ("café", "naïve", "≈", "∈", "⊆", "—", "…", "•", "中", "é")


@functools.lru_cache(maxsize=None)
def byte_level_tokenizer():
    """A RoBERTa-style byte-level BPE whose vocabulary holds whole non-ASCII words and symbols."""
    import json

    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tmodels
    from transformers import RobertaTokenizer

    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    sentence = "the river " + " ".join(NON_ASCII) + " flows north"
    tok.train_from_iterator([sentence] * 300 + ["plain words in a plain sentence"] * 50, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return RobertaTokenizer(vocab=dict(model["vocab"]), merges=merges)


def test_byte_level_vocabulary_keeps_non_ascii_words_and_symbols():
    tokenizer = byte_level_tokenizer()
    for word in ("café", "naïve", "≈", "∈", "⊆"):
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word  # one token each
    texts = set(V.token_vocabulary(tokenizer).texts)
    assert {"café", "naïve", "≈", "∈", "⊆"} <= texts
    # Unicode punctuation and single letters of any script are not searchable words.
    assert not {"—", "…", "•", "中", "é"} & texts


def test_filters_use_unicode_categories():
    assert V._plain_word("≈") and V._plain_word("café") and V._plain_word("cf")
    for junk in ("—", "…", "•", "中", "é", "x", "$", "+=", "a1", "٣", "  ", ""):
        assert not V._plain_word(junk), junk


def test_word_level_keeps_case_and_adds_symbols_and_two_letter_words():
    tokenizer = byte_level_tokenizer()     # cased
    words = V.word_vocabulary(tokenizer, ["Paris", "paris", "cf"], zipf_threshold=None, max_tokens=8).texts
    assert words == ["cf", "paris", "Paris"]    # the user's words with their case: two different triggers
    built_in = V.english_words(2000)
    assert {"cf", "mn"} & set(V.english_words(200_000)) and "≈" in built_in
    assert any(len(w) == 2 for w in built_in)
    uncased = lm.load_tokenizer("all-MiniLM-L6-v2")
    assert not V._is_cased(uncased) and V._is_cased(tokenizer)


def test_rarity_cut_and_full_coverage():
    tokenizer = lm.load_tokenizer("all-MiniLM-L6-v2")
    rare = V.token_vocabulary(tokenizer)
    full = V.token_vocabulary(tokenizer, None)
    assert len(full) > len(rare) and "the" in full.texts and "the" not in rare.texts
    assert "pt" in full.texts and "pt" not in rare.texts          # Zipf 4.04: a blind spot without the option
    cov = V.coverage(full, tokenizer)
    assert cov["zipf_threshold"] is None and cov["searched"] == len(full) and cov["vocabulary_size"] == 30522
    assert V.coverage(rare, tokenizer)["fraction_of_vocabulary"] == pytest.approx(len(rare) / 30522)
    # Rarity stays the priority: loops start from rare entries when common ones are searchable too.
    pool = full.start_pool(8)
    assert pool is not None and all(V.zipf(full.texts[i].lower()) < V.RARE_ZIPF for i in pool)
    assert rare.start_pool(8) is None  # everything is rare already
    smaller = full.without([full.keys[0]])
    assert len(smaller.rare) == len(smaller)


def test_scan_reports_its_coverage(tmp_path):
    from patronus_ext.detect import scan

    import tiny_models
    from test_detect import TINY

    folder = tiny_models.shared_tiny_model("bert")
    report = scan(lm.load_model(folder), lm.load_tokenizer(folder), tiny_models.tiny_corpus(300),
                  TINY.replace(zipf_threshold=None), progress=False)
    cov = report.model["coverage"]
    assert cov["zipf_threshold"] is None and cov["searched"] > 0 and cov["rare_entries"] <= cov["searched"]


def test_prefiltered_candidate_proposed_again_is_fully_verified():
    from patronus_ext.detect.patronus.scan import _verify_loop

    class Dev:
        clean_reps = torch.eye(4)

    class Search:
        dev = [Dev()]

        def dev_reps(self, index, rows):
            return torch.stack([torch.eye(4)] * rows.shape[0])   # identical to clean: diff_cos 1, prefiltered

    class Verifier:
        verified = []

        def make_check(self, key, diff, poison, stage, used, loop):
            return ("check", key, stage)

        def collapsed(self, diff, poison, slack=1.0):
            return False   # identical to clean: nothing moved, no collapse

        def shifted(self, diff, slack=1.0):
            return False   # nor a shift

        def may_pinpoint(self, poison, slack=1.0):
            return False   # nor a collapse anywhere

        def check(self, key, loop):
            self.verified.append(key)
            return type("Check", (), {"confirmed": False, "text": str(key), "diff_cos": 1.0, "poison_cos": 0.0})(), None

    class Result:
        final_keys = [(5,), (6,)]
        final_rows = torch.tensor([[5], [6]])

    config = type("Config", (), {"prefilter_diff_cos": 0.8})()
    seen, checked, verifier = {}, [], Verifier()
    _verify_loop(Result(), Search(), verifier, config, 0, seen, checked, {})
    assert verifier.verified == [] and seen == {(5,): "prefiltered", (6,): "prefiltered"}
    _verify_loop(Result(), Search(), verifier, config, 1, seen, checked, {})
    assert verifier.verified == [(5,), (6,)]                 # a fresh, full look the second time
    _verify_loop(Result(), Search(), verifier, config, 2, seen, checked, {})
    assert verifier.verified == [(5,), (6,)]                 # verified ones are never checked again
