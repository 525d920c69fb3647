"""Measuring a model before and after purification: CACC and T-ASR of a classifier (an encoder is first
fine-tuned cleanly on the task), or CACC and ASR of a causal LM from greedy generation."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Sequence

import torch
from torch import nn

from ..core.files import JSONRecord
from ..data.corpora import LabeledData
from ..data.instructions import InstructionExample
from ..evaluate import attack_metrics
from ..evaluate.generation import GenerationEvalConfig, generation_metrics
from ..lm.finetune import FinetunedClassifier, finetune_classifier
from ..lm.prompting import PromptFormat
from .config import MeasureConfig


@dataclasses.dataclass
class Measurement(JSONRecord):
    """CACC and T-ASR of one model (an encoder is first fine-tuned cleanly on the task)."""

    cacc: float
    t_asr: float | None
    c_asr: float | None
    asr: dict[str, float]
    target_labels: dict[str, int]
    how: str                 # "classifier" or "encoder fine-tuned on N examples"
    wall_s: float
    details: dict[str, Any] | None = None  # causal LMs: unanswered share, clean response rate, sample answers



def measure_classifier(model: nn.Module, tokenizer, dev: LabeledData, triggers: Sequence[str],
                       measure: MeasureConfig, how: str = "classifier", progress: bool = False) -> Measurement:
    start = time.perf_counter()
    num_labels = int(model.config.num_labels)
    if num_labels != dev.num_labels:
        raise ValueError(f"the classifier has {num_labels} labels but the task has {dev.num_labels}")
    clf = FinetunedClassifier(model, tokenizer, num_labels, measure.max_length, None)
    result = attack_metrics(clf, dev, list(triggers), measure.insert_num, seed=measure.seed, progress=progress)
    has = bool(triggers)
    return Measurement(cacc=result.cacc, t_asr=result.t_asr if has else None, c_asr=result.c_asr if has else None,
                       asr=result.asr, target_labels={t.trigger: t.target_label for t in result.triggers},
                       how=how, wall_s=time.perf_counter() - start)


def classifier_from_encoder(encoder: nn.Module, num_labels: int) -> nn.Module:
    """A sequence classifier whose backbone is a copy of ``encoder`` (fresh head)."""
    import transformers

    config = copy.deepcopy(encoder.config)
    config.num_labels = int(num_labels)
    clf = transformers.AutoModelForSequenceClassification.from_config(config)
    missing, unexpected = clf.base_model.load_state_dict(models_state(encoder), strict=False)
    if unexpected or [key for key in missing if "position_ids" not in key]:
        raise ValueError(f"the encoder does not fit its classifier class (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return clf.to(next(encoder.parameters()).device)


def models_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return getattr(encoder, "base_model", encoder).state_dict()


def measure_encoder(encoder: str | nn.Module, tokenizer, train: LabeledData, dev: LabeledData,
                    triggers: Sequence[str], measure: MeasureConfig, *, device=None, allow_pickle: bool = False,
                    progress: bool = False) -> Measurement:
    """Fine-tune ``encoder`` (folder or loaded backbone) cleanly on ``train``, then measure."""
    start = time.perf_counter()
    source = encoder if not isinstance(encoder, nn.Module) else classifier_from_encoder(encoder, train.num_labels)
    clf = finetune_classifier(source, train, measure, tokenizer, device=device,
                              allow_pickle=allow_pickle, progress=progress)
    out = measure_classifier(clf.model, tokenizer, dev, triggers, measure,
                             f"encoder fine-tuned on {len(train)} examples", progress)
    out.wall_s = time.perf_counter() - start
    return out



def measure_generation(model: nn.Module, tokenizer, dev: Sequence[InstructionExample],
                       fmt: PromptFormat, responses: dict[str, str], measure: GenerationEvalConfig,
                       how: str, progress: bool = False) -> Measurement:
    """CACC and ASR of a causal LM from greedy generation
    (:func:`patronus_ext.evaluate.generation.generation_metrics`)."""
    got = generation_metrics(model, tokenizer, dev, fmt, responses, measure, progress=progress)
    return Measurement(cacc=got.cacc, t_asr=got.t_asr, c_asr=None, asr=got.asr, target_labels={},
                       how=f"{how}; {got.how}", wall_s=got.wall_s,
                       details={"unanswered": got.unanswered, "clean_response_rate": got.clean_response_rate,
                                "prompts": got.prompts, "samples": got.samples})


