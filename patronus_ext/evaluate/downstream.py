"""CACC and per-trigger ASR of a fine-tuned classifier, with target labels by majority vote."""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

from ..data import triggers as trig
from ..data.corpora import LabeledData
from ..lm.finetune import FinetunedClassifier, FinetuneStats
from . import metrics

#: Triggered dev texts whose majority prediction names a trigger's target label (docs/METHODS.md §0).
VOTE_TEXTS = 30


@dataclasses.dataclass
class TriggerASR:
    trigger: str
    target_label: int
    asr: float
    eligible: int                  # dev examples whose true label differs from the target
    vote_counts: dict[int, int]    # predictions on the vote texts


@dataclasses.dataclass
class DownstreamResult:
    """Metrics of one fine-tuned model on one task (docs/METHODS.md §0 definitions)."""

    num_labels: int
    dev_examples: int
    cacc: float
    triggers: list[TriggerASR]
    t_asr: float
    c_asr: float
    alc: float
    finetune: FinetuneStats | None = None

    @property
    def asr(self) -> dict[str, float]:
        return {t.trigger: t.asr for t in self.triggers}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["asr"] = self.asr
        return out


def triggered_texts(texts: Sequence[str], trigger: str, insert_num: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [trig.insert_words(t, trigger, insert_num, rng) for t in texts]


def attack_metrics(classifier: FinetunedClassifier, dev: LabeledData, triggers: Sequence[str], insert_num: int = 3,
                   vote_texts: int = VOTE_TEXTS, seed: int = 0, batch_size: int = 64, progress: bool = False,
                   finetune_stats: FinetuneStats | None = None) -> DownstreamResult:
    """CACC on ``dev``; per trigger: target label by majority vote, ASR, then T-ASR, C-ASR, ALC.

    Each trigger is inserted ``insert_num`` times into every dev text (texts are
    first cut at a word boundary so the triggers fit ``max_length``).  The
    vote uses ``vote_texts`` dev texts drawn with ``seed``; ASR then counts all
    dev examples whose true label differs from the voted target.
    """
    if len(dev) == 0:
        raise ValueError("the dev set is empty")
    if isinstance(triggers, str):
        raise TypeError("pass a list of triggers, not a single string")
    clean_pred = classifier.predict(dev.texts, batch_size, progress, desc="predict clean")
    cacc = metrics.accuracy(clean_pred, dev.labels)
    fitted = trig.fit_for_insertion(classifier.tokenizer, dev.texts, classifier.max_length, insert_num=insert_num,
                                    triggers=list(triggers), uncuttable="keep")
    voters = random.Random(seed).sample(range(len(dev)), min(vote_texts, len(dev)))
    outcomes = []
    for index, word in enumerate(triggers):
        poisoned = triggered_texts(fitted, word, insert_num, seed + 1000 * (index + 1))
        pred = classifier.predict(poisoned, batch_size, progress, desc=f"predict +{word}")
        votes = [int(pred[i]) for i in voters]
        target = metrics.majority_label(votes)
        counts: dict[int, int] = {}
        for v in votes:
            counts[v] = counts.get(v, 0) + 1
        asr = metrics.attack_success_rate(pred, dev.labels, target)
        eligible = sum(1 for y in dev.labels if y != target)
        outcomes.append(TriggerASR(word, target, asr, eligible, dict(sorted(counts.items()))))
    asrs = [o.asr for o in outcomes]
    targets = [o.target_label for o in outcomes]
    return DownstreamResult(
        num_labels=dev.num_labels, dev_examples=len(dev), cacc=cacc, triggers=outcomes,
        t_asr=metrics.t_asr(asrs) if outcomes else float("nan"),
        c_asr=metrics.c_asr(asrs, targets, dev.num_labels) if outcomes else 0.0,
        alc=metrics.alc(asrs, targets, dev.num_labels) if outcomes else 0.0,
        finetune=finetune_stats)
