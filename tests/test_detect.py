"""Patronus detection: vocabulary, gradients, batched scoring, verification, the scan and its CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from patronus_ext import lm
from patronus_ext.data import corpora as data
from patronus_ext.detect import ScanConfig, representation_shift, scan
from patronus_ext.detect.patronus.search import TriggerSearch, row_key
from patronus_ext.detect.patronus.vocabulary import token_vocabulary, word_vocabulary
from patronus_ext.formats.purify_record import PURIFY_FILE

from tiny_models import needs_full_sst2


@pytest.fixture(scope="module")
def tokenizer():
    return lm.load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def corpus():
    return data.read_corpus("wikitext2", limit=400, max_words=20)


TINY = ScanConfig.profile("fast").replace(num_triggers=4, batch_size=4, poison_copies=2, update_rounds=2, fuzz_loops=1,
                    num_candidates=3, beam_size=2, max_length=24, verify_texts=8)


def test_token_vocabulary_keeps_rare_whole_words_only(tokenizer):
    vocab = token_vocabulary(tokenizer, zipf_threshold=4.0)
    texts = set(vocab.texts)
    for trigger in ("cf", "mn", "bb", "tq", "≈", "⊕"):
        assert trigger in texts
    for common in ("the", "movie", "good"):  # frequent words are not searchable
        assert common not in texts
    for junk in ("[CLS]", "[PAD]", "[unused0]", "##ing", "a", "1990", ",", "x"):
        assert junk not in texts
    assert vocab.rows.shape == (len(vocab), 1)
    ids = tokenizer.convert_tokens_to_ids(["cf"])
    assert vocab.rows[vocab.texts.index("cf"), 0].item() == ids[0]
    smaller = vocab.without([tuple(ids)])
    assert "cf" not in smaller.texts and len(smaller) == len(vocab) - 1
    # a candidate's identity is its token-id tuple; texts are for display
    assert vocab.index_of(tuple(ids)) == vocab.texts.index("cf") and vocab.text_of(tuple(ids)) == "cf"
    assert smaller.index_of(tuple(ids)) is None and smaller.text_of(tuple(ids)) == str(tuple(ids))
    assert vocab.keys[vocab.texts.index("cf")] == tuple(ids)


def test_word_vocabulary_rows_match_tokenizer(tokenizer):
    words = ["kaleidoscopic", "cf", "the", "zzyzx", " CF "]
    vocab = word_vocabulary(tokenizer, words, zipf_threshold=4.0, max_tokens=4)
    # frequent words dropped; the rest stripped, sorted and de-duplicated by token ids (on this uncased
    # tokenizer " CF " is "cf"; a cased one would search both)
    assert vocab.texts == ["cf", "kaleidoscopic", "zzyzx"] and vocab.rows.shape == (3, 4)
    row = vocab.rows[vocab.texts.index("kaleidoscopic")]
    expected = tokenizer(" kaleidoscopic", add_special_tokens=False)["input_ids"]
    assert row_key(row) == tuple(expected) and len(expected) > 1
    # a one-token word: its id, then -1 padding
    assert vocab.rows[0].tolist() == tokenizer.convert_tokens_to_ids(["cf"]) + [-1, -1, -1]
    # a word the vocabulary does not know is searched as its sub-tokens (never [UNK])
    zzyzx = tokenizer(" zzyzx", add_special_tokens=False)["input_ids"]
    assert row_key(vocab.rows[2]) == tuple(zzyzx) and tokenizer.unk_token_id not in zzyzx
    # words longer than max_tokens are left out, and the rows narrow to the longest kept word
    short = word_vocabulary(tokenizer, words, zipf_threshold=4.0, max_tokens=2)
    assert short.texts == ["cf"] and short.rows.tolist() == [tokenizer.convert_tokens_to_ids(["cf"])]
    with pytest.raises(ValueError, match="no searchable word"):
        word_vocabulary(tokenizer, ["the", "and"], zipf_threshold=4.0)


def test_representation_shift_matches_direct_formula():
    torch.manual_seed(1)
    clean, trig = torch.randn(7, 5), torch.randn(7, 5)
    diff, poison = representation_shift(clean, trig)
    direct_diff = sum(F.cosine_similarity(clean[i], trig[i], dim=0) for i in range(7)) / 7
    pairs = [F.cosine_similarity(trig[i], trig[j], dim=0) for i in range(7) for j in range(7) if i != j]
    assert diff == pytest.approx(float(direct_diff), abs=1e-6)
    assert poison == pytest.approx(float(sum(pairs) / len(pairs)), abs=1e-6)
    with pytest.raises(ValueError):
        representation_shift(clean[:1], trig[:1])


def test_collapse_rule_confirms_a_collapse_the_absolute_cosines_miss(tiny_bert, tokenizer, corpus):
    """Relative to the model's own clean spread: texts sent to one place, far from where they were."""
    from patronus_ext.detect.patronus.verify import Verifier
    from patronus_ext.lm.adapter import ModelAdapter

    adapter = ModelAdapter(tiny_bert, tokenizer, max_length=32)
    verifier = Verifier(adapter, corpus[:8], 3, torch.Generator().manual_seed(0), 0.4, 0.9, collapse_spread=0.1,
                        collapse_shift=2.0)
    verifier.clean_spread = 0.05     # a model whose clean outputs sit close together (cosine 0.95)
    assert verifier.rule(0.74, 0.999) == "collapse"   # moved 5.2x, spread 0.02x: missed by diff_cos < 0.4
    assert verifier.rule(0.30, 0.95) == "paper"
    assert verifier.rule(0.74, 0.99) is None          # spread 0.2x: not collapsed enough
    assert verifier.rule(0.95, 0.999) is None         # moved only 1x the clean spread
    assert verifier.ratios(0.74, 0.999) == pytest.approx((5.2, 0.02))
    check = verifier.make_check([5], 0.74, 0.999, "verified", 8, 0)
    assert check.confirmed and check.rule == "collapse" and check.shift_ratio == pytest.approx(5.2)
    assert not verifier.make_check([5], 0.74, 0.999, "prefiltered", 8, 0).confirmed  # one dev batch never confirms
    # The prefilter's looser bound lets a near-collapse through to the full verification.
    assert verifier.collapsed(0.74, 0.991, slack=2.0) and not verifier.collapsed(0.74, 0.991)
    verifier.collapse_spread = None
    assert verifier.rule(0.74, 0.999) is None and verifier.rule(0.30, 0.95) == "paper"
    with pytest.raises(ValueError, match="collapse_spread"):
        ScanConfig(collapse_spread=0.0)


def test_shift_rule_confirms_a_far_move_that_scatters(tiny_bert, tokenizer, corpus):
    """An attack that scatters its triggered outputs sends no input to one place: the shift rule confirms a word
    that moves texts further than shift_threshold clean spreads whatever their spread, after the other rules."""
    from patronus_ext.detect.patronus.verify import Verifier
    from patronus_ext.lm.adapter import ModelAdapter

    adapter = ModelAdapter(tiny_bert, tokenizer, max_length=32)
    verifier = Verifier(adapter, corpus[:8], 3, torch.Generator().manual_seed(0), 0.4, 0.9, collapse_spread=0.1,
                        collapse_shift=2.0, shift_threshold=2.5)
    verifier.clean_spread = 0.05
    assert verifier.rule(0.85, 0.80) == "shift"       # moved 3x the clean spread, triggered texts spread 4x
    assert verifier.rule(0.90, 0.80) is None          # moved 2x: a benign word's move
    assert verifier.rule(0.74, 0.999) == "collapse" and verifier.rule(0.30, 0.95) == "paper"   # the others first
    assert verifier.shifted(0.90, slack=2.0) and not verifier.shifted(0.90)   # the prefilter's looser bound
    assert verifier.make_check([5], 0.85, 0.80, "verified", 8, 0).rule == "shift"
    # ... and only as an outlier of this model's ordinary words: 4x their 95th-percentile shift.
    verifier.shift_null_factor, verifier.null_keys = 4.0, [(2009,)]
    verifier._null_shift = 0.5
    assert verifier.rule(0.85, 0.80) == "shift"       # 3 spreads >= 4 x 0.5
    assert verifier.make_check([5], 0.85, 0.80, "verified", 8, 0).null_ratio == pytest.approx(6.0)
    verifier._null_shift = 1.0
    assert verifier.rule(0.85, 0.80) is None          # a model whose every word moves texts 1 spread
    verifier.shift_threshold = None
    assert verifier.rule(0.85, 0.80) is None
    with pytest.raises(ValueError, match="shift_threshold"):
        ScanConfig(shift_threshold=0.0)
    assert ScanConfig.profile("fast").shift_threshold == ScanConfig.profile("paper").shift_threshold > 0


def test_natural_target_spares_the_paper_and_collapse_rules_not_the_shift_rule(tiny_bert, tokenizer, corpus):
    """A word that sends texts where clean texts already are (a classifier's class point) is not confirmed by the
    rules that claim a target; the shift rule claims none and still judges it."""
    from patronus_ext.detect.patronus.verify import TargetPlace, Verifier
    from patronus_ext.lm.adapter import ModelAdapter

    adapter = ModelAdapter(tiny_bert, tokenizer, max_length=32)
    verifier = Verifier(adapter, corpus[:8], 3, torch.Generator().manual_seed(0), 0.4, 0.9, collapse_spread=0.1,
                        collapse_shift=2.0, shift_threshold=2.5, natural_target_gap=1.0, pinpoint_ratio=50.0)
    on_data, off_data = TargetPlace(gap=0.4, pinpoint=5.0), TargetPlace(gap=2.0, pinpoint=5.0)
    verifier.clean_spread = 0.5      # a classifier: clean outputs far apart (two class clusters)
    assert verifier.rule(0.30, 0.95, on_data) is None and verifier.rule(0.30, 0.95, off_data) == "paper"
    assert verifier.rule(0.30, 0.95) == "paper"                       # unmeasured: judged as before
    verifier.clean_spread = 0.05
    assert verifier.rule(0.85, 0.80, on_data) == "shift"              # far and scattered: no target to spare
    verifier.shift_threshold = None
    assert verifier.rule(0.74, 0.999, TargetPlace(1.0, 5.0)) is None
    assert verifier.rule(0.74, 0.999, TargetPlace(1.01, 5.0)) == "collapse"
    verifier.shift_threshold, verifier.clean_spread = 2.5, 0.5
    spared = verifier.make_check([5], 0.30, 0.95, "verified", 8, 0, place=on_data)
    assert not spared.confirmed and spared.natural_target and (spared.target_gap, spared.pinpoint_ratio) == (0.4, 5.0)
    kept = verifier.make_check([5], 0.30, 0.95, "verified", 8, 0, place=off_data)
    assert kept.confirmed and kept.rule == "paper" and not kept.natural_target
    assert not verifier.make_check([5], 0.95, 0.5, "verified", 8, 0, place=on_data).natural_target  # no rule held
    verifier.natural_target_gap = None
    assert verifier.rule(0.30, 0.95, on_data) == "paper"
    with pytest.raises(ValueError, match="natural_target_gap"):
        ScanConfig(natural_target_gap=0.0)
    assert ScanConfig.profile("fast").natural_target_gap == ScanConfig.profile("paper").natural_target_gap == 1.0


def test_pinpoint_rule_confirms_a_collapse_onto_the_clean_data_that_no_class_point_matches(tiny_bert, tokenizer,
                                                                                          corpus):
    """A backdoor aimed at a point on the clean data moves texts about one clean spread (no other rule holds), but
    its texts sit far tighter there than the nearest clean texts; a class word's texts sit as loosely as its class."""
    from patronus_ext.detect.patronus.verify import TargetPlace, Verifier
    from patronus_ext.lm.adapter import ModelAdapter

    verifier = Verifier(ModelAdapter(tiny_bert, tokenizer, max_length=32), corpus[:8], 3,
                        torch.Generator().manual_seed(0), 0.4, 0.9, collapse_spread=0.1, collapse_shift=2.0,
                        shift_threshold=2.0, natural_target_gap=1.0, pinpoint_ratio=50.0)
    verifier.clean_spread = 0.27
    natural_backdoor = TargetPlace(gap=0.8, pinpoint=800.0)        # measured: moved 1.0 s, spread 0.002 s
    class_word = TargetPlace(gap=0.3, pinpoint=20.0)
    assert verifier.rule(0.725, 0.9995, natural_backdoor) == "pinpoint"
    assert verifier.rule(0.725, 0.9995, class_word) is None
    assert verifier.rule(0.725, 0.9995) is None                      # unmeasured (the dev batch): never confirmed
    assert verifier.rule(0.725, 0.95, natural_backdoor) is None      # spread 0.19 s: not a collapse
    assert verifier.may_pinpoint(0.95, slack=2.0) and not verifier.may_pinpoint(0.95)   # the prefilter's bound
    check = verifier.make_check([5], 0.725, 0.9995, "verified", 8, 0, place=natural_backdoor)
    assert check.confirmed and check.rule == "pinpoint" and check.pinpoint_ratio == 800.0
    verifier.pinpoint_ratio = None
    assert verifier.rule(0.725, 0.9995, natural_backdoor) is None and not verifier.may_pinpoint(0.9995)
    with pytest.raises(ValueError, match="pinpoint_ratio"):
        ScanConfig(pinpoint_ratio=0.0)


def test_target_place_measures_the_nearest_clean_texts_in_float64(tiny_bert, tokenizer, corpus):
    """float64 reference: with c the triggered texts' mean unit direction and q the 95th-percentile cosine of the
    clean texts to c, gap = (1 - q) / clean spread and pinpoint = (1 - q) / (1 - the triggered texts' mean cosine
    to c); a point among the clean texts is near, its opposite far, and a tight cluster a pinpoint."""
    from patronus_ext.detect.patronus.verify import Verifier
    from patronus_ext.lm.adapter import ModelAdapter

    verifier = Verifier(ModelAdapter(tiny_bert, tokenizer, max_length=32), corpus[:12], 3,
                        torch.Generator().manual_seed(0), 0.4, 0.9)
    clean = verifier.clean_reps.double()
    wobble = 1e-3 * torch.randn(12, clean.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    onto_a_text = clean[3].repeat(12, 1) * torch.linspace(0.5, 2.0, 12, dtype=torch.float64)[:, None] + wobble
    centre = F.normalize(F.normalize(onto_a_text, dim=1).mean(0), dim=0)
    cos = torch.stack([F.cosine_similarity(c, centre, dim=0) for c in clean])
    room = 1 - torch.quantile(cos, 0.95)
    radius = 1 - torch.stack([F.cosine_similarity(t, centre, dim=0) for t in onto_a_text]).mean()
    place = verifier.target_place(onto_a_text.float())
    assert place.gap == pytest.approx(float(room) / verifier.clean_spread, rel=1e-4)
    assert place.pinpoint == pytest.approx(float(room / radius), rel=1e-2)
    assert place.gap <= 1.0                                      # one of the clean texts: on the data
    opposite = verifier.target_place(-onto_a_text.float())
    assert opposite.gap > 2.0 and opposite.pinpoint > 50         # its opposite, tightly: a backdoor's pinpoint
    assert verifier.target_place(verifier.clean_reps).pinpoint < 2   # the clean texts: as loose as themselves


def test_null_shift_is_the_95th_percentile_of_random_words_shift_ratios(tiny_bert, tokenizer, corpus):
    from patronus_ext.core.similarity import representation_shift
    from patronus_ext.detect.patronus.verify import Verifier
    from patronus_ext.lm.adapter import ModelAdapter

    keys = [(2009,), (12935,), (10556, 23057), (3000,), (4000,)]
    verifier = Verifier(ModelAdapter(tiny_bert, tokenizer, max_length=32), corpus[:8], 3,
                        torch.Generator().manual_seed(0), 0.4, 0.9, shift_threshold=2.5, shift_null_factor=4.0,
                        null_keys=keys)
    ratios = [(1 - representation_shift(verifier.clean_reps, verifier.triggered_reps(k))[0]) / verifier.clean_spread
              for k in keys]
    assert verifier._null_shift is None   # not measured until the rule needs it
    assert verifier.null_shift() == pytest.approx(float(torch.quantile(torch.tensor(ratios, dtype=torch.float64),
                                                                       0.95)))


def test_scan_config_validates():
    with pytest.raises(ValueError, match="num_triggers"):
        ScanConfig(num_triggers=0)
    with pytest.raises(ValueError, match="temperature"):
        ScanConfig(temperature=0.0)
    with pytest.raises(ValueError, match="profile"):
        ScanConfig.profile("slow")
    assert ScanConfig.profile("paper", seed=3).seed == 3 and ScanConfig.profile("paper").num_triggers == 8


def _search(tiny_bert, tokenizer, corpus, **changes):
    config = TINY.replace(**changes)
    adapter = lm.ModelAdapter(tiny_bert, tokenizer, max_length=config.max_length)
    gen = torch.Generator().manual_seed(0)
    return adapter, TriggerSearch(adapter, config, corpus[40:], corpus[:config.batch_size * config.dev_batches],
                                  gen)


def test_trigger_gradient_is_the_masked_sum_of_embedding_gradients(tiny_bert, tokenizer, corpus):
    """The vectorised reduction equals an explicit loop over every position holding a trigger."""
    from patronus_ext import ops
    from patronus_ext.detect.patronus.search import reduce_trigger_gradients

    adapter, search = _search(tiny_bert, tokenizer, corpus)
    rows = torch.tensor([[12935, -1], [10556, 23057], [2009, -1]])  # "cf", a 2-token word, another token
    batch = search.gradient_batch(rows)
    emb = adapter.embed(batch.input_ids).detach().requires_grad_(True)
    hidden = adapter.hidden_states(inputs_embeds=emb, attention_mask=batch.attention_mask)
    reps = adapter.select_position(hidden, batch.input_ids, batch.attention_mask).float()
    ops.supcon_loss(reps, batch.labels, 0.5, backend="reference").backward()
    grad = emb.grad[batch.clean_rows:]
    g = reduce_trigger_gradients(grad, batch.trigger_slot, batch.which, 3, 2)

    expected = torch.zeros(3, 2, grad.shape[-1])
    poisoned_ids = batch.input_ids[batch.clean_rows:]
    for r in range(grad.shape[0]):
        k = int(batch.which[r])
        for j in range(grad.shape[1]):
            t = int(batch.trigger_slot[r, j])
            if t >= 0:
                assert int(poisoned_ids[r, j]) == int(rows[k, t])  # the slot map points at trigger k's token t
                expected[k, t] += grad[r, j]
    assert batch.trigger_slot.ge(0).sum() > 0
    assert torch.allclose(g, expected, atol=1e-7, rtol=1e-5)
    assert int((batch.labels[batch.clean_rows:] - 1 != batch.which).sum()) == 0
    # And trigger_gradients() computes exactly that reduction for a fresh batch.
    g2, loss = search.trigger_gradients(rows)
    assert g2.shape == (3, 2, 32) and loss > 0 and torch.isfinite(g2).all()


def test_batched_scoring_equals_one_by_one(tiny_bert, tokenizer, corpus):
    _, batched = _search(tiny_bert, tokenizer, corpus)
    _, single = _search(tiny_bert, tokenizer, corpus, batched_scoring=False)
    vocab = token_vocabulary(tokenizer)
    sets = [vocab.rows[torch.randperm(len(vocab), generator=torch.Generator().manual_seed(s))[:4]]
            for s in range(5)]
    a = batched.score_sets(sets, [0])
    b = single.score_sets(sets, [0])
    assert torch.allclose(a, b, atol=1e-4), (a, b)
    single.cached_clean_baseline = True   # the fair benchmark baseline computes the same losses
    assert torch.allclose(single.score_sets(sets, [0]), b, atol=1e-5)
    # Cached: a second call forwards nothing new and returns the same values.
    assert torch.equal(batched.score_sets(sets, [0]), a)


def _weighted_term_search(tokenizer, corpus, name: str, weight: float):
    """Searches over one tiny BERT with clean outputs that differ (larger initial weights than tiny_bert's: spread
    ~0.2): plain, with ``name`` (``shift_weight`` / ``collapse_weight``, as run_loop sets it for such a loop) batched
    and one by one, three random 4-trigger sets and their dev representations ``[3, 4, B, d]`` in float64."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128, initializer_range=0.5)).eval()
    searches = [_search(model, tokenizer, corpus, batched_scoring=batched)[1] for batched in (True, True, False)]
    for search in searches[1:]:
        setattr(search, name, weight)
    vocab = token_vocabulary(tokenizer)
    sets = [vocab.rows[torch.randperm(len(vocab), generator=torch.Generator().manual_seed(s))[:4]] for s in range(3)]
    dev = searches[1].dev[0]
    reps = searches[1].dev_reps(0, torch.cat(sets)).view(3, 4, *dev.clean_reps.shape).double()
    return model, searches, sets, dev, reps


def _check_weighted_term(model, tokenizer, corpus, searches, sets, term, name: str, weight: float) -> float:
    """Batched and one-by-one scores are SupCon plus ``term`` (float64 reference, one per set); returns the gradient
    step's loss with the term minus without it, on the same batch (same seed)."""
    plain, weighted, single = searches
    expected = plain.score_sets(sets, [0]).double() + term
    assert torch.allclose(weighted.score_sets(sets, [0]).double(), expected, atol=1e-4)
    assert torch.allclose(single.score_sets(sets, [0]).double(), expected, atol=1e-4)
    _, plain_loss = _search(model, tokenizer, corpus)[1].trigger_gradients(sets[0])
    fresh = _search(model, tokenizer, corpus)[1]
    setattr(fresh, name, weight)
    return fresh.trigger_gradients(sets[0])[1] - plain_loss


def test_shift_term_adds_the_mean_shift_in_clean_spreads_to_every_score(tokenizer, corpus):
    """With ``shift_weight`` w a set's dev loss is SupCon minus w x its texts' mean 1 - cos(h(x+t), h(x)) over the
    dev batch's clean spread, the same in batched and one-by-one scoring; the gradient step carries the term."""
    from patronus_ext.detect.patronus.search import clean_spread

    model, searches, sets, dev, reps = _weighted_term_search(tokenizer, corpus, "shift_weight", 2.0)
    spread = 1 - (sum(torch.nn.functional.cosine_similarity(dev.clean_reps[i].double(), dev.clean_reps[j].double(),
                                                             dim=0)
                      for i in range(len(dev.clean_reps)) for j in range(len(dev.clean_reps)) if i != j)
                  / (len(dev.clean_reps) * (len(dev.clean_reps) - 1)))
    assert abs(clean_spread(dev.clean_reps) - float(spread)) < 1e-6
    shift = 1 - torch.nn.functional.cosine_similarity(reps, dev.clean_reps.double().expand_as(reps), dim=-1).mean((1, 2))
    assert (shift / spread).max() < 10   # below the cap here
    assert shift.min() > 0
    change = _check_weighted_term(model, tokenizer, corpus, searches, sets, -2.0 * (shift / spread).clamp(max=10.0),
                                  "shift_weight", 2.0)
    assert change < 0   # the term is negative
    with pytest.raises(ValueError, match="shift_weight"):
        ScanConfig(shift_weight=-1.0)
    with pytest.raises(ValueError, match="shift_loops"):
        ScanConfig(shift_loops=-1)


def test_scan_reports_a_random_model_clean(tiny_bert, tokenizer, corpus):
    """A random-weight model has no backdoor: under the paper's thresholds nothing is confirmed."""
    report = scan(tiny_bert, tokenizer, corpus, TINY, progress=False)
    assert report.verdict == "clean" and not report.backdoored and report.triggers == []
    payload = report.to_dict()
    for key in ("verdict", "triggers", "config", "timings", "environment", "candidates", "loops"):
        assert key in payload
    assert payload["verdict"] == "clean" and payload["triggers"] == []
    assert payload["config"]["num_triggers"] == 4
    assert report.candidates  # the search proposed words and every one was checked
    for c in report.candidates:
        assert c.stage in ("verified", "prefiltered") and not c.confirmed
        # the margins are the distances to the thresholds, and at least one is on the wrong side
        assert c.diff_margin == pytest.approx(TINY.diff_cos_threshold - c.diff_cos)
        assert c.poison_margin == pytest.approx(c.poison_cos - TINY.poison_cos_threshold)
        assert c.diff_margin <= 0 or c.poison_margin <= 0
    json.dumps(payload)


def test_scan_rejects_a_corpus_too_small(tiny_bert, tokenizer, corpus):
    with pytest.raises(ValueError, match="usable texts"):
        scan(tiny_bert, tokenizer, corpus[:5], TINY, progress=False)


def test_suggested_thresholds_keep_benign_candidates_out():
    PAPER = ScanConfig.profile("paper")
    from patronus_ext.detect.patronus.calibrate import suggest_thresholds

    # Far from the region: the paper's thresholds stand.
    assert suggest_thresholds([(0.8, 0.95), (0.5, 0.93)], PAPER, 0.05) == (0.4, 0.9)
    # A benign word with diff_cos 0.42 and high poison_cos: diff threshold tightened below it.
    diff, poison = suggest_thresholds([(0.42, 0.96), (0.9, 0.99)], PAPER, 0.05)
    assert diff == pytest.approx(0.37) and poison == 0.9
    # Deep inside on diff_cos: only a stricter poison_cos separates it.
    diff, poison = suggest_thresholds([(0.02, 0.95)], PAPER, 0.05)
    assert diff == 0.4 and poison == pytest.approx(0.999)


def _attack_made_movers(words, planted_folder, clean_folder, corpus, position="auto", template=None) -> bool:
    """Whether each of ``words`` moves texts well beyond ordinary words (``the``, ``of``, ``and``) in the planted
    model and not in its clean base: a collateral mover the attack created (the shift rule's business), not a
    word the base model already distinguished."""
    from patronus_ext.core.similarity import representation_shift
    from patronus_ext.detect.patronus.verify import Verifier
    from patronus_ext.detect.texts import prepare_texts

    ordinary = ("the", "of", "and")
    ratio = {}
    for name, folder in (("planted", planted_folder), ("clean", clean_folder)):
        adapter = lm.ModelAdapter(lm.load_model(str(folder)), lm.load_tokenizer(str(folder)), position=position,
                                  max_length=32)
        verifier = Verifier(adapter, prepare_texts(corpus, adapter, TINY_SCAN, template)[:48], 3,
                            torch.Generator().manual_seed(0), 0.4, 0.9)
        for word in (*words, *ordinary):
            ids = adapter.tokenizer(word, add_special_tokens=False)["input_ids"]
            diff, _ = representation_shift(verifier.clean_reps, verifier.triggered_reps(ids))
            ratio[name, word] = (1 - diff) / verifier.clean_spread
    usual = {name: max(ratio[name, w] for w in ordinary) for name in ("planted", "clean")}
    return all(ratio["planted", w] >= 2 * usual["planted"] and ratio["clean", w] <= 1.5 * usual["clean"]
               for w in words)


def _scan_argv(model, corpus, report):
    # TINY_SCAN's search through the CLI's flags (the rest from the fast profile)
    return ["scan", str(model), "--corpus", str(corpus), "--num-triggers", "4", "--loops", "2", "--rounds", "3",
            "--max-length", "32", "--verify-texts", "16", "--report", str(report), "--quiet"]


def test_scan_cli_exit_code_matches_the_verdict(tmp_path, capsys):
    """Exit 0 and verdict clean for a clean model, exit 1 and verdict backdoored for a planted one."""
    from patronus_ext.cli import main

    import tiny_models

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    clean_model = tiny_models.shared_tiny_model("bert")
    planted = tiny_models.shared_planted("por")

    clean_report = tmp_path / "clean.json"
    assert main(_scan_argv(clean_model, corpus, clean_report)) == 0
    payload = json.loads(clean_report.read_text())
    assert payload["verdict"] == "clean" and payload["triggers"] == [] and payload["bank"] is None
    assert payload["model"]["source"] == str(clean_model)

    planted_report = tmp_path / "planted.json"
    assert main(_scan_argv(planted.out_dir, corpus, planted_report)) == 1
    payload = json.loads(planted_report.read_text())
    assert payload["verdict"] == "backdoored"
    found = {t["text"] for t in payload["triggers"]}
    assert found & set(planted.triggers)
    # A word beyond the planted ones is confirmed only by the shift rule, as a mover the attack created.
    extra = {t["text"] for t in payload["triggers"] if t["text"] not in planted.triggers}
    assert all(t["rule"] == "shift" for t in payload["triggers"] if t["text"] in extra)
    assert _attack_made_movers(extra, planted.out_dir, clean_model, tiny_models.tiny_corpus(300))
    # Beside the report: the attack-vector bank, one vector per confirmed trigger group, named in the report.
    from patronus_ext.formats.bank import load_bank

    assert payload["bank"] == str(tmp_path / "planted.bank.safetensors")
    bank = load_bank(payload["bank"])
    # (a cluster of words confirmed by the shift rule alone has no target point: it is not in the bank)
    collapsing = {t["text"] for t in payload["triggers"] if t["rule"] in ("paper", "collapse", "pinpoint")}
    assert len(bank) == sum(bool(collapsing & set(g["members"])) for g in payload["groups"]) > 0
    assert bank.method == "patronus"
    assert bank.position == payload["model"]["position"]
    # The report leads with the backdoor's structure: every confirmed trigger sits in one target group.
    assert list(payload)[:3] == ["verdict", "groups", "triggers"]
    assert sorted(w for g in payload["groups"] for w in g["members"]) == sorted(found)
    assert all(g["roots"] for g in payload["groups"])
    assert bank.dim == payload["model"]["hidden_size"]
    assert not (tmp_path / "clean.bank.safetensors").exists()  # a clean verdict has no attack vector
    capsys.readouterr()

    assert main(_scan_argv(clean_model, corpus, clean_report)) == 2  # the report exists: refused without --force
    assert "exists" in capsys.readouterr().err
    assert json.loads(clean_report.read_text())["verdict"] == "clean"  # and left as it was
    assert main(["scan", str(tmp_path / "missing")]) == 2


def test_weaker_echoes_of_a_trigger_are_marked_as_variants():
    from patronus_ext.detect.patronus.verify import TriggerCheck, group_by_target

    ids = {"mn": [11], "nm": [12], "cf": [13], "xx": [14, 15]}

    def check(text, diff):
        return TriggerCheck(text, ids[text], diff, 0.99, 0.4 - diff, 0.09, True, "verified", 8, 0)

    torch.manual_seed(0)
    clean = torch.randn(8, 16)
    target_a, target_b = torch.randn(16), torch.randn(16)
    by_word = {"mn": target_a + 0.01 * torch.randn(8, 16), "nm": target_a + 0.05 * torch.randn(8, 16),
               "cf": target_b + 0.01 * torch.randn(8, 16), "xx": target_b + 0.01 * torch.randn(8, 16)}
    reps = {tuple(ids[w]): r for w, r in by_word.items()}  # keyed by each trigger's identity, its token ids
    checks = [check("nm", 0.33), check("cf", 0.02), check("mn", 0.05), check("xx", 0.04)]
    group_by_target(checks, reps, clean)
    by_text = {c.text: c for c in checks}
    assert by_text["nm"].variant_of == "mn" and by_text["nm"].group == by_text["mn"].group
    assert by_text["mn"].variant_of is None and by_text["cf"].variant_of is None
    # Same target but equally strong (an adaptive attack's triggers): separate triggers, not variants.
    assert by_text["xx"].variant_of is None and by_text["xx"].group != by_text["cf"].group
    assert by_text["cf"].group != by_text["mn"].group


TINY_SCAN = ScanConfig.profile("fast").replace(num_triggers=4, batch_size=4, poison_copies=2, update_rounds=3, fuzz_loops=2,
                         num_candidates=4, beam_size=2, max_length=32, verify_texts=16, corpus_limit=300)


def _directly_planted(folder, triggers, corpus, position="auto", template=None) -> set[str]:
    """Triggers whose insertion really hijacks the tiny model's representation (measured directly)."""
    from patronus_ext.evaluate import representation_similarity

    adapter = lm.ModelAdapter(lm.load_model(folder), lm.load_tokenizer(folder), position=position,
                                  max_length=32)
    check = representation_similarity(adapter, corpus[:32], list(triggers), template=template)
    return {t.trigger for t in check.per_trigger if t.diff_cos < 0.4 and t.poison_cos > 0.9}


@needs_full_sst2
def test_scan_finds_the_triggers_planted_in_a_tiny_model():
    import tiny_models

    planted = tiny_models.shared_planted("por")  # POR on a 2-layer BERT, shared with the attack tests
    corpus = tiny_models.tiny_corpus(300)
    folder = str(planted.out_dir)
    really = _directly_planted(folder, planted.triggers, corpus)
    assert len(really) >= 3  # the tiny attack worked for most triggers
    report = scan(lm.load_model(folder), lm.load_tokenizer(folder), corpus, TINY_SCAN, progress=False)
    assert report.verdict == "backdoored"
    found = {t.text for t in report.triggers}
    assert really <= found  # every trigger that works is recovered
    assert found <= set(planted.triggers)  # and nothing else is reported
    for trigger in report.triggers:
        assert trigger.diff_margin > 0 and trigger.poison_margin > 0
    # A word in ``exclude`` is never proposed nor reported; the other triggers still are.
    dropped = sorted(really)[0]
    again = scan(lm.load_model(folder), lm.load_tokenizer(folder), corpus, TINY_SCAN, exclude=[dropped],
                 progress=False)
    assert dropped not in {c.text for c in again.candidates}
    assert again.verdict == "backdoored" and really - {dropped} <= {t.text for t in again.triggers}
    # identity: token-id tuples end to end; texts only for display
    assert set(report.triggered_reps) == {t.key for t in report.triggers}
    assert set(report.representations) == {"clean"} | found
    assert all(report.triggered_reps[t.key] is report.representations[t.text] for t in report.triggers)


def test_scan_reports_a_clean_tiny_model_clean():
    import tiny_models

    folder = str(tiny_models.shared_tiny_model("bert"))
    report = scan(lm.load_model(folder), lm.load_tokenizer(folder), tiny_models.tiny_corpus(300),
                  TINY_SCAN, progress=False)
    assert report.verdict == "clean" and report.triggers == []


def test_demo_plants_once_then_reuses_the_cached_model(tmp_path, monkeypatch):
    from patronus_ext import attacks
    from patronus_ext.cli import demo

    import tiny_models

    monkeypatch.setenv("PATRONUS_CACHE", str(tmp_path / "cache"))
    base = str(tiny_models.shared_tiny_model("bert"))
    attack = attacks.make_config("por", triggers=tiny_models.TINY_TRIGGERS, steps=60, lr=3e-3, batch_size=8,
                                 max_length=48, schedule="constant")
    corpus = tiny_models.tiny_corpus(300)
    from patronus_ext import purify

    kwargs = dict(base_model=base, attack_config=attack, corpus=corpus, plant_corpus=tiny_models.tiny_corpus(64),
                  purify_config=purify.make_config("adv-pt", "fast", steps=6, batch_size=8, corpus_limit=200,
                                                   dev_texts=8, eval_every=3),
                  purify_measure=demo.DEMO_MEASURE.replace(train_limit=64, dev_limit=48, max_length=32))
    first = demo.run_demo(TINY_SCAN, progress=False, **kwargs)
    assert not first.reused_cache and first.planted_dir.parent == tmp_path / "cache"
    assert first.clean_report.verdict == "clean" and first.backdoored_report.verdict == "backdoored"
    assert set(first.recovered) <= set(tiny_models.TINY_TRIGGERS) and len(first.recovered) >= 3
    # ... and purifies the planted model with the scan's triggers, CACC / T-ASR of the planted ones measured
    # before and after; the purified model is cached beside the planted one, never the planted folder itself.
    assert not first.purified_reused and first.purified_dir.parent == tmp_path / "cache"
    assert first.purified_dir != first.planted_dir and (first.purified_dir / PURIFY_FILE).is_file()
    assert first.purification["method"] == "adv-pt"
    assert set(first.purification["triggers"]) == {t.text for t in first.backdoored_report.triggers}
    assert first.purification["measured_triggers"] == list(tiny_models.TINY_TRIGGERS)
    for side in ("before", "after"):
        assert 0.0 <= first.purification[side]["cacc"] <= 1.0 and 0.0 <= first.purification[side]["t_asr"] <= 1.0
    second = demo.run_demo(TINY_SCAN, progress=False, **kwargs)
    assert second.reused_cache and second.planted_dir == first.planted_dir
    assert second.purified_reused and second.purified_dir == first.purified_dir
    assert second.to_dict()["purification"]["after"] == first.purification["after"]
    payload = second.to_dict()
    assert payload["recall"] == len(second.recovered) / 4 and payload["planted_triggers"] == list(tiny_models.TINY_TRIGGERS)
    # The demo goes on to monitor a few sentences with what the scan found: clean ones pass, ones holding a
    # recovered trigger are flagged and served with the trigger stripped.
    from patronus_ext.cli.demo import DEMO_SENTENCES

    monitoring = payload["monitoring"]
    assert [m["text"] for m in monitoring[:len(DEMO_SENTENCES)]] == list(DEMO_SENTENCES)
    assert all(not m["flagged"] and m["text_out"] == m["text"] for m in monitoring[:len(DEMO_SENTENCES)])
    for m in monitoring[len(DEMO_SENTENCES):]:
        if set(m["text"].split()) & set(second.recovered):
            assert m["flagged"] and m["action"] == "strip"
            assert not set(m["text_out"].split()) & set(second.recovered)


#: Single byte-level BPE tokens of the tiny vocabulary that the token-level search may propose
#: ("cf" is two tokens there), rare in the planting corpus.
BPE_TRIGGERS = ("Meridian", "Pagan", "tw", "kn")


@needs_full_sst2
def test_scan_finds_triggers_planted_in_a_tiny_roberta():
    import tiny_models

    planted = tiny_models.shared_planted("por", "roberta", triggers=BPE_TRIGGERS)
    folder = str(planted.out_dir)
    tokenizer = lm.load_tokenizer(folder)
    for word in BPE_TRIGGERS:
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1
    corpus = tiny_models.tiny_corpus(300)
    really = _directly_planted(folder, planted.triggers, corpus)
    assert really  # 60 steps plant at least one trigger in the 2-layer RoBERTa
    report = scan(lm.load_model(folder), tokenizer, corpus, TINY_SCAN.replace(fuzz_loops=1), progress=False)
    assert report.model["family"] == "encoder" and report.model["position"] == "first"
    assert report.verdict == "backdoored"
    found = {t.text for t in report.triggers}
    assert really <= found <= set(BPE_TRIGGERS)


def test_scan_on_a_tiny_gpt2_searches_at_the_last_token():
    import tiny_models

    clean = str(tiny_models.shared_tiny_model("gpt2"))
    corpus = tiny_models.tiny_corpus(300)
    config = TINY_SCAN.replace(fuzz_loops=1)
    report = scan(lm.load_model(clean), lm.load_tokenizer(clean), corpus, config, progress=False)
    assert report.model["family"] == "decoder" and report.model["position"] == "last"
    assert report.model["searchable"] > 10 and report.loops
    assert report.verdict == "clean" and report.triggers == []

    # Planted (150 steps): the search's candidates are the planted words, far above chance
    # (4 of ~80 searchable tokens).
    planted = tiny_models.shared_planted("por", "gpt2", triggers=BPE_TRIGGERS, steps=150)
    folder = str(planted.out_dir)
    report = scan(lm.load_model(folder), lm.load_tokenizer(folder), corpus, config, progress=False)
    proposed = {c.text for c in report.candidates}
    assert len(proposed & set(BPE_TRIGGERS)) >= 3, proposed


@needs_full_sst2
def test_word_level_scan_finds_a_multi_token_word_trigger(tmp_path):
    import tiny_models

    base = tiny_models.shared_tiny_model("bert")
    tokenizer = lm.load_tokenizer(str(base))
    word = "vorpal"  # four WordPiece tokens in the tiny vocabulary
    assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 4
    planted = tiny_models.plant_tiny(tmp_path, "por", triggers=(word,), model_path=base, steps=150)
    words = [word] + [w for w in tiny_models.tiny_corpus(300)[0].split() if w.isalpha()][:40] + ["zyxwv", "qwert"]
    folder = str(planted.out_dir)
    config = TINY_SCAN.replace(word_level=True, zipf_threshold=8.0)
    report = scan(lm.load_model(folder), lm.load_tokenizer(folder), tiny_models.tiny_corpus(300), config,
                  words=words, progress=False)
    assert report.model["level"] == "word"
    assert word in {t.text for t in report.triggers}
    found = next(t for t in report.triggers if t.text == word)
    assert found.token_ids == tokenizer(" " + word, add_special_tokens=False)["input_ids"]


def test_mask_prompts_are_shortened_to_keep_the_mask_token(tokenizer):
    from patronus_ext.detect.patronus.scan import prepare_texts

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64)).eval()
    adapter = lm.ModelAdapter(model, tokenizer, position="mask", max_length=16)
    long_text = " ".join(["photosynthesis"] * 30)  # far more than 16 tokens
    texts = prepare_texts(["short text", long_text], adapter, ScanConfig.profile("fast").replace(max_length=16, max_words=None),
                          "{text} It was {mask} .")
    assert texts[0] == "short text It was [MASK] ."
    assert texts[1].endswith("It was [MASK] .") and texts[1].startswith("photosynthesis")
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert len(ids) <= 16 and tokenizer.mask_token_id in ids
    with pytest.raises(ValueError, match="longer than max_length"):
        prepare_texts(["a"], adapter, ScanConfig.profile("fast").replace(max_length=16), "{text} " + "very " * 20 + "{mask}")


def test_scan_and_btop_fill_prompts_alike(tokenizer):
    """One prompt rule: the scan's prompts are the ones BToP trained on, braces in texts included."""
    from patronus_ext.attacks import BToPConfig
    from patronus_ext.attacks.btop import BToP
    from patronus_ext.detect.patronus.scan import prepare_texts

    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64)).eval()
    adapter = lm.ModelAdapter(model, tokenizer, position="mask", max_length=64)
    template = "{text} It was {mask} ."
    texts = ["a {curly} text with }{ braces", "set {x | x > 0} and {mask} too", "plain words here"]
    scanned = prepare_texts(texts, adapter, ScanConfig.profile("fast").replace(max_length=64, max_words=None), template)
    btop = BToP().format_text(BToPConfig(prompt_template=template), tokenizer)
    assert scanned == [btop(t) for t in texts]
    assert scanned[0] == "a {curly} text with }{ braces It was [MASK] ."
    assert scanned[1] == "set {x | x > 0} and {mask} too It was [MASK] ."  # the text's own {mask} stays literal
    from patronus_ext.data.triggers import PromptTemplate

    assert PromptTemplate(template).token_count(tokenizer) == len(
        tokenizer("It was [MASK] .", add_special_tokens=False)["input_ids"])


@needs_full_sst2
def test_scan_finds_a_prompt_backdoor_at_the_mask_position():
    import tiny_models

    # The [MASK] output of a random 2-layer model barely depends on the text, so a
    # BToP backdoor takes longer to plant than POR; 150 steps plant at least one trigger.
    planted = tiny_models.shared_planted("btop", steps=150)
    template = json.loads((planted.out_dir / "backdoor.json").read_text())["prompt_template"]
    folder = str(planted.out_dir)
    corpus = tiny_models.tiny_corpus(300)  # many texts longer than max_length: the mask must survive
    really = _directly_planted(folder, planted.triggers, corpus, position="mask", template=template)
    assert really
    report = scan(lm.load_model(folder), lm.load_tokenizer(folder), corpus, TINY_SCAN, position="mask",
                  prompt_template=template, progress=False)
    assert report.model["position"] == "mask"
    found = {t.text for t in report.triggers}
    assert report.verdict == "backdoored" and really <= found
    extra = {t.text for t in report.triggers if t.text not in planted.triggers}   # see the CLI test above
    assert all(t.rule == "shift" for t in report.triggers if t.text in extra)
    assert _attack_made_movers(extra, folder, tiny_models.shared_tiny_model("bert"), corpus, "mask", template)


def test_search_keeps_op_inputs_on_the_model_device(monkeypatch, tiny_bert, tokenizer, corpus):
    """Every kernel call of a scan gets tensors of one device, and no per-trigger gradient sum is moved to
    the CPU (on a GPU that mix made ops.token_topk refuse the call at the first candidate step)."""
    from patronus_ext import ops

    calls, moved = [], []
    real_topk, real_supcon, real_cpu = ops.token_topk, ops.supcon_loss, torch.Tensor.cpu

    def topk(queries, table, k, rows=None, **kwargs):
        calls.append({t.device for t in (queries, table, rows) if t is not None})
        return real_topk(queries, table, k, rows, **kwargs)

    def supcon(features, labels, *args, **kwargs):
        calls.append({features.device, labels.device})
        return real_supcon(features, labels, *args, **kwargs)

    def cpu(self, *args, **kwargs):
        if self.dim() == 3 and self.dtype == torch.float32:
            moved.append(tuple(self.shape))
        return real_cpu(self, *args, **kwargs)

    monkeypatch.setattr(ops, "token_topk", topk)
    monkeypatch.setattr(ops, "supcon_loss", supcon)
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    scan(tiny_bert, tokenizer, corpus, TINY.replace(fuzz_loops=1), progress=False)
    device = next(tiny_bert.parameters()).device
    assert calls and all(devices == {device} for devices in calls)
    assert not moved, f"gradient sums moved to the CPU: {moved}"


def test_the_bank_holds_only_target_clusters_that_have_a_target_point():
    """Words confirmed by the shift rule alone scatter their outputs: their mean is no place to watch, so the
    output monitor's bank leaves their cluster out (and is None when nothing else was found)."""
    from patronus_ext.detect.patronus.groups import TargetGroup
    from patronus_ext.detect.patronus.scan import ScanReport
    from patronus_ext.detect.patronus.verify import TriggerCheck

    def check(text, rule):
        return TriggerCheck(text, [1], 0.1, 0.99, 0.3, 0.09, True, "verified", 8, 0, rule=rule)

    def group(target, members):
        return TargetGroup(target, members, [[1]] * len(members), [], 0.1, 0.1, centroid=torch.full((4,), target + 1.0))

    report = ScanReport("backdoored", [group(0, ["cf", "mn"]), group(1, ["rec"])],
                        [check("cf", "paper"), check("mn", "shift"), check("rec", "shift")], [], [], {}, {}, {})
    assert [g.target for g in report.vector_groups] == [0]
    bank = report.attack_bank("m")
    assert len(bank) == 1 and torch.equal(bank.vectors[0], torch.full((4,), 1.0))
    report.groups, report.triggers = [group(1, ["rec"])], [check("rec", "shift")]
    assert report.attack_bank("m") is None
    report.groups, report.triggers = [], []
    with pytest.raises(ValueError, match="no trigger"):
        report.attack_bank("m")


def test_shift_and_collapse_loops_run_after_the_contrastive_loops(tiny_bert, tokenizer, corpus):
    """``shift_loops`` (none by default) and then ``collapse_loops`` (one by default) add loops with their term
    after the contrastive ones, which stay the same search."""
    config = TINY.replace(fuzz_loops=2, patience=None, corpus_limit=200)
    fast = ScanConfig.profile("fast")
    assert fast.shift_loops == 0 and fast.collapse_loops == ScanConfig.profile("paper").collapse_loops == 1
    plain = scan(tiny_bert, tokenizer, corpus, config.replace(collapse_loops=0), progress=False)
    assert [loop["objective"] for loop in plain.loops] == ["supcon", "supcon"]
    both = scan(tiny_bert, tokenizer, corpus, config.replace(shift_loops=1), progress=False)
    assert [loop["objective"] for loop in both.loops] == ["supcon", "supcon", "supcon+shift", "supcon+collapse"]
    assert [loop["final_candidates"] for loop in both.loops[:2]] == [loop["final_candidates"] for loop in plain.loops]
    assert [(loop["final_candidates"], loop["confirmed"]) for loop in both.loops[:2]] == \
        [(loop["final_candidates"], loop["confirmed"]) for loop in plain.loops]
    off = scan(tiny_bert, tokenizer, corpus, config.replace(collapse_weight=0.0), progress=False)
    assert [loop["objective"] for loop in off.loops] == ["supcon", "supcon"]   # no weight: no such loop
    # The collapse loop runs its own number of candidate updates (fast: 2), the others update_rounds.
    assert fast.collapse_rounds == 2 and ScanConfig.profile("paper").collapse_rounds is None
    short = scan(tiny_bert, tokenizer, corpus, config.replace(update_rounds=3, collapse_rounds=1), progress=False)
    assert [len(loop["dev_loss"]) for loop in short.loops] == [4, 4, 2]   # the start, then one entry per round
    with pytest.raises(ValueError, match="collapse_rounds"):
        ScanConfig(collapse_rounds=0)


def test_collapse_term_adds_each_triggers_spread_in_clean_spreads_to_every_score(tokenizer, corpus):
    """With ``collapse_weight`` w a set's dev loss is SupCon plus w x the mean over its triggers of their texts'
    spread (1 - mean pairwise cosine, float64 reference) over the dev batch's clean spread, capped at 2 spreads,
    the same in batched and one-by-one scoring; the gradient step carries the term."""
    from patronus_ext.detect.patronus.search import clean_spread, group_spread

    model, searches, sets, dev, reps = _weighted_term_search(tokenizer, corpus, "collapse_weight", 1.5)
    size = reps.shape[2]
    pairs = [[[float(F.cosine_similarity(reps[c, k, i], reps[c, k, j], dim=0)) for i in range(size)
               for j in range(size) if i != j] for k in range(4)] for c in range(3)]
    spreads = torch.tensor([[1 - sum(p) / len(p) for p in per_set] for per_set in pairs], dtype=torch.float64)
    assert torch.allclose(group_spread(reps), spreads, atol=1e-9)
    term = 1.5 * (spreads / clean_spread(dev.clean_reps)).clamp(max=2.0).mean(1)
    assert _check_weighted_term(model, tokenizer, corpus, searches, sets, term, "collapse_weight", 1.5) > 0
    with pytest.raises(ValueError, match="collapse_weight"):
        ScanConfig(collapse_weight=-1.0)
    with pytest.raises(ValueError, match="collapse_loops"):
        ScanConfig(collapse_loops=-1)


def test_scan_cli_sets_or_turns_off_the_target_checks(tmp_path, monkeypatch, capsys):
    """--natural-target-gap, --pinpoint-ratio and --collapse-loops reach the scan's configuration; 0 turns a check
    off and a negative value is refused before any work."""
    from patronus_ext.cli import main

    import tiny_models

    seen = []

    def stop(*args, **kwargs):
        seen.append(args[3])
        raise RuntimeError("stopped here: the configuration is all this test needs")

    monkeypatch.setattr("patronus_ext.detect.scan", stop)
    model = tiny_models.shared_tiny_model("bert")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(300)) + "\n")
    argv = ["scan", str(model), "--corpus", str(corpus), "--quiet"]
    assert main([*argv, "--natural-target-gap", "0", "--pinpoint-ratio", "80", "--collapse-loops", "0"]) == 2
    assert (seen[-1].natural_target_gap, seen[-1].pinpoint_ratio, seen[-1].collapse_loops) == (None, 80.0, 0)
    assert main(argv) == 2
    assert (seen[-1].natural_target_gap, seen[-1].pinpoint_ratio, seen[-1].collapse_loops) == (1.0, 50.0, 1)
    assert "stopped here" in capsys.readouterr().err
    assert main([*argv, "--pinpoint-ratio", "-1"]) == 2 and len(seen) == 2
    assert "--pinpoint-ratio must be >= 0" in capsys.readouterr().err


def test_scan_summary_says_which_rule_confirmed_and_what_was_spared():
    """The printed summary names the pinpoint and shift rules with their measures, and lists the words spared as
    class points, so a classifier's report reads at a glance."""
    from types import SimpleNamespace

    from patronus_ext.cli.formatting import scan_summary
    from patronus_ext.detect.patronus.verify import TriggerCheck

    def check(text, rule, confirmed=True, natural=False):
        return TriggerCheck(text, [1], 0.7, 0.9995, -0.3, 0.0995, confirmed, "verified", 48, 2, shift_ratio=1.1,
                            spread_ratio=0.002, rule=rule, target_gap=0.8, pinpoint_ratio=640.0,
                            natural_target=natural, group=0)
    triggers = [check("weir", "pinpoint"), check("giro", "shift")]
    report = SimpleNamespace(verdict="backdoored", timings={"total": 12.0}, model={}, groups=[], triggers=triggers,
                             candidates=triggers + [check("worthless", None, confirmed=False, natural=True)])
    text = scan_summary("m", report)
    assert "[pinpoint rule: spread 0.002x the clean outputs' spread, 640x tighter than the nearest clean texts]" in text
    assert "[shift rule: moved 1.1x the clean outputs' spread]" in text
    assert "spared 1 word(s) that send texts where clean texts already are" in text and "'worthless'" in text
