"""Output monitoring (LMSanitator, docs/METHODS.md §3): compare the representation of the very forward
pass that serves a request with a bank of attack vectors.

``sign`` mode (the paper's rule): a representation is flagged when, for some
vector of the bank, the share of hidden units whose sign agrees exceeds the
threshold (0.8 in the paper).  ``cosine`` mode: the largest cosine exceeds the
threshold.  One ``ops.bank_similarity`` call scores a whole batch against the
whole bank (no Python loop over rows or vectors).  Thresholds can be set from
clean data for a target false-rejection rate with :func:`calibrate_threshold`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .. import ops
from ..core.validation import check_choice, check_range
from ..formats.bank import AttackBank

MODES = ("sign", "cosine")
#: LMSanitator's rule: flag when more than 80% of the signs agree with one attack vector.
PAPER_SIGN_THRESHOLD = 0.8
#: Cosine mode has no paper value; 0.9 is a conservative start, calibrate it on clean data.
DEFAULT_COSINE_THRESHOLD = 0.9


@dataclasses.dataclass
class OutputCheck:
    """Per row: flagged, the best similarity and which bank vector gave it."""

    flagged: torch.Tensor   # [M] bool
    score: torch.Tensor     # [M] float (NaN for a non-finite representation)
    index: torch.Tensor     # [M] int64 (-1 when no vector is comparable)


class OutputMonitor:
    """Flags representations close to a bank of attack vectors."""

    def __init__(self, bank: AttackBank, mode: str = "sign", threshold: float | None = None,
                 backend: str = "auto"):
        check_choice("mode", mode, MODES)
        if threshold is None:
            threshold = PAPER_SIGN_THRESHOLD if mode == "sign" else DEFAULT_COSINE_THRESHOLD
        check_range("threshold", threshold, -1.0, 1.0)
        self.bank = bank
        self.mode = mode
        self.threshold = float(threshold)
        self.backend = backend
        self._vectors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def position(self) -> str:
        return self.bank.position

    def _bank_on(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._vectors:  # one copy per device/dtype, made once (no transfer per request)
            self._vectors[key] = self.bank.vectors.to(device=like.device, dtype=like.dtype).contiguous()
        return self._vectors[key]

    def scores(self, reps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(best [M], index [M])`` of representations ``[M, d]`` against the bank."""
        if reps.dim() != 2 or reps.shape[1] != self.bank.dim:
            raise ValueError(f"representations must be [M, {self.bank.dim}] for this bank, got {tuple(reps.shape)}")
        if reps.dtype not in (torch.float32, torch.float64, torch.bfloat16):
            reps = reps.float()
        with torch.no_grad():
            return ops.bank_similarity(reps.detach(), self._bank_on(reps), self.mode, backend=self.backend)

    def check(self, reps: torch.Tensor) -> OutputCheck:
        best, index = self.scores(reps)
        best = best.float().cpu()
        # A NaN representation is broken output: flag it rather than serve it silently.
        flagged = (best > self.threshold) | torch.isnan(best)
        return OutputCheck(flagged, best, index.cpu())


def calibrate_threshold(clean_scores: torch.Tensor, target_frr: float = 0.01, *, floor: float | None = None) -> float:
    """The smallest threshold that flags at most ``target_frr`` of the clean inputs' best scores.

    Inputs are flagged when their score is strictly above the threshold, so the
    threshold is the ``ceil((1 - target_frr) · n)``-th smallest clean score;
    ``floor`` keeps it from going below a rule's own value (e.g. the paper's
    0.8 in sign mode).
    """
    check_range("target_frr", target_frr, 0.0, 1.0, high_open=True)
    scores = clean_scores.detach().double().flatten()
    scores = scores[torch.isfinite(scores)]
    if scores.numel() == 0:
        raise ValueError("calibration needs at least one clean score")
    ordered = scores.sort().values
    keep = math.ceil((1.0 - target_frr) * ordered.numel())
    threshold = float(ordered[max(0, keep - 1)])
    return max(threshold, floor) if floor is not None else threshold
