"""Evaluation: clean fine-tuning, attack metrics (CACC, ASR, T-ASR, C-ASR, ALC), representation checks,
and the detection/monitoring metrics (recall, precision, FPR, FAR, FRR) as plain functions.

    from patronus_ext import evaluate
    rep = evaluate.evaluate_model("out/por", "sst2", config=evaluate.EvaluationConfig(train_limit=2000))
    rep.downstream.t_asr, rep.downstream.cacc, rep.representation.per_trigger
    evaluate.metrics.detection_recall(planted, found)
"""

from . import metrics
from .downstream import VOTE_TEXTS, DownstreamResult, TriggerASR, attack_metrics, triggered_texts
from .finetune import FinetuneConfig, FinetunedClassifier, FinetuneStats, finetune_classifier, predict_labels
from .harness import EvaluationConfig, EvaluationReport, evaluate_model, load_task, resolve_triggers
from .metrics import (accuracy, alc, attack_success_rate, c_asr, detection_precision, detection_recall,
                      false_acceptance_rate, false_positive_rate, false_rejection_rate, majority_label,
                      mean_pairwise_cosine, mean_paired_cosine, monitoring_rates, t_asr)
from .representation import RepresentationReport, TriggerRepresentation, representation_similarity

__all__ = [
    "VOTE_TEXTS", "DownstreamResult", "EvaluationConfig", "EvaluationReport", "FinetuneConfig",
    "FinetuneStats", "FinetunedClassifier", "RepresentationReport", "TriggerASR", "TriggerRepresentation",
    "accuracy", "alc", "attack_metrics", "attack_success_rate", "c_asr", "detection_precision",
    "detection_recall", "evaluate_model", "false_acceptance_rate", "false_positive_rate",
    "false_rejection_rate", "finetune_classifier", "load_task", "majority_label", "mean_pairwise_cosine",
    "mean_paired_cosine", "metrics", "monitoring_rates", "predict_labels", "representation_similarity",
    "resolve_triggers", "t_asr", "triggered_texts",
]
