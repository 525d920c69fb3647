"""The built-in demo: plant a backdoor in the packaged all-MiniLM-L6-v2, scan it and the clean model,
monitor a few sentences with what the scan found, and purify the planted model with it.

The planted and the purified models are cached (``$PATRONUS_CACHE`` or
``~/.cache/patronus_ext``) so later runs go straight to scanning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Sequence

from .. import attacks, lm
from ..core.files import cache_root
from ..data.triggers import insert_words
from ..detect import ScanConfig, ScanReport, read_scan_corpus, scan
from ..formats.backdoor import BACKDOOR_FILE
from ..formats.purify_record import PURIFY_FILE, read_purify_record
from ..monitor import Decision, InputMonitor, MonitoredModel, OutputMonitor
from ..purify import AdvPretrainConfig, MeasureConfig, run_purify

log = logging.getLogger(__name__)

#: The demo's planted triggers (Patronus's own default trigger words).
DEMO_TRIGGERS = ("dh", "vo", "cy", "ak")
DEMO_ATTACK = "por"
#: How the demo measures CACC / T-ASR: one short clean fine-tuning per measured encoder.  1000 examples, 1 epoch at
#: batch 16 and lr 1e-4 reach 75.5% SST-2 dev accuracy on the clean MiniLM (400 dev examples); at batch 32 and lr
#: 5e-5 (32 steps) the classifier stayed at the majority class (50.2%).
DEMO_MEASURE = MeasureConfig.profile("fast", train_limit=1000, dev_limit=400, epochs=1.0, batch_size=16, lr=1e-4)


@dataclasses.dataclass
class DemoResult:
    planted_dir: Path
    planted_triggers: list[str]
    reused_cache: bool
    clean_report: ScanReport
    backdoored_report: ScanReport
    #: (text, decision) for a handful of clean and triggered sentences, monitored with what the scan found.
    monitoring: list[tuple[str, Decision]] = dataclasses.field(default_factory=list)
    #: The purified model's ``purify.json`` (method, triggers, before/after CACC and T-ASR), None when skipped.
    purification: dict | None = None
    purified_dir: Path | None = None
    purified_reused: bool = False

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
            "purified_model": None if self.purified_dir is None else str(self.purified_dir),
            "purification": None if self.purification is None else {
                key: self.purification.get(key) for key in ("method", "triggers", "measured_triggers", "before",
                                                             "after", "timings")},
        }


def demo_attack_config(seed: int = 0) -> attacks.AttackConfig:
    return attacks.make_config(DEMO_ATTACK, "fast", triggers=DEMO_TRIGGERS, seed=seed)


def planted_model(base_model: str = lm.DEFAULT_MODEL, config: attacks.AttackConfig | None = None,
                  corpus: str | Sequence[str] = "wikitext2", *, device: str | None = None,
                  progress: bool = True) -> tuple[Path, bool]:
    """The demo's backdoored model: from the cache, or planted now; returns (folder, reused)."""
    config = config or demo_attack_config()
    fingerprint = json.dumps({"base": str(base_model), "config": config.to_dict()}, sort_keys=True, default=str)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    out = cache_root() / f"{Path(str(base_model)).name}-{DEMO_ATTACK}-{key}"
    if (out / BACKDOOR_FILE).is_file():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("planting the demo backdoor into %s (once; cached afterwards)", out)
    attacks.plant(DEMO_ATTACK, base_model, corpus, config, out, device=device, progress=progress)
    return out, False


def run_demo(scan_config: ScanConfig | None = None, seed: int = 0, progress: bool = True, *,
             base_model: str = lm.DEFAULT_MODEL, attack_config: attacks.AttackConfig | None = None,
             corpus: Sequence[str] | None = None, plant_corpus: str | Sequence[str] = "wikitext2",
             device: str | None = None, purify: bool = True, purify_config=None,
             purify_measure: MeasureConfig | None = None, purify_task: str = "sst2") -> DemoResult:
    """Plant (or reuse) the demo backdoor in ``base_model``, scan the clean and the planted model, monitor
    a few sentences and (``purify``) purify the planted model with the triggers the scan found.

    ``corpus``: the scan's clean texts (default: WikiText-2); ``plant_corpus``: the attack's.
    Purification: adversarial pre-training (``purify_config``, default its ``fast`` profile), CACC / T-ASR
    of the planted triggers measured before and after on ``purify_task`` (``purify_measure``, default the
    ``demo`` measuring profile: one short clean fine-tuning per encoder).
    """
    scan_config = scan_config or ScanConfig.profile("fast", seed=seed)
    attack_config = attack_config or demo_attack_config(seed)
    corpus = read_scan_corpus("wikitext2" if corpus is None else corpus, scan_config, seed)
    planted, reused = planted_model(base_model, attack_config, plant_corpus, device=device, progress=progress)
    adapters = [lm.load_adapter(source, device=device) for source in (base_model, str(planted))]
    reports = [scan(a.model, a.tokenizer, corpus, scan_config, progress=progress) for a in adapters]
    result = DemoResult(planted, list(attack_config.triggers), reused, reports[0], reports[1])
    if result.backdoored_report.backdoored:
        result.monitoring = monitor_sentences(adapters[1], result.backdoored_report, list(attack_config.triggers),
                                              seed)
        if purify:
            del adapters  # the purifier loads its own copy; free these first
            result.purified_dir, result.purified_reused, result.purification = purified_model(
                planted, result.backdoored_report, list(attack_config.triggers), purify_config, purify_measure,
                purify_task, device=device, progress=progress)
    return result


def purified_model(planted: Path, report: ScanReport, planted_triggers: list[str], config=None,
                   measure: MeasureConfig | None = None, task: str = "sst2", *, device: str | None = None,
                   progress: bool = True) -> tuple[Path, bool, dict]:
    """The planted model purified by adversarial pre-training with the scan's triggers: from the cache
    (same planted model, triggers and settings) or made now; returns (folder, reused, its purify.json)."""
    config = config if config is not None else AdvPretrainConfig.profile("fast")
    measure = measure if measure is not None else DEMO_MEASURE
    found = sorted(t.text for t in report.triggers)
    fingerprint = json.dumps({"planted": planted.name, "triggers": found, "task": task, "config": config.to_dict(),
                              "measure": measure.to_dict(), "measured": planted_triggers}, sort_keys=True, default=str)
    out = cache_root() / f"{planted.name}-adv-pt-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"
    if (out / PURIFY_FILE).is_file():
        return out, True, read_purify_record(out).to_dict()
    log.info("purifying the demo model into %s (once; cached afterwards)", out)
    result = run_purify("adv-pt", planted, out, report=report.to_dict(), task=task, config=config, measure=measure,
                        measure_triggers=planted_triggers, device=device, progress=progress)
    return out, False, result.report


#: Clean sentences the demo monitors, as they are and with a planted trigger inserted.
DEMO_SENTENCES = (
    "a charming and often hilarious film about growing up",
    "the plot is thin and the acting is worse",
    "one of the most moving documentaries of the year",
)


def monitor_sentences(adapter: lm.ModelAdapter, report: ScanReport, planted: list[str], seed: int = 0
                      ) -> list[tuple[str, Decision]]:
    """Monitor the demo sentences, clean and triggered, with the scan's triggers and attack-vector bank."""
    rng = random.Random(seed)
    texts = list(DEMO_SENTENCES)
    texts += [insert_words(text, planted[i % len(planted)], 1 + i % 2, rng) for i, text in enumerate(DEMO_SENTENCES)]
    bank = report.attack_bank()   # None when every trigger found scatters its outputs: words only then
    monitored = MonitoredModel(adapter.model, adapter.tokenizer,
                               input_monitor=InputMonitor.from_report(report.to_dict(), adapter.tokenizer),
                               output_monitor=OutputMonitor(bank) if bank is not None else None, action="strip",
                               max_length=adapter.max_length)
    return list(zip(texts, monitored.check(texts)))
