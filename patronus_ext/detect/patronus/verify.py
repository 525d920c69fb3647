"""Verification of candidate triggers (docs/METHODS.md §1 step 6).

A candidate ``w`` is inserted into held-out clean texts; with clean
representations ``C`` and triggered ones ``P``:
``diff_cos = mean_i cos(C_i, P_i)`` (a trigger moves every text far away) and
``poison_cos = mean_{i != j} cos(P_i, P_j)`` (and moves them all to one place),
the latter in O(N d) as ``(||sum_i P_i/|P_i| ||^2 - N) / (N (N - 1))``; both come from
:mod:`patronus_ext.core.similarity`, the one implementation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F

from ...core.files import JSONRecord
from ...core.similarity import poison_cos as mean_pairwise_cos
from ...core.similarity import representation_shift
from ...data.triggers import insert_token_triggers, sample_gaps
from ...lm.adapter import ModelAdapter
from ...lm.sanity import model_name, require_finite

FORWARD_CHUNK = 128
#: Random searchable words whose shifts show how far this model's ordinary words move texts, and the quantile
#: of their shift ratios the shift rule compares with.
NULL_WORDS = 32
NULL_QUANTILE = 0.95
#: The clean texts nearest a target that say whether it lies on the clean data: the 95th percentile of their
#: cosines to it (5% of the texts, so one odd text does not decide).
NATURAL_QUANTILE = 0.95


#: The rules that confirm a word for sending texts to one place (its triggered outputs have a target point).
TARGET_RULES = ("paper", "collapse", "pinpoint")


def on_clean_data(target_gap: float | None, bar: float | None) -> bool:
    """A target within ``bar`` clean spreads of the nearest 5% of clean texts (None: unmeasured, or no bar)."""
    return bar is not None and target_gap is not None and target_gap <= bar


@dataclasses.dataclass(frozen=True)
class TargetPlace:
    """Where a candidate sent the texts (``c``, the mean direction of the unit triggered representations),
    against the clean texts nearest it: ``q``, the ``NATURAL_QUANTILE`` of the clean texts' cosines to ``c``."""

    gap: float       # (1 - q) / clean spread: how far off the clean data ``c`` lies
    pinpoint: float  # (1 - q) / (1 - the triggered texts' mean cosine to ``c``): how much tighter they sit there


@dataclasses.dataclass
class TriggerCheck(JSONRecord):
    """One candidate's verification: statistics, margins to the thresholds and the verdict."""

    text: str
    token_ids: list[int]
    diff_cos: float
    poison_cos: float
    diff_margin: float    # threshold - diff_cos: > 0 passes
    poison_margin: float  # poison_cos - threshold: > 0 passes
    confirmed: bool
    stage: str            # "verified" (on verify texts) or "prefiltered" (dev batch only)
    texts_used: int
    loop: int
    shift_ratio: float | None = None   # (1 - diff_cos) / clean spread: how far texts moved, in clean spreads
    spread_ratio: float | None = None  # (1 - poison_cos) / clean spread: how tight the triggered texts are
    null_ratio: float | None = None    # shift_ratio / the model's ordinary words' (Verifier.null_shift), when measured
    rule: str | None = None         # which rule confirmed it: "paper" (absolute cosines), "collapse", "pinpoint"
    #                                 or "shift"
    target_gap: float | None = None      # how far off the clean data the texts went (TargetPlace.gap)
    pinpoint_ratio: float | None = None  # how much tighter they sit there than the nearest clean texts
    natural_target: bool = False    # the paper or collapse rule held, but on a point clean texts occupy: spared
    group: int | None = None        # a confirmed trigger and its weaker variants share a group
    target: int | None = None       # the target cluster (where it sends inputs; see detect.groups)
    variant_of: str | None = None   # the stronger trigger this one echoes, if any

    @property
    def key(self) -> tuple[int, ...]:
        """The candidate's identity: its token-id tuple (``text`` is for display)."""
        return tuple(self.token_ids)


class Verifier:
    """Held-out clean texts with cached clean representations and fixed insertion gaps."""

    def __init__(self, adapter: ModelAdapter, texts: Sequence[str], insert_num: int, generator: torch.Generator,
                 diff_threshold: float, poison_threshold: float, collapse_spread: float | None = None,
                 collapse_shift: float = 2.0, shift_threshold: float | None = None,
                 shift_null_factor: float | None = None, null_keys: Sequence[Sequence[int]] = (),
                 natural_target_gap: float | None = None, pinpoint_ratio: float | None = None):
        if len(texts) < 2:
            raise ValueError(f"verification needs at least 2 texts, got {len(texts)}")
        self.adapter = adapter
        self.insert_num = insert_num
        self.diff_threshold = diff_threshold
        self.poison_threshold = poison_threshold
        self.batch = adapter.tokenize(list(texts))
        self.gaps = sample_gaps(self.batch["attention_mask"], insert_num, adapter.special_prefix,
                                adapter.special_suffix, generator)
        self.clean_reps = self._represent(self.batch["input_ids"], self.batch["attention_mask"])
        self.collapse_spread = collapse_spread
        self.collapse_shift = collapse_shift
        self.shift_threshold = shift_threshold
        self.shift_null_factor = shift_null_factor
        self.natural_target_gap = natural_target_gap
        self.pinpoint_ratio = pinpoint_ratio
        #: Random searchable words: how far this model's ordinary words move texts (measured on first need).
        self.null_keys = [tuple(int(t) for t in key) for key in null_keys]
        self._null_shift: float | None = None
        spread = 1.0 - mean_pairwise_cos(self.clean_reps)
        require_finite(model_name(adapter.model), {"the clean representations": self.clean_reps,
                                                   "the clean spread": spread}, "verification")
        #: 1 - mean pairwise cosine of the clean representations: the scale the collapse rule measures in.
        self.clean_spread = max(spread, 1e-12)
        self._clean_units = F.normalize(self.clean_reps.double(), dim=1)

    @torch.no_grad()
    def _represent(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        reps = [self.adapter.represent(input_ids[i:i + FORWARD_CHUNK], attention_mask[i:i + FORWARD_CHUNK]).float()
                for i in range(0, input_ids.shape[0], FORWARD_CHUNK)]
        return torch.cat(reps)

    def triggered_reps(self, token_ids: Sequence[int]) -> torch.Tensor:
        n = self.batch["input_ids"].shape[0]
        rows = torch.tensor([list(token_ids)], dtype=torch.long).expand(n, -1)
        tb = insert_token_triggers(self.batch["input_ids"], self.batch["attention_mask"], rows, self.insert_num,
                                   prefix=self.adapter.special_prefix, suffix=self.adapter.special_suffix,
                                   pad_id=int(self.adapter.tokenizer.pad_token_id), gaps=self.gaps)
        return self._represent(tb.input_ids, tb.attention_mask)

    def ratios(self, diff_cos: float, poison_cos: float) -> tuple[float, float]:
        """``(shift_ratio, spread_ratio)``: ``1 - diff_cos`` and ``1 - poison_cos`` in units of the clean spread."""
        return (1.0 - diff_cos) / self.clean_spread, (1.0 - poison_cos) / self.clean_spread

    def collapsed(self, diff_cos: float, poison_cos: float, slack: float = 1.0) -> bool:
        """The collapse rule (``slack`` > 1 loosens the spread bound, for the prefilter's one dev batch)."""
        if self.collapse_spread is None:
            return False
        shift, spread = self.ratios(diff_cos, poison_cos)
        return spread <= slack * self.collapse_spread and shift >= self.collapse_shift / slack

    def null_shift(self) -> float | None:
        """The ``NULL_QUANTILE`` quantile of the random words' shift ratios (None without random words): how far
        this model's ordinary words move texts, in clean spreads.  Measured once, on first need."""
        if self._null_shift is None and self.null_keys:
            ratios = [self.ratios(*representation_shift(self.clean_reps, self.triggered_reps(key)))[0]
                      for key in self.null_keys]
            self._null_shift = float(torch.quantile(torch.tensor(ratios, dtype=torch.float64), NULL_QUANTILE))
        return self._null_shift

    def shifted(self, diff_cos: float, slack: float = 1.0) -> bool:
        """The shift rule: texts moved at least ``shift_threshold`` clean spreads, wherever they went, and at
        least ``shift_null_factor`` x as far as this model's ordinary words move them (:meth:`null_shift`;
        ``slack`` > 1 loosens both, for the prefilter's one dev batch)."""
        if self.shift_threshold is None:
            return False
        shift = (1.0 - diff_cos) / self.clean_spread
        if shift < self.shift_threshold / slack:
            return False
        if self.shift_null_factor is None or not self.null_keys:
            return True
        return shift >= self.shift_null_factor * self.null_shift() / slack

    def target_place(self, triggered: torch.Tensor) -> TargetPlace:
        """Where the triggered texts went, against the nearest 5% of clean texts (:class:`TargetPlace`)."""
        units = F.normalize(triggered.double(), dim=1)
        centre = F.normalize(units.mean(0), dim=0)
        room = float(1.0 - torch.quantile(self._clean_units @ centre, NATURAL_QUANTILE))
        radius = float(1.0 - (units @ centre).mean())
        return TargetPlace(room / self.clean_spread, room / max(radius, 1e-12))

    def natural(self, place: TargetPlace | None) -> bool:
        """A target on the clean data: the nearest 5% of clean texts are at most ``natural_target_gap`` clean
        spreads from it, as close as clean texts are to each other.  A task-fine-tuned classifier sends every
        text carrying a strong class word to its class point, where that class's clean texts already are; a
        transferable backdoor's target is a point no clean input reaches -- or a pinpoint (:meth:`pinpointed`)."""
        return place is not None and on_clean_data(place.gap, self.natural_target_gap)

    def pinpointed(self, poison_cos: float, place: TargetPlace | None) -> bool:
        """The pinpoint rule: the triggered texts collapsed (spread at most ``collapse_spread`` x the clean one)
        onto a point they sit at least ``pinpoint_ratio`` x tighter around than its nearest clean texts do,
        wherever it lies.  Trained backdoors collapse onto a pinpoint; a class point is as loose as its class."""
        return place is not None and self.may_pinpoint(poison_cos) and place.pinpoint >= self.pinpoint_ratio

    def may_pinpoint(self, poison_cos: float, slack: float = 1.0) -> bool:
        """The pinpoint rule's collapse (``slack`` > 1 loosens it, for the prefilter's one dev batch, where the
        place is not measured)."""
        if self.pinpoint_ratio is None or self.collapse_spread is None:
            return False
        return (1.0 - poison_cos) / self.clean_spread <= slack * self.collapse_spread

    def rule(self, diff_cos: float, poison_cos: float, place: TargetPlace | None = None) -> str | None:
        """Which rule makes ``(diff_cos, poison_cos)`` a trigger: ``"paper"``, ``"collapse"``, ``"pinpoint"``,
        ``"shift"`` or None (the first that holds, in that order).  The paper and collapse rules, which claim
        the texts went to one target far from where they were, do not hold for a natural target
        (:meth:`natural`); the pinpoint rule needs ``place`` (measured on the verify texts); the shift rule
        claims no target."""
        if not self.natural(place):
            if diff_cos < self.diff_threshold and poison_cos > self.poison_threshold:
                return "paper"
            if self.collapsed(diff_cos, poison_cos):
                return "collapse"
        if self.pinpointed(poison_cos, place):
            return "pinpoint"
        return "shift" if self.shifted(diff_cos) else None

    def judge(self, diff_cos: float, poison_cos: float, place: TargetPlace | None = None) -> bool:
        return self.rule(diff_cos, poison_cos, place) is not None

    def check(self, key: Sequence[int], loop: int, text: str | None = None) -> tuple[TriggerCheck, torch.Tensor]:
        """Verify one candidate (its token ids) on all held-out texts; also returns its triggered representations."""
        triggered = self.triggered_reps(key)
        diff, poison = representation_shift(self.clean_reps, triggered)
        return self.make_check(key, diff, poison, "verified", triggered.shape[0], loop, text,
                               place=self.target_place(triggered)), triggered

    def make_check(self, key: Sequence[int], diff: float, poison: float, stage: str, texts_used: int, loop: int,
                   text: str | None = None, place: TargetPlace | None = None) -> TriggerCheck:
        """A :class:`TriggerCheck`; ``text`` (display only) defaults to the decoded token ids."""
        # NaN fails every threshold comparison, so it would read as "not a trigger": an error instead.
        require_finite(model_name(self.adapter.model), {"diff_cos": diff, "poison_cos": poison},
                       f"verifying candidate {[int(t) for t in key]}")
        text = self.adapter.token_text(key) if text is None else text
        rule = self.rule(diff, poison, place) if stage == "verified" else None
        spared = (stage == "verified" and rule is None and self.natural(place)
                  and self.rule(diff, poison) is not None)
        shift, spread = self.ratios(diff, poison)
        null = self._null_shift   # only where the shift rule needed it: measuring it costs forwards
        return TriggerCheck(text, [int(t) for t in key], diff, poison, self.diff_threshold - diff,
                            poison - self.poison_threshold, rule is not None, stage, texts_used, loop,
                            shift_ratio=shift, spread_ratio=spread, rule=rule,
                            null_ratio=None if null is None else shift / max(null, 1e-12),
                            target_gap=None if place is None else place.gap,
                            pinpoint_ratio=None if place is None else place.pinpoint, natural_target=spared)


#: Shift directions closer than this (cosine) count as one target.
VARIANT_DIRECTION_COS = 0.85
#: A variant moves texts clearly less far than the trigger it echoes (diff_cos this much higher).
VARIANT_WEAKER_BY = 0.1


def group_by_target(confirmed: list[TriggerCheck], triggered: dict[tuple[int, ...], torch.Tensor],
                    clean: torch.Tensor, direction_cos: float = VARIANT_DIRECTION_COS,
                    weaker_by: float = VARIANT_WEAKER_BY) -> None:
    """Mark confirmed triggers that are weaker echoes of a stronger one.

    A backdoor often also fires, more weakly, on near neighbours of its trigger
    (``mn`` -> ``nm``).  Such a word is labelled ``variant_of`` the strongest
    trigger whose shift (mean unit triggered representation minus mean unit
    clean one) points the same way (cosine above ``direction_cos``) and whose
    ``diff_cos`` is lower by at least ``weaker_by``.  Triggers of equal strength
    stay separate even when they share a target (an adaptive attack pulls its
    triggers together).  Variants are real triggers of the model and stay
    confirmed; the label only tells them from distinct backdoors.
    ``triggered`` maps each trigger's token-id tuple (:attr:`TriggerCheck.key`)
    to its triggered representations.
    """
    clean_centre = F.normalize(clean.double(), dim=1).mean(0)
    heads: list[tuple[TriggerCheck, torch.Tensor]] = []
    for check in sorted(confirmed, key=lambda c: c.diff_cos):
        shift = F.normalize(triggered[check.key].double(), dim=1).mean(0) - clean_centre
        for head, head_shift in heads:
            if (check.diff_cos - head.diff_cos >= weaker_by
                    and float(F.cosine_similarity(shift, head_shift, dim=0)) > direction_cos):
                check.group, check.variant_of = head.group, head.text
                break
        else:
            check.group = len(heads)
            heads.append((check, shift))
