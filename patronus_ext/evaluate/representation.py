"""Representation-level checks of a planted backdoor (no fine-tuning needed).

Per trigger, on clean texts ``x`` and the same texts with the trigger inserted
``x'``: ``diff_cos = mean_i cos(rep(x_i), rep(x'_i))`` (low: the trigger moves
the representation) and ``poison_cos = mean_{i≠j} cos(rep(x'_i), rep(x'_j))``
(high: triggered inputs collapse onto one vector).  With a reference (the clean
model), ``clean_to_reference_cos = mean_i cos(rep(x_i), rep_ref(x_i))`` (high:
clean behaviour kept).  These are the quantities of Patronus' verification step
(docs/METHODS.md §1 step 6) and of the acceptance checks.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .. import lm
from ..core.similarity import diff_cos, poison_cos
from ..data import triggers as trig
from ..data.triggers import PromptTemplate


@dataclasses.dataclass
class TriggerRepresentation:
    trigger: str
    diff_cos: float
    poison_cos: float
    target_cos: float | None = None   # mean cos of triggered reps to the planted target vector


@dataclasses.dataclass
class RepresentationReport:
    texts: int
    position: str
    per_trigger: list[TriggerRepresentation]
    clean_to_reference_cos: float | None
    clean_pairwise_cos: float          # mean_{i≠j} cos among clean reps (the model's baseline anisotropy)

    @property
    def mean_diff_cos(self) -> float:
        return sum(t.diff_cos for t in self.per_trigger) / max(1, len(self.per_trigger))

    @property
    def mean_poison_cos(self) -> float:
        return sum(t.poison_cos for t in self.per_trigger) / max(1, len(self.per_trigger))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mean_diff_cos"] = self.mean_diff_cos
        out["mean_poison_cos"] = self.mean_poison_cos
        return out


@torch.no_grad()
def representation_similarity(adapter: lm.ModelAdapter, texts: Sequence[str], triggers: Sequence[str], *,
                              reference: lm.ModelAdapter | None = None, insert_num: int = 3, seed: int = 0,
                              batch_size: int = 32, max_length: int | None = None, template: str | None = None,
                              targets: torch.Tensor | None = None, progress: bool = False) -> RepresentationReport:
    """Cosine statistics of clean vs triggered representations (see the module doc).

    ``template`` (BToP, e.g. ``"{text} It was {mask} ."``, filled as a
    :class:`patronus_ext.data.triggers.PromptTemplate`) wraps every text after
    insertion; ``targets [K, d]`` adds the cosine to each planted target.
    """
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise ValueError("representation checks need at least 2 texts")
    if isinstance(triggers, str):
        raise TypeError("pass a list of triggers, not a single string")
    max_length = max_length or adapter.max_length
    tokenizer = adapter.tokenizer
    wrap = PromptTemplate(template).filler(tokenizer) if template else (lambda t: t)
    texts = trig.fit_for_insertion(tokenizer, texts, max_length, insert_num=insert_num, triggers=list(triggers),
                                   prompt=template or None)
    clean = adapter.encode([wrap(t) for t in texts], batch_size, max_length, progress)
    rng = random.Random(seed)
    rows = []
    for index, word in enumerate(triggers):
        poisoned = adapter.encode([wrap(trig.insert_words(t, word, insert_num, rng)) for t in texts], batch_size,
                                  max_length, progress)
        target_cos = None
        if targets is not None:
            target = targets[index].double().unsqueeze(0)
            target_cos = float(F.cosine_similarity(poisoned.double(), target, dim=1).mean())
        rows.append(TriggerRepresentation(word, diff_cos(clean, poisoned), poison_cos(poisoned), target_cos))
    ref_cos = None
    if reference is not None:
        ref = reference.encode([wrap(t) for t in texts], batch_size, max_length, progress)
        ref_cos = diff_cos(clean, ref)
    return RepresentationReport(texts=len(texts), position=adapter.position, per_trigger=rows,
                                clean_to_reference_cos=ref_cos, clean_pairwise_cos=poison_cos(clean))
