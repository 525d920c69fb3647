"""Detection: Patronus trigger search and verification (SPEC.md §1); LMSanitator attack-vector inversion (§3)."""

from .config import FAST, PAPER, PROFILES, ScanConfig, profile
from .corpus import read_scan_corpus
from .lms_config import LMSanitatorConfig, lms_profile
from .lmsanitator import LMSanitatorReport, PVCandidate, lmsanitator, read_lms_corpus
from .scan import ScanReport, scan
from ..similarity import representation_shift
from .verify import TriggerCheck

__all__ = ["FAST", "PAPER", "PROFILES", "LMSanitatorConfig", "LMSanitatorReport", "PVCandidate", "ScanConfig",
           "ScanReport", "TriggerCheck", "lms_profile", "lmsanitator", "profile", "read_lms_corpus",
           "read_scan_corpus", "representation_shift", "scan"]
