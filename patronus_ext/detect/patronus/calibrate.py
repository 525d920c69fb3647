"""Calibrating the verification thresholds on benign models.

The paper's rule (trigger iff ``diff_cos < 0.4`` and ``poison_cos > 0.9``) was
set on BERT-base-sized encoders; a different family can sit elsewhere (an
anisotropic representation space has high ``poison_cos`` for any word).  The
hardest benign negatives are the words the search itself proposes on a clean
model: :func:`calibrate` runs the full search on each benign model with
confirmation switched off and every final candidate verified, records their
``(diff_cos, poison_cos)``, and suggests thresholds that keep all of them out
of the trigger region by at least ``margin``:

* ``diff_cos_threshold = min(paper value, smallest benign diff_cos among the
  candidates with poison_cos above the poison threshold - margin)``;
* ``poison_cos_threshold`` stays at the paper value unless that would leave a
  benign candidate inside the region, in which case it is raised above the
  largest such candidate's ``poison_cos`` (capped below 1);
* ``shift_threshold`` (the shift rule, in clean spreads) is the largest benign
  ``shift_ratio`` plus ``shift_margin`` spreads, never below the configured one.

A candidate whose target lies on the clean data (``ScanConfig.natural_target_gap``: a
classifier's class word) is never judged by the paper rule, so it does not move the paper
thresholds either; it is recorded (``natural_target``) and counted.  The largest pinpoint
ratio among the benign candidates whose texts collapsed (what the pinpoint rule would judge)
is reported beside the rule's bar.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ...core.files import JSONRecord
from ...lm.sanity import check_model_sanity
from .config import ScanConfig
from .scan import scan
from .verify import on_clean_data


@dataclasses.dataclass
class Calibration(JSONRecord):
    """Benign candidates' statistics and the thresholds they suggest."""

    models: list[str]
    candidates: list[dict]
    min_benign_diff_cos: float
    max_benign_poison_cos: float
    diff_cos_threshold: float
    poison_cos_threshold: float
    margin: float
    max_benign_shift_ratio: float | None = None
    shift_threshold: float | None = None
    shift_margin: float | None = None
    natural_targets: int = 0   # candidates on the clean data: recorded, not used for the paper thresholds
    max_benign_pinpoint_ratio: float | None = None   # among candidates that collapsed (the pinpoint rule's domain)


def suggest_thresholds(points: Sequence[tuple[float, float]], base: ScanConfig, margin: float
                       ) -> tuple[float, float]:
    """Thresholds that keep every benign ``(diff_cos, poison_cos)`` at least ``margin`` outside the region."""
    diff_thr, poison_thr = base.diff_cos_threshold, base.poison_cos_threshold
    risky = [d for d, p in points if p > poison_thr - margin]
    if risky:
        diff_thr = min(diff_thr, min(risky) - margin)
    if diff_thr < 0:  # cannot separate by diff_cos alone: tighten poison_cos instead
        diff_thr = base.diff_cos_threshold
        inside = [p for d, p in points if d < diff_thr + margin]
        if inside:
            poison_thr = min(0.999, max(poison_thr, max(inside) + margin))
    return diff_thr, poison_thr


def probe_config(config: ScanConfig) -> ScanConfig:
    """``config`` searching as usual but confirming nothing (so no loop stops early or excludes a word), by no
    rule, and prefiltering nothing: every final candidate of every loop is verified and recorded."""
    return config.replace(diff_cos_threshold=-1.0, collapse_spread=None, shift_threshold=None, prefilter_diff_cos=1.0,
                          patience=None)


def suggest_shift_threshold(shift_ratios: Sequence[float], base: ScanConfig, shift_margin: float) -> float | None:
    """The shift rule's bar that keeps every benign ``shift_ratio`` ``shift_margin`` spreads below it (never
    below ``base``'s; None when ``base`` has the rule off)."""
    if base.shift_threshold is None:
        return None
    return max(base.shift_threshold, max(shift_ratios, default=0.0) + shift_margin)


def calibrate(benign: Sequence[tuple[str, object, object]], corpus: Sequence[str], config: ScanConfig,
              margin: float = 0.05, progress: bool = True, shift_margin: float = 0.5) -> Calibration:
    """Scan each benign ``(name, model, tokenizer)`` without confirming anything; suggest thresholds."""
    if not benign:
        raise ValueError("calibration needs at least one benign model")
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin must lie in [0, 0.5), got {margin}")
    if not 0 <= shift_margin < 100:
        raise ValueError(f"shift_margin must lie in [0, 100) clean spreads, got {shift_margin}")
    probe = probe_config(config)
    for name, model, tokenizer in benign:  # every model before any scan: a broken one wastes no scan time
        check_model_sanity(model, tokenizer, name)
    records = []
    for name, model, tokenizer in benign:
        report = scan(model, tokenizer, corpus, probe, progress=progress)
        records += [{"model": name, "text": c.text, "diff_cos": c.diff_cos, "poison_cos": c.poison_cos,
                     "shift_ratio": c.shift_ratio, "spread_ratio": c.spread_ratio, "target_gap": c.target_gap,
                     "pinpoint_ratio": c.pinpoint_ratio,
                     "natural_target": on_clean_data(c.target_gap, config.natural_target_gap)}
                    for c in report.candidates]
    if not records:
        raise ValueError("the search proposed no candidate on the benign models: nothing to calibrate from "
                         "(give more corpus text or more fuzz loops)")
    points = [(r["diff_cos"], r["poison_cos"]) for r in records if not r["natural_target"]]
    diff_thr, poison_thr = suggest_thresholds(points, config, margin)
    shifts = [r["shift_ratio"] for r in records if r["shift_ratio"] is not None]
    judged = points or [(r["diff_cos"], r["poison_cos"]) for r in records]
    collapsed = [r["pinpoint_ratio"] for r in records if r["pinpoint_ratio"] is not None
                 and config.collapse_spread is not None and r["spread_ratio"] <= config.collapse_spread]
    return Calibration([b[0] for b in benign], records, min(p[0] for p in judged), max(p[1] for p in judged),
                       diff_thr, poison_thr, margin, max(shifts, default=None),
                       suggest_shift_threshold(shifts, config, shift_margin), shift_margin,
                       natural_targets=len(records) - len(points),
                       max_benign_pinpoint_ratio=max(collapsed, default=None))

