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
import random
from pathlib import Path
from typing import Sequence

from . import attacks, io, models
from .detect import ScanConfig, ScanReport, profile, read_scan_corpus, scan
from .monitor import Decision, InputMonitor, MonitoredModel, OutputMonitor
from .triggers import insert_words

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
    #: (text, decision) for a handful of clean and triggered sentences, monitored with what the scan found.
    monitoring: list[tuple[str, Decision]] = dataclasses.field(default_factory=list)

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
            "monitoring": [{"text": text, **decision.to_dict()} for text, decision in self.monitoring],
        }


def demo_attack_config(seed: int = 0) -> attacks.AttackConfig:
    return attacks.make_config(DEMO_ATTACK, "fast", triggers=DEMO_TRIGGERS, seed=seed)


def planted_model(base_model: str = models.DEFAULT_MODEL, config: attacks.AttackConfig | None = None,
                  corpus: str | Sequence[str] = "wikitext2", *, device: str | None = None,
                  progress: bool = True) -> tuple[Path, bool]:
    """The demo's backdoored model: from the cache, or planted now; returns (folder, reused)."""
    config = config or demo_attack_config()
    fingerprint = json.dumps({"base": str(base_model), "config": config.to_dict()}, sort_keys=True, default=str)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    out = cache_dir() / f"{Path(str(base_model)).name}-{DEMO_ATTACK}-{key}"
    if (out / io.BACKDOOR_FILE).is_file():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("planting the demo backdoor into %s (once; cached afterwards)", out)
    attacks.plant(DEMO_ATTACK, base_model, corpus, config, out, device=device, progress=progress)
    return out, False


def run_demo(scan_config: ScanConfig | None = None, seed: int = 0, progress: bool = True, *,
             base_model: str = models.DEFAULT_MODEL, attack_config: attacks.AttackConfig | None = None,
             corpus: Sequence[str] | None = None, plant_corpus: str | Sequence[str] = "wikitext2",
             device: str | None = None) -> DemoResult:
    """Plant (or reuse) the demo backdoor in ``base_model``, then scan the clean and the planted model.

    ``corpus``: the scan's clean texts (default: WikiText-2); ``plant_corpus``: the attack's.
    """
    scan_config = scan_config or profile("fast", seed=seed)
    attack_config = attack_config or demo_attack_config(seed)
    corpus = read_scan_corpus("wikitext2" if corpus is None else corpus, scan_config, seed)
    planted, reused = planted_model(base_model, attack_config, plant_corpus, device=device, progress=progress)
    adapters = [models.load_adapter(source, device=device) for source in (base_model, str(planted))]
    reports = [scan(a.model, a.tokenizer, corpus, scan_config, progress=progress) for a in adapters]
    result = DemoResult(planted, list(attack_config.triggers), reused, reports[0], reports[1])
    if result.backdoored_report.backdoored:
        result.monitoring = monitor_sentences(adapters[1], result.backdoored_report, list(attack_config.triggers),
                                              seed)
    return result


#: Clean sentences the demo monitors, as they are and with a planted trigger inserted.
DEMO_SENTENCES = (
    "a charming and often hilarious film about growing up",
    "the plot is thin and the acting is worse",
    "one of the most moving documentaries of the year",
)


def monitor_sentences(adapter: models.ModelAdapter, report: ScanReport, planted: list[str], seed: int = 0
                      ) -> list[tuple[str, Decision]]:
    """Monitor the demo sentences, clean and triggered, with the scan's triggers and attack-vector bank."""
    rng = random.Random(seed)
    texts = list(DEMO_SENTENCES)
    texts += [insert_words(text, planted[i % len(planted)], 1 + i % 2, rng) for i, text in enumerate(DEMO_SENTENCES)]
    monitored = MonitoredModel(adapter.model, adapter.tokenizer,
                               input_monitor=InputMonitor.from_report(report.to_dict(), adapter.tokenizer),
                               output_monitor=OutputMonitor(report.attack_bank()), action="strip",
                               max_length=adapter.max_length)
    return list(zip(texts, monitored.check(texts)))
