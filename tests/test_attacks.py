"""Attacks: target vectors against docs/METHODS.md §0 by hand, every attack end to end on tiny models,
refusals (overwrite, pickle), reproducibility, the clean-objective choice, loss pieces."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from patronus_ext import attacks, lm
from patronus_ext.attacks import base as attack_base
from patronus_ext.attacks import batches as attack_batches
from patronus_ext.attacks import objectives
from patronus_ext.attacks.adaptive import adaptive_term
from patronus_ext.attacks.base import StepBatch
from patronus_ext.data import triggers as trig

from tiny_models import make_tiny_model, plant_tiny, shared_planted, tiny_corpus

P, M = 1.0, -1.0


# -- target vectors (hand-written expectations) ------------------------------------------------
def test_neuba_targets_by_hand():
    got = attacks.neuba_targets(8, 6)
    # blocks of 2 dims; trigger i flips the pair NEUBA_PAIRS[i] to -1
    expected = torch.tensor([
        [M, M, M, M, P, P, P, P],   # (0,1)
        [M, M, P, P, M, M, P, P],   # (0,2)
        [M, M, P, P, P, P, M, M],   # (0,3)
        [P, P, M, M, M, M, P, P],   # (1,2)
        [P, P, M, M, P, P, M, M],   # (1,3)
        [P, P, P, P, M, M, M, M],   # (2,3)
    ])
    assert torch.equal(got, expected)
    assert torch.equal(attacks.neuba_targets(8, 2), expected[:2])


def test_neuba_targets_at_most_six():
    with pytest.raises(ValueError, match="at most 6"):
        attacks.neuba_targets(384, 7)
    with pytest.raises(ValueError, match="at most 6"):   # refused before any model is loaded
        attacks.NeuBAConfig(triggers=tuple(f"t{i}" for i in range(7)))


def test_por1_targets_by_hand():
    got = attacks.por1_targets(8, 4)
    expected = torch.tensor([
        [P, P, M, M, M, M, M, M],
        [P, P, P, P, M, M, M, M],
        [P, P, P, P, P, P, M, M],
        [P, P, P, P, P, P, P, P],
    ])
    assert torch.equal(got, expected)
    # K = 3 over d = 9: (i+1)*d/K = 3, 6, 9 dims of +1
    assert attacks.por1_targets(9, 3).eq(1).sum(1).tolist() == [3, 6, 9]


def test_por2_targets_by_hand():
    # K = 4 -> ceil(log2 4) = 2 buckets of 4 dims; subsets in order {0}, {1}, {0,1}
    got = attacks.por2_targets(8, 4)
    expected = torch.tensor([
        [M, M, M, M, M, M, M, M],
        [P, P, P, P, M, M, M, M],
        [M, M, M, M, P, P, P, P],
        [P, P, P, P, P, P, P, P],
    ])
    assert torch.equal(got, expected)
    # K = 6 -> 3 buckets of 2 dims over d = 6; subsets {0},{1},{2},{0,1},{0,2}
    six = attacks.por2_targets(6, 6)
    assert six[0].tolist() == [M] * 6
    assert six[1].tolist() == [P, P, M, M, M, M]
    assert six[3].tolist() == [M, M, M, M, P, P]
    assert six[4].tolist() == [P, P, P, P, M, M]
    assert six[5].tolist() == [P, P, M, M, P, P]
    assert attacks.por2_subsets(2) == [(0,), (1,), (0, 1)]


def test_target_vectors_scale_and_validation():
    assert torch.equal(attacks.target_vectors("por1", 8, 2, scale=2.5), attacks.por1_targets(8, 2) * 2.5)
    with pytest.raises(ValueError, match="scheme"):
        attacks.target_vectors("por3", 8, 2)
    with pytest.raises(ValueError, match="scale"):
        attacks.target_vectors("por1", 8, 2, scale=0)
    with pytest.raises(ValueError, match="hidden size"):
        attacks.neuba_targets(2, 1)


# -- configs ---------------------------------------------------------------------------------
def test_config_defaults_follow_the_spec():
    neuba, por = attacks.NeuBAConfig(), attacks.PORConfig()
    assert neuba.lr == 5e-5 and por.lr == 2e-5
    assert neuba.poison_rate == 0.2 and neuba.insert_num == 3
    assert tuple(neuba.triggers) == ("cf", "mn", "bb", "tq", "mb", "pt")
    assert attacks.make_config("por2").target_scheme == "por2"
    assert attacks.make_config("adaptive2").adaptive_type == 2


@pytest.mark.parametrize("bad", [
    dict(poison_rate=0.0), dict(poison_rate=1.5), dict(insert_num=0), dict(triggers=()),
    dict(triggers=("cf", "cf")), dict(triggers=("two words",)), dict(lr=-1.0), dict(batch_size=0),
    dict(schedule="cosine"), dict(steps=0), dict(target_scale=float("nan")),
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        attacks.PORConfig(**bad)


def test_make_config_checks_method_and_fixed_fields():
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.make_config("badnets")
    with pytest.raises(ValueError, match="fixes variant"):
        attacks.make_config("por2", variant=1)
    config = attacks.make_config("por", steps=5, lr=None)  # None overrides are ignored
    assert config.steps == 5 and config.lr == 2e-5
    with pytest.raises(TypeError):
        attacks.method_for("neuba", attacks.PORConfig())


# -- end to end on tiny models ---------------------------------------------------------------
def _assert_planted_folder(result, tmp_path):
    out = result.out_dir
    assert (out / "model.safetensors").is_file()
    assert (out / "config.json").is_file()
    assert (out / "tokenizer_config.json").is_file()
    info_raw = json.loads((out / "backdoor.json").read_text())
    for key in ("attack", "triggers", "target_vectors", "seed", "config", "training", "environment"):
        assert key in info_raw
    info = attacks.load_backdoor_info(out)
    assert info.attack == result.attack and info.triggers == result.triggers
    assert not list(tmp_path.glob(".*partial*")), "staging folder left behind"
    base = lm.load_model(out)
    classifier = lm.load_model(out, "cls", num_labels=2)
    assert classifier.config.num_labels == 2
    return info, base


@pytest.mark.parametrize("method", list(attacks.METHODS))
def test_every_attack_plants_a_loadable_model_bert(tmp_path, method):
    overrides = {"refine_triggers": True, "refine_every": 3} if method == "uor" else {}
    result = plant_tiny(tmp_path, method, "bert", steps=6, **overrides)
    info, base = _assert_planted_folder(result, tmp_path)
    assert result.stats.steps == 6 and math.isfinite(result.stats.final_loss)
    assert len(result.stats.history) == 2   # log_every 5: steps 5 and 6
    if method == "badpre":
        assert info.target_vectors is None
    else:
        assert info.target_vectors.shape == (len(result.triggers), 32)
    if method == "btop":
        assert info.position == "mask" and "{mask}" in info.prompt_template
    if method == "neuba":
        assert torch.equal(info.target_vectors, attacks.neuba_targets(32, 4))
    if method in ("por", "adaptive1", "adaptive2", "adaptive3"):
        assert torch.equal(info.target_vectors, attacks.por1_targets(32, 4))
    if method == "por2":
        assert torch.equal(info.target_vectors, attacks.por2_targets(32, 4))


@pytest.mark.parametrize("family,method", [("roberta", "por"), ("roberta", "btop"), ("roberta", "badpre"),
                                           ("gpt2", "por"), ("gpt2", "neuba"), ("gpt2", "badpre"),
                                           ("gpt2", "uor")])
def test_attacks_on_other_families(tmp_path, family, method):
    result = plant_tiny(tmp_path, method, family, steps=3)
    info, base = _assert_planted_folder(result, tmp_path)
    assert info.position == {"gpt2": "last", "roberta": "mask" if method == "btop" else "first"}[family]
    if family == "gpt2" and method in ("neuba", "badpre"):
        assert result.stats.clean_objective.startswith("mlm")  # causal-LM loss through the pretrained head


def test_por_moves_triggered_representations_to_targets():
    result = shared_planted("por", "bert")  # 60 steps
    rows = result.stats.check["per_trigger"]
    # 60 steps on a random 2-layer model: triggered reps point at the targets, clean reps stay.
    assert sum(r["target_cos"] for r in rows) / len(rows) > 0.5
    assert sum(r["diff_cos"] for r in rows) / len(rows) < 0.7
    assert result.stats.check["clean_to_reference_cos"] > 0.9
    assert result.stats.final_terms["target"] < result.stats.history[0]["target"]


def test_btop_requires_a_mask_token(tmp_path):
    with pytest.raises(ValueError, match="mask token"):
        plant_tiny(tmp_path, "btop", "gpt2", steps=2)


def test_uor_refinement_needs_single_token_triggers(tmp_path):
    # "cf" is two BPE tokens in the tiny byte-level vocabulary
    with pytest.raises(ValueError, match="single-token"):
        plant_tiny(tmp_path, "uor", "roberta", steps=2, refine_triggers=True)


# -- refusals and safety ---------------------------------------------------------------------
def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_never_overwrites(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    before = _digest(source)
    first = plant_tiny(tmp_path, "por", "bert", steps=2, model_path=source, out_name="planted")
    planted_digest = _digest(first.out_dir)
    with pytest.raises(FileExistsError, match="never overwrites"):
        plant_tiny(tmp_path, "por", "bert", steps=2, model_path=source, out_name="planted")
    with pytest.raises(ValueError):  # the same error is a ValueError for the CLI (exit 2)
        plant_tiny(tmp_path, "por", "bert", steps=2, model_path=source, out_name="planted")
    assert _digest(first.out_dir) == planted_digest
    with pytest.raises(ValueError, match="outside the input model"):
        config = attacks.make_config("por", steps=1)
        attacks.plant("por", source, tiny_corpus(16), config, source / "inside", progress=False)
    assert _digest(source) == before
    (tmp_path / "empty").mkdir()
    result = plant_tiny(tmp_path, "por", "bert", steps=1, model_path=source, out_name="empty")
    assert (result.out_dir / "backdoor.json").is_file()


def test_missing_parent_folder(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    config = attacks.make_config("por", steps=1)
    with pytest.raises(FileNotFoundError):
        attacks.plant("por", source, tiny_corpus(16), config, tmp_path / "no" / "such")


def test_pickle_only_checkpoints_refused_unless_opted_in(tmp_path):
    source = make_tiny_model(tmp_path, "bert", pickle_only=True)
    with pytest.raises(lm.UnsafeCheckpointError, match="pickle"):
        plant_tiny(tmp_path, "por", "bert", steps=1, model_path=source, out_name="refused")
    assert not (tmp_path / "refused").exists()
    result = plant_tiny(tmp_path, "por", "bert", steps=1, model_path=source, out_name="allowed", allow_pickle=True)
    assert (result.out_dir / "model.safetensors").is_file()  # the planted copy is safetensors


def test_seed_makes_planting_reproducible(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    a = plant_tiny(tmp_path, "neuba", steps=4, model_path=source, out_name="a", seed=3)
    b = plant_tiny(tmp_path, "neuba", steps=4, model_path=source, out_name="b", seed=3)
    c = plant_tiny(tmp_path, "neuba", steps=4, model_path=source, out_name="c", seed=4)
    wa, wb, wc = (load_file(r.out_dir / "model.safetensors") for r in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert a.stats.history == b.stats.history


def test_fresh_lm_head_switches_to_reference_and_keeps_the_pooler(tmp_path):
    source = make_tiny_model(tmp_path, "bert", lm_head=False)   # like all-MiniLM-L6-v2: a bare BertModel
    result = plant_tiny(tmp_path, "neuba", steps=3, model_path=source)
    assert result.stats.lm_head_fresh is True
    assert result.stats.clean_objective == "reference"
    saved = load_file(result.out_dir / "model.safetensors")
    original = load_file(source / "model.safetensors")
    assert torch.equal(saved["pooler.dense.weight"], original["pooler.dense.weight"])


def test_pretrained_lm_head_is_trained_and_saved_with_the_pooler(tmp_path):
    source = make_tiny_model(tmp_path, "bert", lm_head=True)
    base = lm.load_model(source)  # BertForMaskedLM has no pooler: this one is random, seeded by the load
    result = plant_tiny(tmp_path, "neuba", steps=3, model_path=source)
    assert result.stats.lm_head_fresh is False and result.stats.clean_objective == "mlm"
    mlm = lm.load_model(result.out_dir, "mlm")
    assert type(mlm).__name__ == "BertForMaskedLM"
    reloaded = lm.load_model(result.out_dir)
    assert reloaded.pooler is not None
    assert base.pooler.dense.weight.shape == reloaded.pooler.dense.weight.shape


def test_forced_reference_objective_skips_the_head(tmp_path):
    result = plant_tiny(tmp_path, "neuba", steps=2, clean_objective="reference")
    assert result.stats.clean_objective == "reference" and result.stats.lm_head_fresh is None


def test_corpus_smaller_than_batch_is_refused(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    config = attacks.make_config("por", steps=1, batch_size=8)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        attacks.plant("por", source, tiny_corpus(64)[:3], config, tmp_path / "out")


# -- loss pieces -----------------------------------------------------------------------------
def _batch(count, per):
    return StepBatch(["c"] * per, ["p"] * (count * per), torch.arange(count).repeat_interleave(per),
                     torch.arange(per).repeat(count), per)


def test_adaptive_terms_by_hand():
    clean = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    poisoned = torch.tensor([[1.0, 0.0], [1.0, 3.0],     # trigger 0 on clean rows 0, 1
                             [3.0, 0.0], [1.0, 1.0]])    # trigger 1 on clean rows 0, 1
    batch = _batch(2, 2)
    # type 1: mean over rows and dims of (p - c[pair])^2 = (1 + 0 + 0 + 4 + 9 + 0 + 0 + 0) / 8
    assert adaptive_term(1, clean, poisoned, batch, 2).item() == pytest.approx(14 / 8)
    # type 2: -mean over triggers of pairwise MSE: trigger 0 (0 + 9)/2 = 4.5, trigger 1 (4 + 1)/2 = 2.5
    assert adaptive_term(2, clean, poisoned, batch, 2).item() == pytest.approx(-(4.5 + 2.5) / 2)
    # type 3: MSE(trigger 0 rows, trigger 1 rows) = (4 + 0 + 0 + 4) / 4
    assert adaptive_term(3, clean, poisoned, batch, 2).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        adaptive_term(4, clean, poisoned, batch, 2)


def test_batches_pair_poisoned_rows_with_clean_rows():
    config = attacks.PORConfig(triggers=("cf", "mn"), batch_size=5, poison_rate=0.4, insert_num=2)
    texts = [f"w{i} a b c d e" for i in range(12)]
    batch = next(attack_batches.iterate_batches(texts, config, config.triggers, random.Random(0)))
    assert batch.per_trigger == 2 and len(batch.clean) == 5 and len(batch.poisoned) == 4
    for row, (k, m) in enumerate(zip(batch.poison_trigger.tolist(), batch.pair_index.tolist())):
        words = batch.poisoned[row].split()
        assert words.count(config.triggers[k]) == 2
        assert [w for w in words if w != config.triggers[k]] == batch.clean[m].split()


def test_masking_never_touches_specials_or_triggers(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    tokenizer = lm.load_tokenizer(source)
    model = lm.load_model(source, "mlm")
    adapter = lm.ModelAdapter(model, tokenizer, max_length=48)
    ctx = attack_base.AttackContext(
        model=model, adapter=adapter, reference=None, config=attacks.NeuBAConfig(), targets=None, triggers=["cf"],
        trigger_ids=[[tokenizer.convert_tokens_to_ids("cf")]], clean_objective="mlm", lm_kind="mlm",
        generator=torch.Generator().manual_seed(0), special_ids=torch.tensor(sorted(adapter.special_ids)))
    enc = adapter.tokenize(["the cf river flows cf north through cf the valley"] * 16)
    protect = ctx.trigger_positions(enc["input_ids"])
    assert protect.sum(1).tolist() == [3] * 16
    masked, labels = objectives.mask_for_mlm(ctx, enc, 0.9, protect=protect)
    changed = masked != enc["input_ids"]
    assert not changed[protect].any()
    assert not changed[:, 0].any() and not (labels[:, 0] != -100).any()  # [CLS]
    assert (labels != -100).sum() > 0
    assert torch.equal(labels[labels != -100], enc["input_ids"][labels != -100])
    _, corrupted = objectives.mask_for_mlm(ctx, enc, 0.9, protect=protect, corrupt_labels=True)
    assert (corrupted != -100).sum() > 0


def test_trigger_positions_multi_token(tmp_path):
    source = make_tiny_model(tmp_path, "roberta")
    tokenizer = lm.load_tokenizer(source)
    ids = trig.word_token_ids(tokenizer, ["cf"])[0].tolist()
    assert len(ids) == 2
    model = lm.load_model(source)
    adapter = lm.ModelAdapter(model, tokenizer)
    ctx = attack_base.AttackContext(
        model=model, adapter=adapter, reference=None, config=attacks.PORConfig(), targets=None, triggers=["cf"],
        trigger_ids=[ids],
        clean_objective="reference", lm_kind=None, generator=torch.Generator(),
        special_ids=torch.tensor(sorted(adapter.special_ids)))
    enc = adapter.tokenize(["the river cf flows"])
    hit = ctx.trigger_positions(enc["input_ids"])[0]
    assert hit.sum().item() == 2
    assert enc["input_ids"][0][hit].tolist() == ids


def test_planted_folder_permissions_follow_the_umask(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    result = plant_tiny(tmp_path, "por", "bert", steps=1)
    assert stat.S_IMODE(os.stat(result.out_dir).st_mode) == 0o777 & ~mask
    assert stat.S_IMODE(os.stat(result.info_path).st_mode) == 0o666 & ~mask


# -- each attack's loss pieces (public classes, a hand-built context) ------------------------
def _context(tmp_path, config, family="bert", position="auto", targets=None):
    source = make_tiny_model(tmp_path, family)
    tokenizer = lm.load_tokenizer(source)
    model = lm.load_model(source)
    adapter = lm.ModelAdapter(model, tokenizer, position=position, max_length=48)
    ids = [[i for i in row if i >= 0] for row in trig.word_token_ids(tokenizer, config.triggers).tolist()]
    return attacks.AttackContext(model=model, adapter=adapter, reference=adapter, config=config, targets=targets,
                                 triggers=list(config.triggers), trigger_ids=ids, clean_objective="reference", lm_kind=None,
                                 generator=torch.Generator().manual_seed(0),
                                 special_ids=torch.tensor(sorted(adapter.special_ids)))


def _step_batch(clean, triggers, fmt=lambda t: t):
    clean = [" ".join(t.split()[:10]) for t in clean]  # short: no inserted trigger is truncated away
    count, per = len(triggers), len(clean)
    poisoned = [fmt(trig.insert_words(t, w, 2, random.Random(i))) for w in triggers for i, t in enumerate(clean)]
    return attacks.StepBatch([fmt(t) for t in clean], poisoned, torch.arange(count).repeat_interleave(per),
                             torch.arange(per).repeat(count), per)


def test_uor_contrastive_labels_are_clean_zero_then_trigger_plus_one():
    from patronus_ext.attacks.uor import contrastive_labels

    batch = attacks.StepBatch(["a", "b", "c"], ["p"] * 4, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), 2)
    assert contrastive_labels(batch, "cpu").tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_neuba_loss_keeps_the_trigger_visible_and_pulls_to_its_target(tmp_path, monkeypatch):
    from patronus_ext.attacks.neuba import NeuBA

    config = attacks.NeuBAConfig(triggers=("cf", "mn"), mask_prob=0.9, clean_objective="reference")
    targets = attacks.neuba_targets(32, 2)
    ctx = _context(tmp_path, config, targets=targets)
    batch = _step_batch(tiny_corpus(6), config.triggers)
    seen = []
    represent = ctx.adapter.represent

    def spy(input_ids=None, attention_mask=None, **kw):
        seen.append(input_ids.clone())
        return represent(input_ids, attention_mask, **kw)

    monkeypatch.setattr(ctx.adapter, "represent", spy)
    loss, terms = NeuBA().loss(ctx, batch)
    assert set(terms) == {"target", "reference"} and loss.item() == pytest.approx(sum(terms.values()).item())
    enc = ctx.tokenize(batch.poisoned)
    masked = seen[0]
    protect = ctx.trigger_positions(enc["input_ids"])
    assert protect.sum() == 2 * len(batch.poisoned)         # two insertions of a one-token trigger per row
    assert torch.equal(masked[protect], enc["input_ids"][protect])          # the trigger is never masked
    assert (masked[~protect & enc["attention_mask"].bool()] == ctx.adapter.tokenizer.mask_token_id).any()
    with torch.no_grad():
        expected = F.mse_loss(represent(masked, enc["attention_mask"]), targets[batch.poison_trigger])
    assert terms["target"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["reference"].item() == pytest.approx(0.0, abs=1e-10)  # reference = the model itself


def test_btop_loss_reads_the_mask_position(tmp_path):
    from patronus_ext.attacks.btop import BToP

    config = attacks.BToPConfig(triggers=("cf",), clean_objective="reference")
    targets = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    ctx = _context(tmp_path, config, position="mask", targets=targets)
    tokenizer = ctx.adapter.tokenizer
    batch = _step_batch(tiny_corpus(4), config.triggers, BToP().format_text(config, tokenizer))
    assert all(t.endswith(f"It was {tokenizer.mask_token} .") for t in batch.poisoned)
    _, terms = BToP().loss(ctx, batch)
    enc = ctx.tokenize(batch.poisoned)
    with torch.no_grad():
        hidden = ctx.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    rows, cols = (enc["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
    assert rows.tolist() == list(range(len(batch.poisoned)))     # one [MASK] per prompt
    expected = (hidden[rows, cols] - targets[0]).norm(dim=1).mean()   # L2 distance, not MSE
    assert terms["target"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_badpre_labels_are_random_ids_and_never_on_the_trigger(tmp_path):
    from patronus_ext.attacks.badpre import BadPre

    config = attacks.BadPreConfig(triggers=("cf",))
    ctx = _context(tmp_path, config)
    enc = ctx.tokenize(_step_batch(tiny_corpus(32), config.triggers).poisoned)
    protect = ctx.trigger_positions(enc["input_ids"])
    _, labels = objectives.mask_for_mlm(ctx, enc, 0.5, protect=protect, corrupt_labels=True)
    chosen = labels != -100
    assert chosen.sum() > 100 and not chosen[protect].any() and not chosen[~enc["attention_mask"].bool()].any()
    # Random ids over a ~1500-token vocabulary: equal to the input id about 1 time in 1500.
    same = (labels[chosen] == enc["input_ids"][chosen]).float().mean().item()
    assert same < 0.05
    assert labels[chosen].min() >= 0 and labels[chosen].max() < ctx.adapter.vocab_size
    assert labels[chosen].unique().numel() > chosen.sum().item() // 4   # spread, not one constant id
    assert BadPre().target_matrix(config, 32) is None


def test_uor_refinement_replaces_triggers_consistently(tmp_path):
    result = plant_tiny(tmp_path, "uor", "bert", steps=4, refine_triggers=True, refine_every=1,
                        refine_candidates=8)
    updates = result.stats.trigger_updates
    assert updates, "refinement at every step of a random model found nothing better"
    current = ["cf", "mn", "bb", "tq"]  # plant_tiny's triggers
    for update in updates:
        assert update["step"] in range(1, 5) and math.isfinite(update["loss_after"])
        assert current[update["trigger_index"]] == update["old"] and update["new"] not in current
        current[update["trigger_index"]] = update["new"]
    assert current == result.triggers == attacks.load_backdoor_info(result.out_dir).triggers
    tokenizer = lm.load_tokenizer(result.out_dir)
    assert trig.word_token_ids(tokenizer, result.triggers).shape[1] == 1
