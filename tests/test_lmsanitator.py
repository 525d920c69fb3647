"""LMSanitator (docs/METHODS.md §3) on tiny models: trigger insertion, entropy bound, PV, detection, CLI and bank."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from patronus_ext import lm
from patronus_ext.cli import main
from patronus_ext.detect import LMSanitatorConfig, lmsanitator
from patronus_ext.detect.lmsanitator.inversion import (
    PVCandidate,
    _Inversion,
    _judge,
    _optimise,
    batch_entropy,
    insert_soft_trigger,
    nearest_mse,
    rejudge,
    sample_insert_positions,
    sign_agreement,
    trigger_range_ratio,
)
from patronus_ext.formats.bank import load_bank

import tiny_models

#: Tiny-model settings under which planted tiny BERTs give an accepted vector and clean ones do not
#: (d=32 embeddings span about +-0.1: the fast profile's lr would leave the 1.2x range in a few steps;
#: a random tiny BERT's clean outputs are nearly constant, so the slack relative to them is off).
#: Several seeds of the tiny NeuBA plant leave the 1.2x range or stay too spread; 8 seeds leave room.
TINY = LMSanitatorConfig.profile("fast", corpus_limit=128, max_length=32, lr=1e-3, epochs=6, give_up_epoch=2,
                   seeds=8).replace(entropy_relative=None, distance_relative=None)  # (None overrides are ignored
#: by the fast profile; the tiny models' degenerate output scale is why both calibrations are off here)


def _slow_insert(embeds, mask, trigger, positions):
    rows, masks = [], []
    for b in range(embeds.shape[0]):
        p = int(positions[b])
        rows.append(torch.cat([embeds[b, :p], trigger, embeds[b, p:]]))
        masks.append(torch.cat([mask[b, :p], torch.ones(trigger.shape[0], dtype=mask.dtype), mask[b, p:]]))
    return torch.stack(rows), torch.stack(masks)


# -- building blocks ---------------------------------------------------------------------------
def test_insertion_matches_a_slow_reference_and_shifts_the_rest(generator):
    batch, length, dim, t = 5, 11, 6, 3
    embeds = torch.randn(batch, length, dim, generator=generator)
    lengths = torch.tensor([11, 7, 4, 9, 2])
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids = torch.randint(5, 50, (batch, length), generator=generator) * mask
    trigger = torch.randn(t, dim, generator=generator, requires_grad=True)
    positions = torch.tensor([1, 6, 3, 9, 0])
    out, out_mask, out_ids = insert_soft_trigger(embeds, mask, trigger, positions, ids, fill_id=-7)
    ref, ref_mask = _slow_insert(embeds, mask, trigger.detach(), positions)
    assert out.shape == (batch, length + t, dim)
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)
    assert torch.equal(out_mask, ref_mask)
    for b in range(batch):
        p = int(positions[b])
        assert (out_ids[b, p:p + t] == -7).all()
        assert torch.equal(out_ids[b, :p], ids[b, :p]) and torch.equal(out_ids[b, p + t:], ids[b, p:])
    out.sum().backward()  # the trigger receives the gradient of every row it sits in
    torch.testing.assert_close(trigger.grad, torch.full_like(trigger, float(batch)))


def test_insert_positions_stay_in_the_first_words(generator):
    lengths = torch.tensor([3, 10, 60, 2, 40])
    mask = (torch.arange(64) < lengths[:, None]).long()
    for _ in range(20):
        pos = sample_insert_positions(mask, prefix=1, suffix=1, max_insert=32, generator=generator)
        n = lengths - 2
        k = pos - 1
        assert ((k >= n.clamp(max=1)) & (k <= n.clamp(max=32))).all()
    capped = sample_insert_positions(mask, 1, 1, 32, generator, limit=torch.tensor([2, 3, 5, 1, 4]))
    assert (capped <= torch.tensor([2, 3, 5, 1, 4])).all()


def test_entropy_bound_is_ln_batch_minus_the_slack():
    config = LMSanitatorConfig(batch_size=32, entropy_slack=0.02)
    assert config.entropy_bound() == pytest.approx(math.log(32) - 0.02)
    assert config.entropy_bound() == pytest.approx(3.446, abs=1e-3)  # the authors' constant for B = 32
    assert LMSanitatorConfig.profile("fast").entropy_bound() == pytest.approx(math.log(16) - 0.02)
    same = torch.randn(1, 9).expand(16, 9)
    assert float(batch_entropy(same)) == pytest.approx(math.log(16), abs=1e-6)
    assert float(batch_entropy(torch.randn(16, 9) * 5)) < math.log(16) - 0.5
    with pytest.raises(ValueError, match="batch_size"):
        LMSanitatorConfig(batch_size=1)
    # Relative cap: the slack is at most entropy_relative x the clean outputs' own deficit.
    rel = LMSanitatorConfig(batch_size=16, entropy_slack=0.02, entropy_relative=0.05)
    clean = math.log(16) - 0.023                                   # all-MiniLM-L6-v2's clean outputs
    assert rel.entropy_bound(clean_entropy=clean) == pytest.approx(math.log(16) - 0.05 * 0.023)
    assert rel.entropy_bound(clean_entropy=math.log(16) - 1.0) == pytest.approx(math.log(16) - 0.02)
    assert rel.entropy_bound() == pytest.approx(math.log(16) - 0.02)  # no clean entropy: the absolute slack


def test_range_ratio_and_nearest_mse(generator):
    embedding = torch.tensor([[-0.5, 0.2], [0.1, 1.0]])
    assert trigger_range_ratio(torch.tensor([[0.9, -0.4]]), embedding) == pytest.approx(0.9)
    assert trigger_range_ratio(torch.tensor([[0.0, -0.75]]), embedding) == pytest.approx(1.5)
    out, bank = torch.randn(4, 3, generator=generator), torch.randn(5, 3, generator=generator)
    slow = torch.stack([torch.nn.functional.mse_loss(out, b.expand_as(out)) for b in bank])
    torch.testing.assert_close(nearest_mse(out, bank), slow)


def test_pv_is_the_mean_over_all_texts():
    path = tiny_models.shared_tiny_model("bert")
    adapter = lm.load_adapter(str(path), device="cpu")
    config = TINY.replace(batch_size=4)
    texts = tiny_models.tiny_corpus(10)  # 10 texts: batches 4 + 4 + 2, the last one partial
    inv = _Inversion(lm.ModelAdapter(adapter.model, adapter.tokenizer, max_length=config.max_length - 7),
                     texts, config, torch.Generator().manual_seed(0))
    trigger = inv.init_trigger(3)
    vector, distance, entropy = inv.final_pass(trigger)
    with torch.no_grad():
        each = torch.cat([inv.triggered(trigger, torch.tensor([i])) for i in range(len(texts))])
    torch.testing.assert_close(vector, each.mean(0), rtol=1e-4, atol=1e-5)
    assert distance == pytest.approx(float(((each - inv.clean) ** 2).mean()), rel=1e-4)
    want = (float(batch_entropy(each[:4])) + float(batch_entropy(each[4:8]))) / 2  # full batches only
    assert entropy == pytest.approx(want, rel=1e-4)
    # Init: T[i] = E[(70 s + 10 i) mod V].
    rows = [(3 * 70 + 10 * i) % inv.embedding.shape[0] for i in range(7)]
    torch.testing.assert_close(trigger, inv.embedding[rows])


# -- detection on tiny models -------------------------------------------------------------------
def _triggered_target(adapter, trigger: str) -> torch.Tensor:
    import random

    from patronus_ext.data.triggers import insert_words

    rng = random.Random(0)
    texts = [insert_words(t, trigger, 3, rng) for t in tiny_models.tiny_corpus(64)]
    return adapter.encode(texts, max_length=48).mean(0)


#: Cosine of the accepted vector to the nearest planted trigger's triggered representation.  POR: the
#: acceptance bar 0.9.  NeuBA: the 60-step tiny plant is weak (its triggered representations are a mix
#: of target and text), and the inverted vector, which maximises the distance to the clean outputs,
#: overshoots it, between the block-pair targets (measured 0.78-0.85 from run to run, also with 150
#: planting steps), so the tiny test asks 0.7; MiniLM is held to 0.9 in the benchmark.
MIN_COSINE = {"por": 0.9, "neuba": 0.7}


@tiny_models.needs_full_sst2
@pytest.mark.parametrize("method", ["por", "neuba"])
def test_detects_a_planted_tiny_backdoor(method):
    planted = tiny_models.shared_planted(method, "bert")
    adapter = lm.load_adapter(str(planted.out_dir), device="cpu")
    report = lmsanitator(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(200), TINY, progress=False)
    assert report.verdict == "backdoored" and report.backdoored
    found = report.accepted
    assert found
    group = (found[0].seed - TINY.first_seed) // TINY.seed_batch   # detection mode stops after its group
    assert len(report.vectors) == min(TINY.seeds, (group + 1) * TINY.seed_batch)
    targets = torch.stack([_triggered_target(adapter, w) for w in tiny_models.TINY_TRIGGERS])
    cos = torch.nn.functional.cosine_similarity(torch.stack([v.vector for v in found])[:, None], targets, dim=-1)
    assert float(cos.max()) >= MIN_COSINE[method], cos
    v = found[0]
    assert v.entropy >= v.entropy_bound and v.distance > TINY.distance_threshold
    assert v.trigger_norm_ratio <= TINY.range_factor
    bank = report.attack_bank("tiny")
    assert bank.method == "lmsanitator" and bank.vectors.shape == (len(found), adapter.hidden_size)
    payload = report.to_dict()
    assert payload["method"] == "lmsanitator" and payload["verdict"] == "backdoored"
    assert {"seed", "entropy", "min_distance", "trigger_norm_ratio", "accepted"} <= set(payload["vectors"][0])
    json.dumps(payload)


def test_clean_tiny_model_is_clean():
    adapter = lm.load_adapter(str(tiny_models.shared_tiny_model("bert")), device="cpu")
    report = lmsanitator(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(200), TINY, progress=False)
    assert report.verdict == "clean" and not report.accepted
    assert len(report.vectors) == TINY.seeds
    assert "CLEAN" in report.summary("tiny")
    with pytest.raises(ValueError, match="no attack vector"):
        report.attack_bank()


def test_mask_position_reads_the_mask_and_inserts_before_it():
    adapter = lm.load_adapter(str(tiny_models.shared_tiny_model("bert")), device="cpu")
    config = TINY.replace(seeds=1, epochs=1, give_up_epoch=0)
    report = lmsanitator(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(200), config, position="mask",
                         prompt_template="{text} It was {mask} .", progress=False)
    assert report.model["position"] == "mask" and len(report.vectors) == 1
    mask_adapter = lm.ModelAdapter(adapter.model, adapter.tokenizer, position="mask", max_length=25)
    from patronus_ext.detect.patronus.scan import prepare_texts

    texts = prepare_texts(tiny_models.tiny_corpus(32), mask_adapter, config, "{text} It was {mask} .")
    inv = _Inversion(mask_adapter, texts, config, torch.Generator().manual_seed(0))
    mask_at = (inv.ids == adapter.tokenizer.mask_token_id).long().argmax(1)
    assert (inv.positions <= mask_at).all()
    with torch.no_grad():  # the representation follows the shifted mask token
        o = inv.triggered(inv.init_trigger(1), torch.arange(4))
    assert o.shape == (4, adapter.hidden_size)


# -- CLI --------------------------------------------------------------------------------------
@tiny_models.needs_full_sst2
def test_cli_exit_codes_report_and_bank(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(200)) + "\n")
    planted = tiny_models.shared_planted("por", "bert")
    common = ["--method", "lmsanitator", "--corpus", str(corpus), "--seeds", "4", "--max-length", "32", "--quiet"]
    # The fast profile's lr is for MiniLM; this CLI run checks plumbing, so a patched profile keeps it short.
    original = LMSanitatorConfig.PROFILES["fast"]
    LMSanitatorConfig.PROFILES["fast"] = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)}
    try:
        report, bank = tmp_path / "r.json", tmp_path / "b.safetensors"
        assert main(["scan", str(planted.out_dir), *common, "--report", str(report), "--bank-out", str(bank)]) == 1
        payload = json.loads(report.read_text())
        assert payload["method"] == "lmsanitator" and payload["verdict"] == "backdoored"
        assert payload["bank"] == str(bank)
        loaded = load_bank(bank)
        assert loaded.method == "lmsanitator" and loaded.position == "first" and len(loaded) >= 1
        assert loaded.model == str(planted.out_dir)
        clean = tiny_models.shared_tiny_model("bert")
        assert main(["scan", str(clean), *common, "--report", str(tmp_path / "c.json")]) == 0
        assert json.loads((tmp_path / "c.json").read_text())["bank"] is None
        capsys.readouterr()
        assert main(["scan", str(clean), *common, "--loops", "2"]) == 2  # a Patronus-only option
        assert "does not take --loops" in capsys.readouterr().err
        assert main(["scan", str(clean), "--seeds", "3", "--quiet"]) == 2  # an LMSanitator-only option
        assert main(["scan", str(tmp_path / "missing"), *common]) == 2
        assert main(["scan", str(planted.out_dir), *common, "--report", str(report)]) == 2  # never overwrites
    finally:
        LMSanitatorConfig.PROFILES["fast"] = original


def test_distance_threshold_calibrated_on_random_real_token_triggers():
    """``distance_relative``: the threshold is that multiple of the largest mean MSE that triggers of real
    random tokens cause, measured on the model before any seed; the report says what was used."""
    import tiny_models

    adapter = lm.load_adapter(str(tiny_models.shared_tiny_model("bert")), device="cpu")
    config = TINY.replace(distance_relative=3.0, distance_draws=5, seeds=1, epochs=1, give_up_epoch=0)
    report = lmsanitator(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(64), config, progress=False)
    distance = report.model["distance"]
    assert distance["calibrated"] and len(distance["random_token_distances"]) == 5
    assert all(d > 0 for d in distance["random_token_distances"])
    assert distance["threshold"] == pytest.approx(3.0 * max(distance["random_token_distances"]))
    seed = report.vectors[0]
    if not seed.appeared:  # the message names the calibrated threshold, not the unused constant
        assert f"{distance['threshold']:.4g}" in seed.reason
    plain = lmsanitator(adapter.model, adapter.tokenizer, tiny_models.tiny_corpus(64),
                        config.replace(distance_relative=None), progress=False).model["distance"]
    assert not plain["calibrated"] and plain["threshold"] == config.distance_threshold
    assert plain["random_token_distances"] == []
    with pytest.raises(ValueError, match="distance_relative"):
        config.replace(distance_relative=0.0)


# -- batched seeds, judging, the exhaustive bank --------------------------------------------------
def _tiny_inversion(config, count=48):
    adapter = lm.load_adapter(str(tiny_models.shared_tiny_model("bert")), device="cpu")
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    texts = tiny_models.tiny_corpus(count)
    return _Inversion(lm.ModelAdapter(adapter.model, adapter.tokenizer, max_length=config.max_length - 7),
                      texts, config, torch.Generator().manual_seed(0))


def _reference_seed(inv, seed, config):
    """One seed the plain way: its own trigger, torch.optim.Adam, the lr boost, the same text order."""
    trigger = torch.nn.Parameter(inv.init_trigger(seed))
    optimizer = torch.optim.Adam([trigger], lr=config.lr * config.lr_boost)
    boosted = True
    for epoch in range(config.epochs):
        for idx in inv._chunks(inv.epoch_order(epoch), full_only=True):
            o = inv.triggered(trigger, idx)
            loss = -torch.nn.functional.mse_loss(o, inv.clean[idx]) - config.diversity_weight * batch_entropy(o)
            optimizer.zero_grad()
            loss.backward()
            if boosted and float(trigger.grad.abs().max()) > config.converge_grad:
                boosted = False
                optimizer.param_groups[0]["lr"] = config.lr
            optimizer.step()
    return trigger.detach()


def test_seeds_optimised_in_one_batch_match_the_per_seed_loop():
    """A user's bank must not depend on how many seeds ran together: S triggers in one [S, t, d] batch end
    where each seed ends alone (torch.optim.Adam, its own lr boost), within float tolerance."""
    # converge_grad 1e-6: the boost ends at a different step per seed; threshold ~0: every seed "appears".
    config = TINY.replace(batch_size=8, epochs=2, lr=1e-3, converge_grad=1e-6, distance_threshold=1e-12,
                          group_repel=False)
    inv = _tiny_inversion(config)
    seeds = [1, 2, 3]
    batched = _optimise(inv, seeds, [], config, None)
    assert len({r.converged_step for r in batched}) >= 1
    for record, seed in zip(batched, seeds):
        alone = _optimise(inv, [seed], [], config, None)[0]
        reference = _reference_seed(inv, seed, config)
        assert record.appeared and alone.appeared and record.converged_step == alone.converged_step
        assert not torch.equal(record.trigger, inv.init_trigger(seed))   # it moved
        torch.testing.assert_close(record.trigger, reference, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(record.trigger, alone.trigger, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(record.vector, alone.vector, rtol=1e-3, atol=1e-5)
        assert record.epoch_distance == pytest.approx(alone.epoch_distance, rel=1e-3, abs=1e-7)
    # The batched final pass gives each trigger's own PV.
    triggers = torch.stack([inv.init_trigger(s) for s in seeds])
    vectors, distances, entropies = inv.final_passes(triggers)
    for j, s in enumerate(seeds):
        v, d, e = inv.final_pass(triggers[j])
        torch.testing.assert_close(vectors[j], v, rtol=1e-4, atol=1e-5)
        assert distances[j] == pytest.approx(d, rel=1e-4) and entropies[j] == pytest.approx(e, rel=1e-4)
    # With group repulsion a seed is pushed off what the seeds before it in its group hold: the first seed
    # runs as alone, the later ones do not.
    repelled = _optimise(inv, seeds, [], config.replace(group_repel=True, repel_weight=5.0), None)
    torch.testing.assert_close(repelled[0].trigger, batched[0].trigger, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(repelled[2].trigger, batched[2].trigger, rtol=1e-3, atol=1e-5)
    # repel_epochs=0: no repulsion at all, the plain batched run again.
    free = _optimise(inv, seeds, [], config.replace(group_repel=True, repel_weight=5.0, repel_epochs=0), None)
    torch.testing.assert_close(free[2].trigger, batched[2].trigger, rtol=1e-3, atol=1e-5)


def _candidate(seed, vector, distance=1.0, entropy=2.77, bound=2.76, ratio=0.5, appeared=True):
    return PVCandidate(seed=seed, accepted=False, reason="", appeared=appeared, epochs_run=3, distance=distance,
                       entropy=entropy, entropy_bound=bound, trigger_norm_ratio=ratio, vector=vector)


def test_judging_dedupes_by_sign_agreement_and_rejects_failed_checks():
    """The bank keeps one vector per attack vector (a near copy by sign is a duplicate even when its MSE is
    large) and nothing that fails the distance, entropy or range check."""
    base = torch.linspace(-1, 1, 20)
    base[base == 0] = 0.5
    copy = base * 3.0                        # same signs, MSE far above the threshold
    copy[:2] = -copy[:2]                     # 18/20 = 0.9 of the signs agree: still a duplicate (> 0.8)
    other = torch.where(torch.arange(20) % 2 == 0, base, -base)   # half the signs flipped: distinct
    records = [_candidate(1, base), _candidate(2, copy), _candidate(3, other),
               _candidate(4, -base, entropy=2.70),              # too spread
               _candidate(5, base.flip(0), distance=0.05),      # did not move far enough from clean
               _candidate(6, base.roll(3), ratio=1.5),          # trigger outside the embedding range
               _candidate(7, None, appeared=False)]
    records[-1].distance = None
    kept = []
    _judge(records, kept, 0.1, TINY.replace(dedupe_agreement=0.8))
    assert [r.seed for r in kept] == [1, 3]
    assert [r.accepted for r in records] == [True, False, True, False, False, False, False]
    assert "duplicate of seed 1" in records[1].reason and records[1].sign_agreement == pytest.approx(0.9)
    assert "entropy" in records[3].reason
    assert "final distance" in records[4].reason
    assert "embedding range" in records[5].reason
    assert records[6].reason.startswith("abandoned")
    assert sign_agreement(base, torch.stack([copy, other])).tolist() == pytest.approx([0.9, 0.5])
    # Among duplicates the most collapsed one (highest entropy) is kept, whatever its seed: a mixture of two
    # attack vectors is more spread than either.
    mixture, pure = _candidate(1, base + 0.3 * other, entropy=2.765), _candidate(2, base, entropy=2.770)
    kept = []
    _judge([mixture, pure], kept, 0.1, TINY)
    assert [r.seed for r in kept] == [2] and "duplicate of seed 2" in mixture.reason
    # A distinct vector (half the signs differ) that lies close in MSE: the authors' MSE rule drops it,
    # the sign rule alone keeps it (the monitor would not flag its outputs with the first vector).
    near = torch.where(torch.arange(20) % 2 == 0, base, -base) * 0.1 + base * 0.05
    for by_distance, kept_seeds in ((True, [1]), (False, [1, 2])):
        kept = []
        pair = [_candidate(1, base * 0.1), _candidate(2, near)]
        _judge(pair, kept, 0.1, TINY.replace(dedupe_distance=by_distance))
        assert [r.seed for r in kept] == kept_seeds, pair[1].reason



def test_every_group_is_judged_again_so_a_later_purer_vector_replaces_an_early_mixture():
    """Judged group by group, an early group's mixture of two attack vectors is kept and a later group's pure
    vector of the same basin becomes its duplicate; judged again together the pure one is kept instead, and
    the verdict (some PV kept) cannot change."""
    base = torch.linspace(-1, 1, 20)
    base[base == 0] = 0.5
    other = torch.where(torch.arange(20) % 2 == 0, base, -base)
    mixture = _candidate(1, base + 0.3 * other, entropy=2.765)
    distinct = _candidate(2, other, entropy=2.768)
    pure = _candidate(5, base, entropy=2.770)
    spread = _candidate(6, -base, entropy=2.70)            # fails the entropy bound in both passes
    kept = []
    _judge([mixture, distinct], kept, 0.1, TINY)
    _judge([pure, spread], kept, 0.1, TINY)
    assert sorted(r.seed for r in kept) == [1, 2] and "duplicate of seed 1" in pure.reason
    kept = rejudge([mixture, distinct, pure, spread], 0.1, TINY)
    assert sorted(r.seed for r in kept) == [2, 5]
    assert pure.accepted and not mixture.accepted and "duplicate of seed 5" in mixture.reason
    assert not spread.accepted and "entropy" in spread.reason
    assert rejudge([spread], 0.1, TINY) == [] and spread.min_distance is None

@tiny_models.needs_full_sst2
def test_exhaustive_bank_out_holds_every_accepted_vector(tmp_path):
    """``scan --method lmsanitator --bank-out`` runs exhaustive mode: every seed runs, and the bank written
    holds every accepted, distinct vector of the report, in seed order."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models.tiny_corpus(200)) + "\n")
    planted = tiny_models.shared_planted("por", "bert")
    original = LMSanitatorConfig.PROFILES["fast"]
    LMSanitatorConfig.PROFILES["fast"] = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)}
    try:
        report, bank = tmp_path / "r.json", tmp_path / "b.safetensors"
        assert main(["scan", str(planted.out_dir), "--method", "lmsanitator", "--corpus", str(corpus), "--seeds",
                     "8", "--max-length", "32", "--quiet", "--report", str(report), "--bank-out", str(bank)]) == 1
        payload = json.loads(report.read_text())
        assert payload["config"]["mode"] == "exhaustive" and len(payload["vectors"]) == 8   # no early stop
        accepted = [v for v in payload["vectors"] if v["accepted"]]
        loaded = load_bank(bank)
        assert len(loaded) == len(accepted) >= 1
        assert loaded.labels == [f"seed-{v['seed']}" for v in accepted]
        vectors = loaded.vectors
        if len(vectors) > 1:   # distinct: no two kept vectors agree in sign on more than 0.8
            for i in range(len(vectors)):
                assert float(sign_agreement(vectors[i], torch.cat([vectors[:i], vectors[i + 1:]])).max()) <= 0.8
    finally:
        LMSanitatorConfig.PROFILES["fast"] = original
