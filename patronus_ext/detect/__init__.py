"""Patronus detection: multi-trigger contrastive trigger search and verification (SPEC.md §1)."""

from .config import FAST, PAPER, PROFILES, ScanConfig, profile
from .corpus import read_scan_corpus
from .scan import ScanReport, scan
from ..similarity import representation_shift
from .verify import TriggerCheck

__all__ = ["FAST", "PAPER", "PROFILES", "ScanConfig", "ScanReport", "TriggerCheck", "profile",
           "read_scan_corpus", "representation_shift", "scan"]
