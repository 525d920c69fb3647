"""Evaluation: attack metrics after clean fine-tuning (CACC, ASR, T-ASR, C-ASR, ALC; the fine-tuning itself is
:mod:`patronus_ext.lm.finetune`), representation checks, generation metrics of causal LMs, and the
detection/monitoring metrics (recall, precision, FPR, FAR, FRR) as plain functions.

    from patronus_ext import evaluate
    rep = evaluate.evaluate_model("out/por", "sst2", config=evaluate.EvaluationConfig(train_limit=2000))
    rep.downstream.t_asr, rep.downstream.cacc, rep.representation.per_trigger
    evaluate.metrics.detection_recall(planted, found)
"""

from . import metrics
from .downstream import VOTE_TEXTS, DownstreamResult, TriggerASR, attack_metrics, triggered_texts
from .harness import EvaluationConfig, EvaluationReport, evaluate_model, load_task, resolve_triggers
from .metrics import (
    accuracy,
    alc,
    attack_success_rate,
    c_asr,
    detection_precision,
    detection_recall,
    false_acceptance_rate,
    false_positive_rate,
    false_rejection_rate,
    majority_label,
    mean_paired_cosine,
    mean_pairwise_cosine,
    monitoring_rates,
    t_asr,
)
from .representation import RepresentationReport, TriggerRepresentation, representation_similarity

__all__ = [
    "VOTE_TEXTS", "DownstreamResult", "EvaluationConfig", "EvaluationReport",
    "RepresentationReport", "TriggerASR", "TriggerRepresentation",
    "accuracy", "alc", "attack_metrics", "attack_success_rate", "c_asr", "detection_precision",
    "detection_recall", "evaluate_model", "false_acceptance_rate", "false_positive_rate",
    "false_rejection_rate", "load_task", "majority_label", "mean_pairwise_cosine",
    "mean_paired_cosine", "metrics", "monitoring_rates", "representation_similarity",
    "resolve_triggers", "t_asr", "triggered_texts",
]
