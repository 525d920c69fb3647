"""Purification on tiny models: scan-report triggers checked against the model, adversarial pre-training
and fine-tuning, Fine-mixing and E-PUR arithmetic, the atomic output folder, the BadNet subject and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from patronus_ext import attacks, lm, purify
from patronus_ext.core.similarity import diff_cos
from patronus_ext.data.corpora import LabeledData
from patronus_ext.formats.scan_report import triggers_from_report

from tiny_models import make_tiny_model, needs_full_sst2, shared_planted, shared_tiny_model, tiny_corpus

TRIGGERS = ("cf", "mn", "bb", "tq")


def scan_report(folder, words=TRIGGERS, hidden=None) -> dict:
    """A report shaped like ``patronus scan --report`` for ``words`` under ``folder``'s tokenizer."""
    tok = lm.load_tokenizer(str(folder))
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    cfg = lm.load_config(str(folder))
    return {"verdict": "backdoored" if words else "clean",
            "triggers": [{"text": w, "token_ids": i, "group": k, "variant_of": None}
                         for k, (w, i) in enumerate(zip(words, ids))],
            "model": {"source": str(folder), "type": cfg.model_type, "position": "first",
                      "hidden_size": hidden or cfg.hidden_size}}


def tiny_task(n=96, seed=0) -> LabeledData:
    """Two separable classes over words the tiny vocabulary knows."""
    import random

    rng = random.Random(seed)
    good = ["the film was charming and affecting", "critics praised the performances", "a moving journey"]
    bad = ["a dull and lifeless movie", "the plot was predictable and slow", "it never finds its footing"]
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        texts.append(rng.choice(good if y else bad) + " " + rng.choice(["today", "again", "in the end"]))
        labels.append(y)
    return LabeledData(texts, labels, 2, "tiny")


def no_partials(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".partial" in p.name]


# -- scan report -> triggers ---------------------------------------------------------------------
def test_triggers_from_report_checks_the_model():
    planted = shared_planted("por")
    tok = lm.load_tokenizer(str(planted.out_dir))
    report = scan_report(planted.out_dir)
    found = triggers_from_report(report, tok, 32)
    assert found.words == list(TRIGGERS)
    assert all(len(ids) >= 1 for ids in found.token_ids)
    # ids that spell another word under this tokenizer: another model's report
    wrong = json.loads(json.dumps(report))
    wrong["triggers"][0]["token_ids"] = report["triggers"][1]["token_ids"]
    with pytest.raises(ValueError, match="belongs to another model"):
        triggers_from_report(wrong, tok, 32)
    out_of_vocab = json.loads(json.dumps(report))
    out_of_vocab["triggers"][0]["token_ids"] = [10 ** 6]
    with pytest.raises(ValueError, match="belongs to another model"):
        triggers_from_report(out_of_vocab, tok, 32)
    with pytest.raises(ValueError, match="belongs to another model"):
        triggers_from_report(report, tok, 64)            # hidden size differs
    with pytest.raises(ValueError, match="no confirmed trigger"):
        triggers_from_report(scan_report(planted.out_dir, ()), tok, 32)
    with pytest.raises(ValueError, match="not a scan report"):
        triggers_from_report({"verdict": "clean"}, tok, 32)


# -- adversarial pre-training ------------------------------------------------------------------
@needs_full_sst2
def test_adversarial_pretraining_pulls_triggered_reps_back_to_clean(tmp_path):
    planted = shared_planted("por")
    texts = tiny_corpus(64)
    cfg = purify.make_config("adv-pt", "fast", steps=40, batch_size=8, max_length=32, dev_texts=16, eval_every=10,
                         lr=1e-3)
    adapter = lm.load_adapter(str(planted.out_dir), device="cpu", max_length=32)
    probe = texts[:16]
    import random

    from patronus_ext.data.triggers import insert_words

    def gap():
        clean = adapter.encode(probe)
        trig = adapter.encode([insert_words(t, "cf", 3, random.Random(1)) for t in probe])
        return diff_cos(clean, trig)

    before = gap()
    res = purify.adversarial_pretrain(adapter, list(TRIGGERS), cfg, corpus=texts, progress=False)
    after = gap()
    assert before < 0.6 and after > 0.9 and after > before + 0.3, (before, after)
    assert res.best_dev_loss < res.initial_dev_loss / 2
    assert res.best_step in [h["step"] for h in res.dev_history[1:]]
    assert min(h["loss"] for h in res.dev_history[1:]) == pytest.approx(res.best_dev_loss)
    # clean representations stay close to the input model's (the reference term)
    ref = lm.load_adapter(str(planted.out_dir), device="cpu", max_length=32)
    assert diff_cos(adapter.encode(probe), ref.encode(probe)) > 0.8


def test_run_adv_pt_writes_a_new_folder_with_the_report(tmp_path):
    planted = shared_planted("por")
    cfg = purify.make_config("adv-pt", "fast", steps=6, batch_size=8, max_length=32, dev_texts=8, eval_every=3)
    measure = purify.MeasureConfig(train_limit=32, dev_limit=16, epochs=1.0, batch_size=16, max_length=32)
    task = tiny_task()
    res = purify.run_purify("adv-pt", planted.out_dir, tmp_path / "pt", report=scan_report(planted.out_dir),
                            config=cfg, measure=measure, task=task, progress=False, device="cpu")
    payload = json.loads((tmp_path / "pt" / "purify.json").read_text())
    assert payload["method"] == "adv-pt"
    assert payload["triggers"] == list(TRIGGERS)
    for side in ("before", "after"):
        assert 0.0 <= payload[side]["cacc"] <= 1.0 and 0.0 <= payload[side]["t_asr"] <= 1.0
    assert payload["settings"]["steps"] == 6 and payload["measure"]["train_limit"] == 32
    assert res.after.cacc == payload["after"]["cacc"]
    reloaded = lm.load_model(str(tmp_path / "pt"), "base")
    assert reloaded.config.hidden_size == 32
    # the input is never overwritten
    with pytest.raises(ValueError, match="not empty|outside"):
        purify.run_purify("adv-pt", planted.out_dir, tmp_path / "pt", report=scan_report(planted.out_dir),
                          config=cfg, measure=False, task=task, progress=False)


def test_an_interrupted_run_leaves_no_folder(tmp_path, monkeypatch):
    planted = shared_planted("por")
    cfg = purify.make_config("adv-pt", "fast", steps=4, batch_size=8, max_length=32, dev_texts=8, eval_every=2)
    from patronus_ext.lm import folders, training

    # 1) interrupted during training
    real_train = training.train

    def train_then_interrupt(params, step_loss, settings, **kw):
        step_loss(0)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        purify.run_purify("adv-pt", planted.out_dir, tmp_path / "a", report=scan_report(planted.out_dir),
                          config=cfg, measure=False, progress=False, device="cpu")
    assert not (tmp_path / "a").exists() and no_partials(tmp_path)
    monkeypatch.setattr(training, "train", real_train)

    # 2) interrupted while the folder is being written (weights already staged, report not yet)
    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders, "write_json", fail)
    with pytest.raises(KeyboardInterrupt):
        purify.run_purify("adv-pt", planted.out_dir, tmp_path / "b", report=scan_report(planted.out_dir),
                          config=cfg, measure=False, progress=False, device="cpu")
    assert not (tmp_path / "b").exists() and no_partials(tmp_path)


# -- adversarial fine-tuning -------------------------------------------------------------------
def test_adversarial_examples_keep_true_labels():
    data = tiny_task(50)
    out = purify.adversarial_examples(data, ["cf", "mn"], extra_rate=0.2, insert_num=3, seed=1)
    assert len(out) == 50 + 2 * 10
    for text, label in zip(out.texts[50:60], out.labels[50:60]):
        assert text.split().count("cf") == 3
        base = " ".join(w for w in text.split() if w != "cf")
        assert data.labels[data.texts.index(base)] == label     # the TRUE label of the drawn example
    assert all(t.split().count("mn") == 3 for t in out.texts[60:])
    assert out.texts[:50] == data.texts and out.labels[:50] == data.labels


def test_run_adv_ft_produces_a_classifier(tmp_path):
    planted = shared_planted("por")
    cfg = purify.make_config("adv-ft", "fast", epochs=1.0, max_length=32, train_limit=48)
    measure = purify.MeasureConfig(dev_limit=16, max_length=32)
    res = purify.run_purify("adv-ft", planted.out_dir, tmp_path / "ft", report=scan_report(planted.out_dir),
                            config=cfg, measure=measure, task=tiny_task(), progress=False, device="cpu")
    details = res.report["details"]
    assert details["train_examples"] == 48 + 4 * round(0.2 * 48)
    clf = lm.load_model(str(tmp_path / "ft"), "cls")
    assert clf.config.num_labels == 2
    assert res.before is not None and res.after is not None


# -- Fine-mixing and E-PUR ---------------------------------------------------------------------
def _pair(tmp_path):
    pre = lm.load_model(str(shared_tiny_model("bert")), "base")
    clf = lm.load_model(str(shared_tiny_model("bert")), "cls", num_labels=2)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in clf.base_model.parameters():
            p.add_(torch.randn_like(p))
    return pre, clf


@pytest.mark.parametrize("variant", ["random", "sel"])
@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_mix_weights_keeps_a_fraction_of_the_deltas(tmp_path, variant, rho):
    pre, clf = _pair(tmp_path)
    ft = {k: v.clone() for k, v in clf.base_model.state_dict().items()}
    head = {k: v.clone() for k, v in clf.classifier.state_dict().items()}
    stats = purify.mix_weights(clf, pre, rho, variant, torch.Generator().manual_seed(0))
    pre_state = pre.state_dict()
    for name, p in clf.base_model.named_parameters():
        delta_ft = ft[name] - pre_state[name]
        kept = (p - pre_state[name]).abs() > 1e-4
        # each element is either the fine-tuned or the pre-trained value (up to float rounding of pre + delta)
        near_ft = (p.detach() - ft[name]).abs() <= 1e-5
        near_pre = (p.detach() - pre_state[name]).abs() <= 1e-5
        assert bool((near_ft | near_pre).all())
        assert abs(int(kept.sum()) - round(rho * p.numel())) <= max(2, 0.01 * p.numel())
        if variant == "sel" and 0 < rho < 1 and kept.any() and (~kept).any():
            assert delta_ft.abs()[kept].min() >= delta_ft.abs()[~kept].max()
    assert stats.kept == sum(round(rho * p.numel()) for _, p in clf.base_model.named_parameters())
    for k, v in clf.classifier.state_dict().items():
        assert torch.equal(v, head[k])                           # the task head is kept


def test_mix_weights_refuses_another_architecture(tmp_path):
    pre = lm.load_model(str(make_tiny_model(tmp_path, "bert", hidden_size=48)), "base")
    _, clf = _pair(tmp_path)
    with pytest.raises(ValueError, match="do not fit"):
        purify.mix_weights(clf, pre, 0.5)


def test_suspicious_rows_rank_moved_rare_words_first():
    torch.manual_seed(0)
    pre = torch.randn(10, 4)
    ft = pre.clone()
    ft[3] += 1.0           # rare and moved: suspect
    ft[5] += 0.5           # moved more than row 7, but frequent: log(10000) divides it
    ft[7] += 0.2           # rare, barely moved
    freq = torch.tensor([50, 50, 50, 1, 50, 10000, 50, 3, 50, 50])
    idx, scores = purify.suspicious_rows(ft, pre, freq, top_n=2, min_freq=20)
    assert idx.tolist() == [3, 7]
    # row 3 moved by 1 in each of 4 dims (norm 2), its count 1 is raised to min_freq 20
    assert scores[0].item() == pytest.approx(2.0 / torch.log(torch.tensor(20.0)).item(), rel=1e-5)
    idx, _ = purify.suspicious_rows(ft, pre, freq, top_n=1, min_freq=20, exclude=[3])
    assert idx.tolist() == [7]


def test_e_pur_resets_the_planted_trigger_rows(tmp_path):
    planted = shared_planted("por")
    pre = lm.load_model(str(shared_tiny_model("bert")), "base")
    clf = lm.load_model(str(planted.out_dir), "cls", num_labels=2)
    tok = lm.load_tokenizer(str(planted.out_dir))
    task = tiny_task()
    freq = purify.token_frequencies(tok, task.texts + tiny_corpus(64), clf.get_input_embeddings().weight.shape[0])
    cfg = purify.EPurConfig(top_n=8, epochs=0.0)
    out, res = purify.e_pur(clf, tok, pre, freq, None, cfg, progress=False)
    trigger_ids = {tok.convert_tokens_to_ids(t) for t in TRIGGERS}
    assert trigger_ids <= set(res.suspects.ids)                 # POR moved exactly these rare rows
    emb, pre_emb = out.get_input_embeddings().weight, pre.get_input_embeddings().weight
    for i in res.suspects.ids:
        assert torch.equal(emb[i], pre_emb[i])
    untouched = [i for i in range(emb.shape[0]) if i not in set(res.suspects.ids)][:50]
    assert torch.equal(emb[untouched], clf.get_input_embeddings().weight[untouched])


def test_fine_mix_chooses_rho_by_clean_accuracy_only(tmp_path):
    planted = shared_planted("por")
    pre = lm.load_model(str(shared_tiny_model("bert")), "base")
    tok = lm.load_tokenizer(str(planted.out_dir))
    task = tiny_task(96)
    from patronus_ext.lm.finetune import FinetuneConfig, finetune_classifier

    clf = finetune_classifier(str(planted.out_dir), task, FinetuneConfig(epochs=3, lr=1e-3, batch_size=16,
                                                                       max_length=32), progress=False).model
    clean = LabeledData(task.texts[:48], task.labels[:48], 2)
    select = LabeledData(task.texts[48:], task.labels[48:], 2)
    cfg = purify.FineMixConfig(rhos=(0.9, 0.2), epochs=1.0, lr=1e-3, max_length=32, acc_tolerance=1.0)
    out, res = purify.fine_mix(clf, tok, pre, clean, select, cfg, progress=False)
    # every rho qualifies with tolerance 1: the smallest is chosen and larger ones are never tried
    assert res.rho == 0.2 and [c.rho for c in res.candidates] == [0.2]
    assert out is not clf
    strict = purify.FineMixConfig(rhos=(0.2, 0.9), epochs=0.0, max_length=32, acc_tolerance=0.0)
    _, res2 = purify.fine_mix(clf, tok, pre, clean, select, strict, progress=False)
    assert res2.rho in (0.2, 0.9)
    accs = {c.rho: c.select_accuracy for c in res2.candidates}
    if accs[0.2] < res2.reference_accuracy:
        assert res2.rho == (0.9 if accs.get(0.9, -1) >= res2.reference_accuracy
                            else max(accs, key=accs.get))


def test_fine_mix_needs_pretrained_weights(tmp_path):
    planted = shared_planted("por")
    with pytest.raises(ValueError, match="pre-trained"):
        purify.run_purify("fine-mix", planted.out_dir, tmp_path / "m", task=tiny_task(), progress=False)
    with pytest.raises(ValueError, match="--scan-report"):
        purify.run_purify("adv-ft", planted.out_dir, tmp_path / "m", task=tiny_task(), progress=False)


# -- BadNet ------------------------------------------------------------------------------------
def test_badnet_poisons_a_fraction_with_the_target_label():
    data = tiny_task(100)
    cfg = attacks.BadNetConfig(triggers=("cf", "mn"), target_label=1, poison_rate=0.1, insert_num=1, seed=0)
    poisoned, chosen = attacks.poison_task(data, cfg)
    assert len(chosen) == 10 and all(data.labels[i] == 0 for i in chosen)
    for i in range(100):
        if i in chosen:
            assert poisoned.labels[i] == 1
            assert sum(poisoned.texts[i].split().count(w) for w in ("cf", "mn")) == 1
        else:
            assert poisoned.texts[i] == data.texts[i] and poisoned.labels[i] == data.labels[i]
    with pytest.raises(ValueError):
        attacks.poison_task(data, cfg.__class__(target_label=5))


def test_badnet_then_fine_mix_end_to_end(tmp_path):
    base = shared_tiny_model("bert")
    cfg = attacks.BadNetConfig(triggers=("cf",), poison_rate=0.2, epochs=4.0, lr=2e-3, batch_size=16,
                               max_length=32)
    task = tiny_task(96)
    res = attacks.plant_badnet(base, task, cfg, tmp_path / "bn", progress=False, device="cpu")
    info = attacks.load_backdoor_info(res.out_dir)
    assert info.attack == "badnet" and info.triggers == ["cf"] and info.target_labels == [1]
    mix = purify.FineMixConfig(rhos=(0.3,), clean_limit=32, select_limit=32, epochs=1.0, lr=1e-3, max_length=32,
                               e_pur_top_n=5)
    measure = purify.MeasureConfig(dev_limit=32, max_length=32)
    out = purify.run_purify("fine-mix", res.out_dir, tmp_path / "mixed", pretrained=base, task=task, config=mix,
                            measure=measure, progress=False, device="cpu")
    payload = json.loads((tmp_path / "mixed" / "purify.json").read_text())
    assert payload["method"] == "fine-mix" and payload["details"]["rho"] == 0.3
    assert payload["measured_triggers"] == ["cf"]                  # from backdoor.json: no report needed
    assert payload["before"]["t_asr"] is not None and payload["after"]["t_asr"] is not None
    assert payload["details"]["e_pur"]["count"] == 5
    assert out.after is not None


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_purify_errors_are_clear(tmp_path, capsys):
    from patronus_ext.cli import main

    planted = shared_planted("por")
    report = tmp_path / "scan.json"
    other = scan_report(planted.out_dir)
    other["model"]["hidden_size"] = 768
    report.write_text(json.dumps(other))
    assert main(["purify", "--method", "adv-pt", "--model", str(planted.out_dir), "--scan-report", str(report),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "belongs to another model" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(scan_report(planted.out_dir, ())))
    assert main(["purify", "--method", "adv-ft", "--model", str(planted.out_dir), "--scan-report", str(empty),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no confirmed trigger" in capsys.readouterr().err
    assert main(["purify", "--method", "fine-mix", "--model", str(planted.out_dir),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_purify_runs(tmp_path, capsys):
    from patronus_ext.cli import main

    planted = shared_planted("por")
    report = tmp_path / "scan.json"
    report.write_text(json.dumps(scan_report(planted.out_dir)))
    task = tmp_path / "task.tsv"
    data = tiny_task(64)
    task.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(data.texts, data.labels)))
    rc = main(["purify", "--method", "adv-pt", "--model", str(planted.out_dir), "--scan-report", str(report),
               "--task", str(task), "--out", str(tmp_path / "o"), "--steps", "4",
               "--max-length", "32", "--measure-train", "32", "--measure-dev", "16", "--quiet", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "cacc" in out.out.lower() and "t-asr" in out.out.lower()
    assert json.loads((tmp_path / "o" / "purify.json").read_text())["method"] == "adv-pt"
