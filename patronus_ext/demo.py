"""The built-in demo: plant a backdoor in the packaged all-MiniLM-L6-v2, then scan it and the clean model.

The planted model is cached (``$PATRONUS_CACHE`` or ``~/.cache/patronus_ext``)
so later runs go straight to scanning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from . import attacks, data, models
from .detect import ScanConfig, ScanReport, profile, scan

log = logging.getLogger(__name__)

#: The demo's planted triggers (Patronus's own default trigger words).
DEMO_TRIGGERS = ("dh", "vo", "cy", "ak")
DEMO_ATTACK = "por"


def cache_dir() -> Path:
    root = os.environ.get("PATRONUS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "patronus_ext")
    return Path(root)


@dataclasses.dataclass
class DemoResult:
    planted_dir: Path
    planted_triggers: list[str]
    reused_cache: bool
    clean_report: ScanReport
    backdoored_report: ScanReport

    @property
    def recovered(self) -> list[str]:
        found = {t.text for t in self.backdoored_report.triggers}
        return [t for t in self.planted_triggers if t in found]

    def to_dict(self) -> dict:
        return {
            "planted_model": str(self.planted_dir),
            "attack": DEMO_ATTACK,
            "planted_triggers": self.planted_triggers,
            "recovered_triggers": self.recovered,
            "recall": len(self.recovered) / len(self.planted_triggers),
            "clean_model": self.clean_report.to_dict(),
            "backdoored_model": self.backdoored_report.to_dict(),
        }


def planted_model(seed: int = 0, progress: bool = True) -> tuple[Path, bool]:
    """The demo's backdoored MiniLM: from the cache, or planted now (POR, CPU profile)."""
    config = attacks.make_config(DEMO_ATTACK, fast=True, triggers=DEMO_TRIGGERS, seed=seed)
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cache_dir() / f"minilm-{DEMO_ATTACK}-{key}"
    if (out / attacks.BACKDOOR_FILE).is_file():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("planting the demo backdoor into %s (once; cached afterwards)", out)
    attacks.plant(DEMO_ATTACK, models.DEFAULT_MODEL, "wikitext2", config, out)
    return out, False


def run_demo(config: ScanConfig | None = None, seed: int = 0, progress: bool = True) -> DemoResult:
    """Plant (or reuse) the demo backdoor, then scan the clean and the planted model."""
    config = config or profile("fast", seed=seed)
    planted, reused = planted_model(seed, progress)
    corpus = data.read_corpus("wikitext2", limit=config.corpus_limit * 2, max_words=config.max_words, seed=seed)
    reports = []
    for source in (models.DEFAULT_MODEL, str(planted)):
        model = models.load_model(source)
        tokenizer = models.load_tokenizer(source)
        reports.append(scan(model, tokenizer, corpus, config, progress=progress))
    return DemoResult(planted, list(DEMO_TRIGGERS), reused, reports[0], reports[1])
