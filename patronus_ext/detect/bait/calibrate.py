"""Calibrating BAIT's decision on benign chat models (docs/METHODS.md §7).

A chat model continues its own boilerplate ("I'm sorry, but ...", "Sure, here is ...") with high confidence
whatever the prompt, so the authors' Q bar of 0.9 is a number to check, not to copy.  The hardest benign
negatives are the sequences the inversion itself returns on a clean model: :func:`calibrate_bait` runs the
inversion on each benign model (no trigger search), and :func:`suggest_bait_decision` reads the ``(Q,
Q_reference)`` of every qualifying sequence and suggests the decision that keeps all of them out by
``margin``:

* without a reference, ``q_threshold`` = the largest benign Q + ``margin``, never below the configured bar;
* with one, ``reference_margin`` = the largest ``Q - Q_reference`` among benign sequences at or above the Q
  bar, + ``margin``, never below the configured margin.

A suggestion that would have to exceed 1 cannot separate these models from a backdoor by that rule
(``separable`` is false): a clean chat model that already answers one fixed sentence whatever the prompt
looks like a backdoored one without a reference, and the report says so rather than printing a bar.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ...core.files import JSONRecord
from .config import BaitConfig
from .inversion import bait


@dataclasses.dataclass
class BaitCalibration(JSONRecord):
    """The benign models' closest sequences and the decision they suggest."""

    models: list[str]
    closest: list[dict]                  # per model: its best-Q sequence and its largest margin at the Q bar
    max_benign_q: float | None           # over every benign sequence
    max_benign_margin: float | None      # Q - Q_reference over benign sequences at or above the Q bar
    q_threshold: float                   # suggested
    reference_margin: float | None       # suggested (None: no reference scores)
    margin: float
    separable: bool                      # False: a suggestion would exceed 1


def _margins(scores: Sequence[Sequence[float | None]], q_bar: float) -> list[float]:
    return [q - q_ref for q, q_ref in scores if q_ref is not None and q >= q_bar]


def suggest_bait_decision(benign: Sequence[tuple[str, Sequence[Sequence[float | None]]]], base: BaitConfig,
                          margin: float = 0.05, referenced: bool | None = None) -> BaitCalibration:
    """The decision that keeps every benign ``(Q, Q_reference)`` (``None``: no reference) out by ``margin``.

    ``benign``: ``(model name, scores)`` per benign model, scores as a scan report's ``finalist_scores``;
    ``referenced``: whether they were scored against a reference (None: any score has a ``Q_reference``).
    """
    if not benign:
        raise ValueError("calibrating needs at least one benign model")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin}")
    all_q = [q for _, scores in benign for q, _ in scores]
    max_q = max(all_q) if all_q else None
    q_threshold = base.q_threshold if max_q is None else max(base.q_threshold, max_q + margin)
    if referenced is None:
        referenced = any(q_ref is not None for _, scores in benign for _, q_ref in scores)
    margins = [m for _, scores in benign for m in _margins(scores, base.q_threshold)]
    max_margin = max(margins) if margins else None
    reference_margin = None
    if referenced:
        reference_margin = base.reference_margin if max_margin is None else max(base.reference_margin,
                                                                                 max_margin + margin)
    closest = []
    for name, scores in benign:
        best = max(scores, key=lambda s: s[0], default=None)
        model_margins = _margins(scores, base.q_threshold)
        closest.append({"model": name, "sequences": len(scores), "best_q": None if best is None else best[0],
                        "best_q_reference": None if best is None else best[1],
                        "max_margin_at_q_bar": max(model_margins) if model_margins else None})
    # With a reference the margin decides; without one the Q bar must.
    separable = reference_margin < 1.0 if referenced else q_threshold < 1.0
    return BaitCalibration(models=[name for name, _ in benign], closest=closest, max_benign_q=max_q,
                           max_benign_margin=max_margin, q_threshold=min(q_threshold, 1.0),
                           reference_margin=None if reference_margin is None else min(reference_margin, 1.0),
                           margin=margin, separable=separable)


def calibrate_bait(models: Sequence[tuple[str, torch.nn.Module, object]], config: BaitConfig, *,
                   reference: torch.nn.Module | None = None, reference_name: str | None = None,
                   margin: float = 0.05, progress: bool = True) -> BaitCalibration:
    """Run the inversion on each benign ``(name, model, tokenizer)`` (against ``reference`` when given) and
    suggest the decision (:func:`suggest_bait_decision`)."""
    benign = []
    for name, model, tokenizer in models:
        report = bait(model, tokenizer, config, reference=reference, reference_name=reference_name,
                      progress=progress)
        benign.append((name, report.scores))
    return suggest_bait_decision(benign, config, margin, referenced=reference is not None)
