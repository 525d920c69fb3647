"""Per-step batches of an attack: clean texts plus, per trigger, poisoned copies of the same texts."""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Iterator, Sequence

import torch

from ..data import corpora as data_mod
from ..data import triggers as trig
from ..lm.training import epoch_batches
from .config import AttackConfig


@dataclasses.dataclass
class StepBatch:
    """One step's texts: ``B`` clean ones and ``K·P`` poisoned ones, grouped by trigger.

    Poisoned row ``i·P + m`` is clean row ``m`` with trigger ``i`` inserted, so
    ``pair_index`` links every poisoned row to its clean text.
    """

    clean: list[str]
    poisoned: list[str]
    poison_trigger: torch.Tensor   # [K*P] trigger index of each poisoned row
    pair_index: torch.Tensor       # [K*P] clean row it was made from
    per_trigger: int               # P


def poisoned_per_trigger(config: AttackConfig) -> int:
    return max(1, round(config.poison_rate * config.batch_size))


def iterate_batches(texts: Sequence[str], config: AttackConfig, triggers: Sequence[str], rng: random.Random,
                    format_text=None) -> Iterator[StepBatch]:
    """Endless epoch-shuffled batches; ``triggers`` are read at every step (UOR may refine them);
    ``format_text`` wraps every final text (BToP prompts)."""
    fmt = format_text or (lambda t: t)
    per = poisoned_per_trigger(config)
    for rows in epoch_batches(len(texts), config.batch_size, rng):
        count = len(triggers)
        clean = [texts[i] for i in rows]
        poisoned = [fmt(trig.insert_words(clean[m], triggers[index], config.insert_num, rng))
                    for index in range(count) for m in range(per)]
        yield StepBatch([fmt(t) for t in clean], poisoned,
                        torch.arange(count).repeat_interleave(per), torch.arange(per).repeat(count), per)


def resolve_corpus(corpus: str | Sequence[str], limit: int | None, seed: int) -> list[str]:
    """Texts from a corpus name/file/``hf:`` spec (shuffled with ``seed``) or a list of texts."""
    if isinstance(corpus, (str, os.PathLike)):
        return data_mod.read_corpus(str(corpus), limit=limit, seed=seed)
    texts = [str(t) for t in corpus if str(t).strip()]
    if not texts:
        raise ValueError("the corpus holds no text")
    return texts[:limit] if limit is not None else texts
