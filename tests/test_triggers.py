"""Trigger insertion: word level (strings) and token level (tensors), gaps reuse, replacement, fitting."""

from __future__ import annotations

import random

import pytest
import torch

from patronus_ext import lm
from patronus_ext.data import triggers as trig

from tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {family: lm.load_tokenizer(make_tiny_model(root, family)) for family in ("bert", "roberta")}


# -- word level --------------------------------------------------------------------------------
def test_insert_words_positions_and_count():
    text = "one two three four five"
    for seed in range(50):
        out = trig.insert_words(text, "cf", 3, random.Random(seed)).split()
        assert out.count("cf") == 3
        assert out[0] == "one"                        # positions in [1, len(words)]: never before the first word
        assert [w for w in out if w != "cf"] == text.split()
    # every gap 1..5 (including the very end) is used over many draws
    ends = {trig.insert_words(text, "cf", 1, random.Random(s)).split().index("cf") for s in range(200)}
    assert ends == {1, 2, 3, 4, 5}


def test_insert_words_is_seeded_and_validates():
    a = trig.insert_words("a b c d e f", "mn", 2, random.Random(7))
    assert a == trig.insert_words("a b c d e f", "mn", 2, random.Random(7))
    assert trig.insert_words("", "cf", 2, random.Random(0)) == "cf cf"
    with pytest.raises(ValueError):
        trig.insert_words("a b", "cf", 0)
    with pytest.raises(ValueError):
        trig.insert_words("a b", "  ")


def test_poison_texts_draws_one_trigger_per_text():
    texts = [f"text {i} has words" for i in range(30)]
    out, which = trig.poison_texts(texts, ["cf", "mn"], insert_num=2, seed=3)
    assert (out, which) == trig.poison_texts(texts, ["cf", "mn"], insert_num=2, seed=3)
    assert set(which) == {0, 1}
    for text, k in zip(out, which):
        assert text.split().count(["cf", "mn"][k]) == 2
    with pytest.raises(ValueError):
        trig.poison_texts(texts, [])


# -- token ids of words ------------------------------------------------------------------------
def test_word_token_ids_multi_token_and_padding(tokenizers):
    bert, roberta = tokenizers["bert"], tokenizers["roberta"]
    rows = trig.word_token_ids(bert, ["cf", "unbelievable"])
    cf = bert.convert_tokens_to_ids("cf")
    assert rows[0, 0].item() == cf and (rows[0, 1:] == -1).all()
    assert (rows[1] >= 0).sum() == len(bert.tokenize("unbelievable")) > 1
    # byte-level BPE: the word as it appears mid-sentence (with its leading space)
    rows = trig.word_token_ids(roberta, ["cf"])
    assert roberta.convert_ids_to_tokens(rows[0][rows[0] >= 0].tolist()) == roberta.tokenize(" cf")
    assert roberta.tokenize(" cf")[0].startswith("Ġ")
    assert trig.word_token_ids(bert, ["unbelievable"], max_tokens=1).shape == (1, 1)
    with pytest.raises(ValueError):
        trig.word_token_ids(bert, [" "])


# -- token level -------------------------------------------------------------------------------
def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


TEXTS = ["the river flows north", "a much longer sentence about the old town", "short"]


def test_insert_token_triggers_keeps_the_text_and_the_specials(tokenizers):
    tok = tokenizers["bert"]
    ids, mask = _batch(tok, TEXTS)
    cf = tok.convert_tokens_to_ids("cf")
    out = trig.insert_token_triggers(ids, mask, torch.full((3, 1), cf), insert_num=3, pad_id=tok.pad_token_id,
                                     generator=torch.Generator().manual_seed(0))
    assert out.input_ids.shape[1] == ids.shape[1] + 3
    for b in range(3):
        real = out.attention_mask[b].bool()
        row = out.input_ids[b][real]
        assert (out.trigger_mask[b] & real).sum() == 3
        assert (row == cf).sum() == 3
        kept = out.input_ids[b][real & ~out.trigger_mask[b]]
        assert kept.tolist() == ids[b][mask[b].bool()].tolist()      # original order, nothing lost
        assert row[0].item() == tok.cls_token_id and row[-1].item() == tok.sep_token_id
        assert out.attention_mask[b].tolist() == sorted(out.attention_mask[b].tolist(), reverse=True)  # right-padded
    assert ((out.gaps >= 1) & (out.gaps <= mask.sum(1, keepdim=True) - 1)).all()


def test_insert_token_triggers_multi_token_words(tokenizers):
    tok = tokenizers["bert"]
    ids, mask = _batch(tok, TEXTS)
    rows = trig.word_token_ids(tok, ["unbelievable", "cf", "mn"])   # widths T, 1, 1 (padded with -1)
    width = int((rows[0] >= 0).sum())
    out = trig.insert_token_triggers(ids, mask, rows, insert_num=2, pad_id=tok.pad_token_id,
                                     generator=torch.Generator().manual_seed(1))
    assert out.trigger_mask[0].sum() == 2 * width
    assert out.trigger_mask[1].sum() == 2 and out.trigger_mask[2].sum() == 2
    first = out.input_ids[0][out.trigger_mask[0]].view(2, width)
    assert (first == rows[0, :width]).all()
    assert out.trigger_slot[0][out.trigger_mask[0]].view(2, width).tolist() == [list(range(width))] * 2
    # the -1 padding of the short triggers never becomes a token
    assert out.attention_mask[1].sum() == mask[1].sum() + 2


def test_gaps_reuse_and_replace_trigger_tokens(tokenizers):
    tok = tokenizers["bert"]
    ids, mask = _batch(tok, TEXTS)
    cf, mn = tok.convert_tokens_to_ids(["cf", "mn"])
    first = trig.insert_token_triggers(ids, mask, torch.full((3, 1), cf), 3, pad_id=tok.pad_token_id,
                                       generator=torch.Generator().manual_seed(2))
    again = trig.insert_token_triggers(ids, mask, torch.full((3, 1), mn), 3, pad_id=tok.pad_token_id,
                                       gaps=first.gaps)
    assert torch.equal(first.trigger_mask, again.trigger_mask)
    swapped = trig.replace_trigger_tokens(first, torch.full((3, 1), mn))
    assert torch.equal(swapped, again.input_ids)
    assert torch.equal(swapped[~first.trigger_mask], first.input_ids[~first.trigger_mask])
    wide = trig.insert_token_triggers(ids, mask, trig.word_token_ids(tok, ["unbelievable"] * 3), 1,
                                      pad_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="shorter"):
        trig.replace_trigger_tokens(wide, torch.full((3, 1), mn))


def test_insert_token_triggers_validates(tokenizers):
    tok = tokenizers["bert"]
    ids, mask = _batch(tok, TEXTS)
    with pytest.raises(ValueError, match="same"):
        trig.insert_token_triggers(ids, mask[:, :-1], torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="B ="):
        trig.insert_token_triggers(ids, mask, torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token"):
        trig.insert_token_triggers(ids, mask, torch.full((3, 1), -1))
    with pytest.raises(ValueError):
        trig.sample_gaps(mask, 0, 1, 1)


def test_sample_gaps_bounds():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    gaps = trig.sample_gaps(mask, 50, prefix=1, suffix=1, generator=torch.Generator().manual_seed(0))
    assert gaps.shape == (2, 50)
    assert gaps[0].min() >= 1 and gaps[0].max() <= 3 and set(gaps[0].tolist()) == {1, 2, 3}
    assert (gaps[1] == 1).all()                  # [CLS] x -> only "before the final special"
    assert torch.equal(gaps, gaps.sort(1).values)


# -- fitting texts so that inserted triggers survive truncation --------------------------------
def test_fit_texts_cuts_at_word_boundaries(tokenizers):
    tok = tokenizers["bert"]
    texts = ["the river flows north through the valley before it reaches the unbelievable sea",
             "short one", "unbelievable"]
    fitted = trig.fit_texts(tok, texts, budget=6)
    assert len(fitted) == 3
    for original, cut in zip(texts, fitted):
        assert len(tok(cut, add_special_tokens=False)["input_ids"]) <= 6
        assert original.startswith(cut)
        assert cut == "" or original[len(cut):len(cut) + 1] in ("", " ")  # whole words only
    assert fitted[1] == "short one"
    with pytest.raises(ValueError):
        trig.fit_texts(tok, texts, 0)


def test_fit_for_insertion_budget_counts_specials_triggers_and_prompt(tokenizers):
    tok = tokenizers["bert"]
    texts = ["the river flows north through the valley before it reaches the sea near the old town",
             "short one", "", "unbelievable"]
    widest = len(tok(" unbelievable", add_special_tokens=False)["input_ids"])
    assert widest > 1
    # [CLS] + [SEP] + 3 x the widest trigger + the prompt's own tokens, the rest for the text
    prompt = trig.PromptTemplate("{text} it was {mask} .")
    budget = 40 - 2 - 3 * widest - prompt.token_count(tok)
    fitted = trig.fit_for_insertion(tok, texts, 40, insert_num=3, triggers=["cf", "unbelievable"], prompt=prompt)
    assert fitted == [t for t in trig.fit_texts(tok, texts, budget) if t]
    assert "" not in fitted and fitted[1] == "short one"
    # token-id tuples give the same budget as the words they stand for
    ids = trig.trigger_ids(tok, ["cf", "unbelievable"])
    assert trig.fit_for_insertion(tok, texts, 40, insert_num=3, triggers=ids, prompt=prompt.template) == fitted
    # inserted triggers and the filled prompt survive truncation
    for text in fitted:
        poisoned = prompt.fill(trig.insert_words(text, "unbelievable", 3, random.Random(0)), tok.mask_token)
        enc = tok(poisoned, truncation=True, max_length=40)["input_ids"]
        assert len(tok(poisoned)["input_ids"]) <= 40 and tok.mask_token_id in enc
    # "keep": same order and length, a text that cannot be cut is returned whole
    kept = trig.fit_for_insertion(tok, ["the river flows north through the valley", "unbelievable"], 6,
                                  insert_num=1, triggers=["cf"], uncuttable="keep")
    assert kept[1] == "unbelievable" and kept[0] and len(tok(kept[0])["input_ids"]) <= 6 - 1
    assert trig.fit_for_insertion(tok, ["the river flows north through the valley", "unbelievable"], 6,
                                  insert_num=1, triggers=["cf"]) == kept[:1]
    with pytest.raises(ValueError, match="longer than max_length"):
        trig.fit_for_insertion(tok, texts, 8, insert_num=3, triggers=["unbelievable"])
    with pytest.raises(ValueError, match="uncuttable"):
        trig.fit_for_insertion(tok, texts, 20, uncuttable="maybe")


# -- prompts -------------------------------------------------------------------------------------
def test_prompt_template_fills_literally():
    prompt = trig.PromptTemplate("{text} It was {mask} .")
    assert prompt.fill("a {b} c", "[MASK]") == "a {b} c It was [MASK] ."
    assert prompt.fill("x {mask} {text} }{", "[MASK]") == "x {mask} {text} }{ It was [MASK] ."  # never re-read
    assert trig.PromptTemplate("{{{text}}} -> {mask} {0}").fill("t", "M") == "{{t}} -> M {0}"   # no format escapes
    assert trig.PromptTemplate.of(prompt) is prompt and trig.PromptTemplate.of("{text}{mask}").fill("a", "b") == "ab"
    for bad in ("{text} only", "{mask} only", "no fields"):
        with pytest.raises(ValueError, match=r"must contain \{text\} and \{mask\}"):
            trig.PromptTemplate(bad)
    with pytest.raises(TypeError):
        trig.PromptTemplate(None)


def test_prompt_template_token_count(tokenizers):
    tok = tokenizers["bert"]
    prompt = trig.PromptTemplate("{text} It was {mask} .")
    assert prompt.token_count(tok) == len(tok("It was [MASK] .", add_special_tokens=False)["input_ids"])
    assert prompt.filler(tok)("a b") == "a b It was [MASK] ."


# -- matching triggers in token batches ----------------------------------------------------------
def test_match_triggers_windows_overlaps_and_padding():
    ids = torch.tensor([[1, 5, 6, 7, 5, 6, 0],
                        [5, 6, 5, 9, 9, 9, 9]])
    which = trig.match_triggers(ids, [(5, 6), (6, 7), (9,)])
    assert which.tolist() == [[-1, 0, 0, 1, 0, 0, -1], [0, 0, -1, 2, 2, 2, 2]]  # lowest index wins on overlap
    assert torch.equal(trig.trigger_positions(ids, [(5, 6), (6, 7), (9,)]), which >= 0)
    # a -1 padded [K, T] tensor is the same set of triggers
    rows = torch.tensor([[5, 6], [6, 7], [9, -1]])
    assert torch.equal(trig.match_triggers(ids, rows), which)
    # a window never runs past the row; a trigger longer than the row never matches
    assert trig.match_triggers(torch.tensor([[3, 5]]), [(5, 6)]).tolist() == [[-1, -1]]
    assert not trig.trigger_positions(ids, [(5, 6, 7, 5, 6, 0, 1, 2)]).any()
    for bad in ([()], [(1, -1)], []):
        with pytest.raises(ValueError):
            trig.match_triggers(ids, bad)
    with pytest.raises(ValueError, match="word_start"):
        trig.match_triggers(ids, [(5,)], word_start=torch.ones(1, 7, dtype=torch.bool))


def test_match_triggers_matches_the_direct_window_scan():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 4, (6, 25), generator=gen)
    triggers = [(1, 2), (3,), (2, 2, 1)]
    ws = torch.rand(6, 25, generator=gen) < 0.7
    for word_start in (None, ws):
        expected = torch.full_like(ids, -1)
        for n in range(6):
            for k in reversed(range(len(triggers))):  # lowest index last: it wins
                w = len(triggers[k])
                for j in range(25 - w + 1):
                    if tuple(ids[n, j:j + w].tolist()) != triggers[k]:
                        continue
                    if word_start is not None and not (ws[n, j] and (j + w == 25 or ws[n, j + w])):
                        continue
                    expected[n, j:j + w] = k
        got = trig.match_triggers(ids, triggers, word_start=word_start)
        # a position covered by several triggers takes the lowest index
        assert torch.equal(got >= 0, expected >= 0)
        for n, j in (got >= 0).nonzero().tolist():
            covering = [k for k, t in enumerate(triggers) for s in range(max(0, j - len(t) + 1), j + 1)
                        if tuple(ids[n, s:s + len(t)].tolist()) == t and (word_start is None or (
                            ws[n, s] and (s + len(t) == 25 or ws[n, s + len(t)])))]
            assert got[n, j].item() == min(covering)


def test_match_triggers_whole_words_only_on_real_tokenizers(tokenizers):
    from patronus_ext.data import tokens

    minilm = lm.load_tokenizer("all-MiniLM-L6-v2")
    cases = {"minilm": minilm, "roberta": tokenizers["roberta"]}
    for name, tok in cases.items():
        ids = trig.trigger_ids(tok, ["cf", "mnemonic"])
        clean = "the river cfx flows north cfs and cfcf"          # words that merely begin with cf's tokens
        dirty = "the river cf flows north, cf. and mnemonic cf"
        enc = tok([clean, dirty], padding=True, return_tensors="pt")["input_ids"]
        ws = tokens.word_boundaries(tok, enc)
        anywhere = trig.match_triggers(enc, ids)
        whole = trig.match_triggers(enc, ids, word_start=ws)
        assert (anywhere[0] == 0).any(), name                       # the sub-token occurs in benign words...
        assert not (whole[0] >= 0).any(), name                      # ...but never as a whole word
        assert (whole[1] == 0).sum() == 3 * len(ids[0]), name       # each whole-word cf counts
        assert (whole[1] == 1).sum() == len(ids[1]) > 1, name       # a multi-token word matches as a window
        assert torch.equal(enc[1][whole[1] == 1], torch.tensor(ids[1])), name


def test_trigger_ids_from_words_rows_and_tuples(tokenizers):
    tok = tokenizers["roberta"]
    words = trig.trigger_ids(tok, ["cf", "mn"])
    assert words[0] == tuple(tok(" cf", add_special_tokens=False)["input_ids"]) and len(words[0]) == 2
    assert trig.trigger_ids(tok, [list(words[0]), "mn"]) == words
    assert trig.trigger_ids(tok, trig.word_token_ids(tok, ["cf", "mn"])) == words
    with pytest.raises(TypeError):
        trig.trigger_ids(tok, "cf")
    with pytest.raises(ValueError):
        trig.trigger_ids(tok, [[-1, -1]])
