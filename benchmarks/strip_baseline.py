"""STRIP (Gao et al., 2019) for text, on :class:`patronus_ext.lm.ModelAdapter`: a benchmark baseline.

    from strip_baseline import Strip
    strip = Strip(adapter, clean_pool=dev_texts[:436], copies=5, seed=0)
    threshold = strip.calibrate(dev_texts[:436], target_frr=0.01)     # flag when score > threshold
    flags = strip.flags(texts)

STRIP's idea: superimpose the input with random clean inputs and look at how
much the model's output still varies.  A clean input's prediction is pulled
around by the superimposed content (high entropy); an input carrying a trigger
keeps the prediction the trigger dictates (low entropy), so low entropy flags
it.  This is written from that description (no code of another project).

Text superimposition used here (``mode="blend"``, the default): each of the
``copies`` (N = 5) perturbed copies of an input keeps *all* of its words and
gets the words of one random clean pool text inserted at random word positions
(order of each side kept), the text analogue of blending two images where both
contents stay present.  ``mode="replace"`` instead replaces a ``fraction`` of the
input's word positions (each independently) with words of the pool text, which
can delete a trigger and so weakens the defense on inputs with one trigger.

The statistic (higher = more suspicious, so :func:`calibrate_threshold`
applies unchanged):

* ``statistic="entropy"`` (a classifier, 2-D logits): minus the mean Shannon
  entropy (nats) of the predicted class distribution over the N copies;
* ``statistic="cosine"`` (a representation-only PLM, no head): the mean pairwise
  cosine between the N copies' representations (``adapter.represent`` at the
  adapter's position); a trigger that maps every input to one target vector
  keeps the copies together, clean copies spread with the superimposed text.
  ``auto`` picks entropy when the model returns 2-D logits, else cosine.

Cost: N forward passes per input (one batched forward of ``B * N`` rows), plus
the model's own serving forward.  The threshold is set at a target FRR
(1% in the benchmark) on held-out clean texts, as in the paper.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch
import torch.nn.functional as F

from patronus_ext.lm.adapter import ModelAdapter
from patronus_ext.monitor import calibrate_threshold

MODES = ("blend", "replace")
STATISTICS = ("auto", "entropy", "cosine")


def superimpose(text: str, other: str, rng: random.Random, mode: str = "blend", fraction: float = 0.5) -> str:
    """One perturbed copy of ``text`` with the words of ``other`` (see the module doc for the modes)."""
    words, extra = text.split(), other.split()
    if mode == "blend":
        # Merge the two word sequences at random: each side keeps its order, every word stays.
        out, i, j = [], 0, 0
        while i < len(words) or j < len(extra):
            left, right = len(words) - i, len(extra) - j
            if right == 0 or (left and rng.random() < left / (left + right)):
                out.append(words[i])
                i += 1
            else:
                out.append(extra[j])
                j += 1
        return " ".join(out)
    if mode == "replace":
        if not extra:
            return text
        out = [extra[rng.randrange(len(extra))] if rng.random() < fraction else w for w in words]
        return " ".join(out)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def mean_pairwise_cosine(reps: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean cosine over the distinct pairs of each row's copies, ``reps [B, N, d]``."""
    n = reps.shape[1]
    if n < 2:
        raise ValueError("the cosine statistic needs at least 2 copies")
    unit = F.normalize(reps.float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)                           # [B, N, N]
    off = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
    return off / (n * (n - 1))


class Strip:
    """STRIP scores, threshold and flags for inputs of one model (see the module doc)."""

    def __init__(self, adapter: ModelAdapter, clean_pool: Sequence[str], *, copies: int = 5, mode: str = "blend",
                 fraction: float = 0.5, statistic: str = "auto", max_length: int = 128, seed: int = 0,
                 batch_size: int = 64):
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        pool = [t for t in clean_pool if t.split()]
        if not pool:
            raise ValueError("STRIP needs a pool of clean texts to superimpose")
        self.adapter = adapter
        self.pool = pool
        self.copies = int(copies)
        self.mode = mode
        self.fraction = float(fraction)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.statistic = self._pick_statistic() if statistic == "auto" else statistic
        if self.statistic == "cosine" and self.copies < 2:
            raise ValueError("the cosine statistic needs copies >= 2")
        self.threshold: float | None = None

    def _pick_statistic(self) -> str:
        logits = self._forward(["a"])[1]
        return "entropy" if logits is not None else "cosine"

    @torch.no_grad()
    def _forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc = self.adapter.tokenize(texts, self.max_length)
        out = self.adapter.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 output_hidden_states=True, return_dict=True)
        logits = getattr(out, "logits", None)
        if logits is not None and logits.dim() != 2:
            logits = None
        hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) is not None else out[0]
        reps = self.adapter.select_position(hidden, enc["input_ids"], enc["attention_mask"])
        return reps.float(), logits

    def perturb(self, texts: Sequence[str], rng: random.Random) -> list[str]:
        """``len(texts) * copies`` perturbed texts, the copies of each input together."""
        return [superimpose(text, self.pool[rng.randrange(len(self.pool))], rng, self.mode, self.fraction)
                for text in texts for _ in range(self.copies)]

    def scores(self, texts: Sequence[str], seed: int | None = None) -> torch.Tensor:
        """``[B]`` STRIP statistic per text (higher = more suspicious).

        The copies are drawn from ``Random(seed)`` (default: the instance's seed), so a call is
        reproducible; batches of ``batch_size`` inputs (``batch_size * copies`` rows per forward).
        """
        texts = list(texts)
        if not texts:
            raise ValueError("scores needs at least one text")
        rng = random.Random(self.seed if seed is None else seed)
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            reps, logits = self._forward(self.perturb(chunk, rng))
            if self.statistic == "entropy":
                if logits is None:
                    raise ValueError("statistic 'entropy' needs a classifier (2-D logits); use 'cosine'")
                out.append(-entropy(logits).view(len(chunk), self.copies).mean(1))
            else:
                out.append(mean_pairwise_cosine(reps.view(len(chunk), self.copies, -1)))
        return torch.cat(out).cpu()

    def calibrate(self, clean_texts: Sequence[str], target_frr: float = 0.01, seed: int | None = None) -> float:
        """Set (and return) the threshold flagging at most ``target_frr`` of ``clean_texts``."""
        self.threshold = calibrate_threshold(self.scores(clean_texts, seed), target_frr)
        return self.threshold

    def flags_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("calibrate the threshold first (Strip.calibrate) or set .threshold")
        return (scores > self.threshold) | torch.isnan(scores)

    def flags(self, texts: Sequence[str], seed: int | None = None) -> torch.Tensor:
        """``[B]`` True where STRIP flags the input as triggered."""
        return self.flags_from_scores(self.scores(texts, seed))


def max_entropy(num_classes: int) -> float:
    return math.log(num_classes)


__all__ = ["MODES", "STATISTICS", "Strip", "entropy", "max_entropy", "mean_pairwise_cosine", "superimpose"]
