"""The evaluation harness: representation checks + clean fine-tuning + attack metrics, as one report."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .. import lm
from ..core.files import JSONRecord, environment, write_json
from ..data import corpora as data_mod
from ..data.corpora import LabeledData
from ..formats.backdoor import find_backdoor_info
from ..lm.finetune import FinetuneConfig, finetune_classifier
from .downstream import VOTE_TEXTS, DownstreamResult, attack_metrics
from .representation import RepresentationReport, representation_similarity

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvaluationConfig(JSONRecord):
    """What :func:`evaluate_model` does; ``finetune`` holds the fine-tuning hyper-parameters.

    ``train_limit``/``dev_limit`` draw random subsets (``seed``); None keeps all.
    """

    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    train_limit: int | None = 2000
    dev_limit: int | None = None
    insert_num: int = 3
    vote_texts: int = VOTE_TEXTS
    seed: int = 0
    downstream: bool = True
    representation: bool = True
    representation_texts: int = 200
    representation_corpus: str = "wikitext2-test"  # held out from the planting corpus (wikitext2 = valid)
    representation_max_length: int = 64
    eval_batch_size: int = 64

    def __post_init__(self):
        for name in ("train_limit", "dev_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        for name in ("insert_num", "vote_texts", "representation_texts", "representation_max_length",
                     "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.representation_texts < 2:
            raise ValueError("representation_texts must be >= 2")


@dataclasses.dataclass
class EvaluationReport:
    model: str
    task: str | None
    triggers: list[str]
    attack: str | None                     # from backdoor.json, None for a model without one
    representation: RepresentationReport | None
    downstream: DownstreamResult | None
    baseline: DownstreamResult | None      # the same fine-tuning of a clean model, when asked
    config: EvaluationConfig
    wall_s: float
    environment: dict[str, Any]

    @property
    def cacc_drop(self) -> float | None:
        """Baseline CACC minus this model's CACC (points of accuracy, as a fraction)."""
        if self.downstream is None or self.baseline is None:
            return None
        return self.baseline.cacc - self.downstream.cacc

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "triggers": list(self.triggers), "attack": self.attack,
            "representation": None if self.representation is None else self.representation.to_dict(),
            "downstream": None if self.downstream is None else self.downstream.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "cacc_drop": self.cacc_drop, "config": self.config.to_dict(), "wall_s": self.wall_s,
            "environment": self.environment,
        }

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        return write_json(path, self.to_dict(), overwrite=overwrite)


def resolve_triggers(model: str, triggers: Sequence[str] | None) -> tuple[list[str], Any]:
    """The triggers to test: given ones, else those of the model's backdoor.json."""
    info = find_backdoor_info(lm.resolve_model_source(model))
    if triggers:
        if isinstance(triggers, str):
            triggers = [t for t in triggers.split(",") if t.strip()]
        return [t.strip() for t in triggers], info
    if info is None:
        raise ValueError(f"{model} has no backdoor.json: name the triggers to test (--triggers)")
    return list(info.triggers), info


def load_task(task: str | LabeledData, split: str, limit: int | None, seed: int) -> LabeledData:
    if isinstance(task, LabeledData):
        return task.subset(limit, seed)
    return data_mod.read_task(task, split=split, limit=limit, seed=seed)


def evaluate_model(model: str | os.PathLike, task: str | None = "sst2", triggers: Sequence[str] | None = None,
                   config: EvaluationConfig | None = None, *, train: LabeledData | None = None,
                   dev: LabeledData | None = None, reference: str | None = "auto",
                   baseline: str | None = None, device: str | None = None, allow_pickle: bool = False,
                   progress: bool = True) -> EvaluationReport:
    """Evaluate a (possibly backdoored) PLM against ``triggers`` (default: its backdoor.json).

    * representation checks on ``representation_texts`` corpus paragraphs
      (``reference="auto"``: compare clean reps with backdoor.json's base model
      when it can be loaded; a name or path to choose one; None to skip);
    * clean fine-tuning on ``task`` (built-in name, file, ``hf:...``; or pass
      ``train``/``dev`` directly), then CACC, per-trigger ASR, T-ASR, C-ASR, ALC;
    * ``baseline``: fine-tune that (clean) model the same way, for the CACC gap.

    ``device`` None: CUDA when available; ``allow_pickle``: let pickle-only
    checkpoints load with ``torch.load(weights_only=True)``.
    """
    run = _Run(lm.resolve_device(device), allow_pickle, progress)
    config = config or EvaluationConfig()
    model = str(model)
    start = time.perf_counter()
    words, info = resolve_triggers(model, triggers)
    rep_report = None
    if config.representation:
        rep_report = _representation(model, words, info, config, reference, run)
    downstream = base_result = None
    if config.downstream:
        if train is None or dev is None:
            if task is None:
                raise ValueError("pass a task (or train and dev sets) for the downstream evaluation")
            if train is None:
                train = load_task(task, "train", config.train_limit, config.seed)
            if dev is None:
                dev = load_task(task, "dev", config.dev_limit, config.seed)
        if dev.num_labels != train.num_labels:
            raise ValueError(f"train has {train.num_labels} labels but dev has {dev.num_labels}")
        downstream = _downstream(model, train, dev, words, config, run)
        if baseline is not None:
            base_result = _downstream(str(baseline), train, dev, words, config, run)
    return EvaluationReport(model=model, task=None if task is None else str(task), triggers=words,
                            attack=None if info is None else info.attack, representation=rep_report,
                            downstream=downstream, baseline=base_result, config=config,
                            wall_s=time.perf_counter() - start, environment=environment())


@dataclasses.dataclass
class _Run:
    """Where and how this evaluation runs (call arguments, not settings recorded in the report)."""

    device: Any
    allow_pickle: bool
    progress: bool


def _downstream(model: str, train: LabeledData, dev: LabeledData, words: list[str],
                config: EvaluationConfig, run: _Run) -> DownstreamResult:
    classifier = finetune_classifier(model, train, config.finetune, device=run.device,
                                     allow_pickle=run.allow_pickle, progress=run.progress)
    return attack_metrics(classifier, dev, words, config.insert_num, config.vote_texts, config.seed,
                          config.eval_batch_size, run.progress, classifier.stats)


def _representation(model: str, words: list[str], info, config: EvaluationConfig,
                    reference: str | None, run: _Run) -> RepresentationReport:
    position = info.position if info is not None else "auto"
    template = info.prompt_template if info is not None else None
    if position == "mask" and not template:
        raise ValueError("a mask-position backdoor needs its prompt template (backdoor.json prompt_template)")
    adapter = lm.load_adapter(model, position=position, max_length=config.representation_max_length,
                                  allow_pickle=run.allow_pickle, device=run.device)
    ref_adapter = None
    ref_source = None
    if reference == "auto":
        ref_source = info.base_model if info is not None else None
    elif reference:
        ref_source = reference
    if ref_source:
        try:
            ref_adapter = lm.load_adapter(ref_source, position=position,
                                              max_length=config.representation_max_length,
                                              allow_pickle=run.allow_pickle, device=run.device)
        except (OSError, ValueError) as exc:
            if reference != "auto":
                raise
            log.warning("reference model %s not loadable (%s); skipping clean-vs-reference check", ref_source, exc)
    texts = data_mod.read_corpus(config.representation_corpus, limit=config.representation_texts, seed=config.seed)
    targets = info.target_vectors if info is not None else None   # UOR: the learned target means
    if targets is not None and targets.shape[0] != len(words):
        targets = None  # other triggers than the planted ones
    return representation_similarity(adapter, texts, words, reference=ref_adapter, insert_num=config.insert_num,
                                     seed=config.seed, batch_size=config.eval_batch_size,
                                     max_length=config.representation_max_length, template=template,
                                     targets=targets, progress=run.progress)
