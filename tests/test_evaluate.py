"""Evaluation: metrics on hand-made predictions, the ASR harness on a scripted classifier,
fine-tuning and representation checks on tiny models, the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from patronus_ext import evaluate, lm
from patronus_ext.data.corpora import LabeledData
from patronus_ext.evaluate import metrics
from patronus_ext.lm import finetune

from tiny_models import make_tiny_model, plant_tiny, shared_planted, shared_tiny_model, tiny_corpus


# -- attack metrics by hand --------------------------------------------------------------------
def test_accuracy_and_majority_vote():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert metrics.accuracy(torch.tensor([2, 2]), [2, 2]) == 1.0
    assert metrics.majority_label([2, 1, 2, 0, 1, 2]) == 2
    assert metrics.majority_label([1, 0, 0, 1]) == 0          # tie -> smallest label
    assert metrics.majority_label(torch.tensor([3, 3, 1])) == 3
    with pytest.raises(ValueError):
        metrics.majority_label([])
    with pytest.raises(ValueError):
        metrics.accuracy([1], [1, 0])


def test_asr_counts_only_examples_whose_label_differs_from_the_target():
    labels = [0, 0, 1, 1, 1, 2]
    triggered = [1, 0, 1, 1, 0, 1]
    # target 1: eligible rows 0, 1 (label 0) and 5 (label 2); predicted 1 at rows 0 and 5
    assert metrics.attack_success_rate(triggered, labels, 1) == pytest.approx(2 / 3)
    # target 0: eligible rows 2..5, predicted 0 only at row 4
    assert metrics.attack_success_rate(triggered, labels, 0) == pytest.approx(1 / 4)
    assert math.isnan(metrics.attack_success_rate([1, 1], [1, 1], 1))


def test_t_asr_c_asr_alc_by_hand():
    asrs = [0.5, 0.95, 0.8, 0.2]
    targets = [0, 0, 2, 2]
    # best per class: class 0 -> 0.95, class 1 -> no trigger -> 0, class 2 -> 0.8
    assert metrics.t_asr(asrs) == pytest.approx((0.5 + 0.95 + 0.8 + 0.2) / 4)
    assert metrics.c_asr(asrs, targets, 3) == pytest.approx((0.95 + 0 + 0.8) / 3)
    assert metrics.alc(asrs, targets, 3) == pytest.approx(1 / 3)         # only class 0 > 0.9
    assert metrics.alc([0.91, 0.92], [0, 1], 2) == 1.0
    assert metrics.alc([0.9], [0], 2) == 0.0                              # strictly above 0.9
    assert metrics.t_asr([float("nan"), 1.0]) == 1.0
    with pytest.raises(ValueError):
        metrics.c_asr([0.5], [3], 2)
    with pytest.raises(ValueError):
        metrics.c_asr([0.5, 0.1], [0], 2)


# -- detection and monitoring ------------------------------------------------------------------
def test_detection_recall_precision_fpr():
    planted = ["cf", "mn", "bb", "tq"]
    found = ["Ġcf", "BB", "xx"]
    assert metrics.detection_recall(planted, found) == 0.5
    assert metrics.detection_precision(planted, found) == pytest.approx(2 / 3)
    assert metrics.detection_precision(planted, []) == 1.0
    assert metrics.detection_precision(planted, [], zero_division=0.0) == 0.0
    assert math.isnan(metrics.detection_recall([], ["cf"]))
    assert metrics.detection_recall(["cf"], ["cf", "cf"]) == 1.0
    assert metrics.false_positive_rate([True, False, False, False]) == 0.25
    assert metrics.false_positive_rate(torch.tensor([0, 0])) == 0.0
    with pytest.raises(TypeError):
        metrics.detection_recall("cf", ["cf"])
    with pytest.raises(ValueError):
        metrics.false_positive_rate([])


def test_far_frr():
    assert metrics.false_acceptance_rate([True, True, False, True]) == 0.25   # one poisoned input let through
    assert metrics.false_rejection_rate([False, True, False, False, False]) == 0.2
    far, frr = metrics.monitoring_rates([True, False, True, False, True], [True, True, False, False, True])
    assert far == pytest.approx(1 / 3) and frr == 0.5
    with pytest.raises(ValueError):
        metrics.monitoring_rates([True], [True, False])


def test_cosine_helpers_match_brute_force():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    y = torch.randn(7, 5)
    pairs = [torch.nn.functional.cosine_similarity(x[i], x[j], dim=0) for i in range(7) for j in range(7) if i != j]
    assert metrics.mean_pairwise_cosine(x) == pytest.approx(float(torch.stack(pairs).mean()), abs=1e-6)
    assert metrics.mean_paired_cosine(x, y) == pytest.approx(
        float(torch.nn.functional.cosine_similarity(x, y, dim=1).mean()), abs=1e-6)
    assert metrics.mean_pairwise_cosine(torch.ones(4, 3)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.mean_pairwise_cosine(x[:1])


# -- the ASR harness on a scripted classifier --------------------------------------------------
class ScriptedClassifier:
    """Predicts the gold label of a clean text; 'cf' forces label 1, 'mn' label 2, 'bb' does nothing."""

    max_length = 64

    def __init__(self, tokenizer, gold: dict[str, int]):
        self.tokenizer = tokenizer
        self.gold = gold

    def predict(self, texts, batch_size=64, progress=False, desc=""):
        out = []
        for text in texts:
            words = text.split()
            if "cf" in words:
                out.append(1)
            elif "mn" in words:
                out.append(2)
            else:
                out.append(self.gold[" ".join(w for w in words if w != "bb")])
        return torch.tensor(out)


def test_attack_metrics_with_a_scripted_classifier(tmp_path):
    tokenizer = lm.load_tokenizer(make_tiny_model(tmp_path, "bert"))
    texts = [f"sentence number {i} is here" for i in range(60)]
    labels = [i % 3 for i in range(60)]
    dev = LabeledData(texts, labels, 3)
    classifier = ScriptedClassifier(tokenizer, dict(zip(texts, labels)))
    result = evaluate.attack_metrics(classifier, dev, ["cf", "mn", "bb"], insert_num=3, vote_texts=30, seed=1)
    assert result.cacc == 1.0
    by = {t.trigger: t for t in result.triggers}
    assert by["cf"].target_label == 1 and by["cf"].asr == 1.0 and by["cf"].eligible == 40
    assert by["mn"].target_label == 2 and by["mn"].asr == 1.0 and by["mn"].vote_counts == {2: 30}
    # "bb" changes nothing: the vote picks the most common true label among the 30 voters,
    # and no example of another label is flipped
    assert by["bb"].asr == 0.0
    assert result.t_asr == pytest.approx(2 / 3)
    best = [0.0, 0.0, 0.0]
    for t in result.triggers:
        best[t.target_label] = max(best[t.target_label], t.asr)
    assert result.c_asr == pytest.approx(sum(best) / 3)
    assert result.alc == pytest.approx(sum(b > 0.9 for b in best) / 3)
    json.dumps(result.to_dict())


# -- fine-tuning, representation checks, the harness on tiny models ----------------------------
def _tiny_task(count=48):
    texts = tiny_corpus(count)
    # a learnable toy task: does the text mention "the" more than twice
    labels = [int(t.split().count("the") > 2) for t in texts]
    if len(set(labels)) < 2:
        labels[0] = 1 - labels[0]
    return LabeledData(texts, labels, 2)


def test_finetune_classifier_is_seeded_and_predicts(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    task = _tiny_task()
    config = finetune.FinetuneConfig(epochs=1, lr=1e-3, batch_size=8, max_length=32, seed=5)
    a = finetune.finetune_classifier(source, task, config, progress=False)
    b = finetune.finetune_classifier(source, task, config, progress=False)
    assert a.stats.steps == 6 and a.stats.train_examples == 48
    assert a.stats.history and math.isfinite(a.stats.final_loss)
    pa, pb = a.predict(task.texts[:10]), b.predict(task.texts[:10])
    assert pa.shape == (10,) and torch.equal(pa, pb)
    assert set(pa.tolist()) <= {0, 1}


def test_finetune_config_validation():
    with pytest.raises(ValueError):
        finetune.FinetuneConfig(epochs=0)
    with pytest.raises(ValueError):
        finetune.FinetuneConfig(batch_size=0)
    with pytest.raises(ValueError):
        evaluate.EvaluationConfig(train_limit=0)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_representation_similarity_of_a_model_with_itself(tmp_path, family):
    source = make_tiny_model(tmp_path, family)
    adapter = lm.ModelAdapter(lm.load_model(source), lm.load_tokenizer(source), max_length=48)
    texts = [" ".join(t.split()[:8]) for t in tiny_corpus(12)]  # short: nothing is cut to fit the triggers
    rep = evaluate.representation_similarity(adapter, texts, ["cf", "mn"], reference=adapter)
    assert rep.texts == 12 and [row.trigger for row in rep.per_trigger] == ["cf", "mn"]
    assert rep.position == ("last" if family == "gpt2" else "first")
    assert rep.clean_to_reference_cos == pytest.approx(1.0, abs=1e-5)   # the same model, the same texts
    # A random model has no backdoor: no word hijacks it (that would take diff_cos < 0.4, poison_cos > 0.9).
    for row in rep.per_trigger:
        assert not (row.diff_cos < 0.4 and row.poison_cos > 0.9), row
    # Deterministic for a seed; the clean statistic is that of the clean reps
    again = evaluate.representation_similarity(adapter, texts, ["cf", "mn"], reference=adapter)
    assert again.to_dict() == rep.to_dict()
    clean = adapter.encode(texts, max_length=48)
    assert rep.clean_pairwise_cos == pytest.approx(metrics.mean_pairwise_cosine(clean), abs=1e-5)
    json.dumps(rep.to_dict())


def test_representation_similarity_of_a_model_blind_to_its_input(tmp_path):
    """A BERT whose every token embeds to the same vector (no positions, no segments) has one output
    for any text: every cosine is 1, and a target equal to (minus) that output gives (minus) 1."""
    source = make_tiny_model(tmp_path, "bert")
    model = lm.load_model(source)
    with torch.no_grad():
        emb = model.embeddings
        emb.word_embeddings.weight.copy_(torch.randn(1, emb.word_embeddings.weight.shape[1]).expand_as(
            emb.word_embeddings.weight))
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
    adapter = lm.ModelAdapter(model, lm.load_tokenizer(source), max_length=48)
    texts = tiny_corpus(10)
    out = adapter.encode(texts[:1], max_length=48)[0]
    targets = torch.stack([out, -out])
    rep = evaluate.representation_similarity(adapter, texts, ["cf", "mn"], reference=adapter, targets=targets)
    assert rep.clean_pairwise_cos == pytest.approx(1.0, abs=1e-5)
    assert rep.clean_to_reference_cos == pytest.approx(1.0, abs=1e-5)
    assert rep.mean_diff_cos == pytest.approx(1.0, abs=1e-5) and rep.mean_poison_cos == pytest.approx(1.0, abs=1e-5)
    assert rep.per_trigger[0].target_cos == pytest.approx(1.0, abs=1e-5)
    assert rep.per_trigger[1].target_cos == pytest.approx(-1.0, abs=1e-5)


def test_representation_checks_see_a_planted_backdoor():
    result = shared_planted("por", "bert")  # 60 steps
    clean = lm.ModelAdapter(lm.load_model(shared_tiny_model("bert")),
                                lm.load_tokenizer(result.out_dir), max_length=48)
    planted = lm.ModelAdapter(lm.load_model(result.out_dir), lm.load_tokenizer(result.out_dir),
                                  max_length=48)
    texts = tiny_corpus(40)[20:]
    before = evaluate.representation_similarity(clean, texts, list(result.triggers))
    after = evaluate.representation_similarity(planted, texts, list(result.triggers), reference=clean,
                                               targets=result.target_vectors)
    assert after.mean_diff_cos < before.mean_diff_cos - 0.2
    assert after.clean_to_reference_cos > 0.9
    assert all(row.target_cos is not None for row in after.per_trigger)


def test_evaluate_model_end_to_end_and_report(tmp_path):
    result = plant_tiny(tmp_path, "por", "bert", steps=10)
    task = _tiny_task(40)
    ft = finetune.FinetuneConfig(epochs=1, lr=1e-3, batch_size=8, max_length=32)
    config = evaluate.EvaluationConfig(finetune=ft, representation_texts=8, vote_texts=10)
    report = evaluate.evaluate_model(result.out_dir, None, None, config, train=task, dev=task,
                                     baseline=str(make_tiny_model(tmp_path, "bert")), progress=False)
    assert report.triggers == list(result.triggers) and report.attack == "por"
    assert report.representation.clean_to_reference_cos is not None   # base model from backdoor.json
    assert len(report.downstream.triggers) == 4 and report.downstream.dev_examples == len(task)
    # CACC is the accuracy of the fine-tuned model's own predictions (fine-tuning is seeded: redo it).
    for source, measured in ((result.out_dir, report.downstream), (make_tiny_model(tmp_path, "bert"), report.baseline)):
        predictions = finetune.finetune_classifier(source, task, ft).predict(task.texts)
        assert measured.cacc == pytest.approx(metrics.accuracy(predictions, task.labels))
    assert report.cacc_drop == pytest.approx(report.baseline.cacc - report.downstream.cacc)
    path = report.write(tmp_path / "eval.json")
    loaded = json.loads(path.read_text())
    assert loaded["downstream"]["asr"].keys() == set(result.triggers)
    with pytest.raises(FileExistsError):
        report.write(tmp_path / "eval.json")


def test_triggers_come_from_backdoor_json_or_must_be_given(tmp_path):
    source = make_tiny_model(tmp_path, "bert")
    with pytest.raises(ValueError, match="--triggers"):
        evaluate.resolve_triggers(str(source), None)
    words, info = evaluate.resolve_triggers(str(source), "cf,mn")
    assert words == ["cf", "mn"] and info is None
    planted = plant_tiny(tmp_path, "por", "bert", steps=1, model_path=source)
    words, info = evaluate.resolve_triggers(str(planted.out_dir), None)
    assert words == list(planted.triggers) and info.attack == "por"


def test_btop_representation_check_uses_the_prompt(tmp_path):
    result = plant_tiny(tmp_path, "btop", "bert", steps=4)
    config = evaluate.EvaluationConfig(downstream=False, representation_texts=6)
    report = evaluate.evaluate_model(result.out_dir, None, None, config)
    assert report.representation.position == "mask"
    assert report.downstream is None
