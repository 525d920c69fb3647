"""Detection (docs/METHODS.md): Patronus trigger search and verification (§1, :mod:`.patronus`),
LMSanitator attack-vector inversion (§3, :mod:`.lmsanitator`), over the clean texts of :mod:`.texts`, and
BAIT attack-target inversion for instruction-tuned causal LMs (§7, :mod:`.bait`).

    from patronus_ext import lm
    from patronus_ext.detect import ScanConfig, read_scan_corpus, scan
    config = ScanConfig.profile("fast")
    adapter = lm.load_adapter("all-MiniLM-L6-v2")
    report = scan(adapter.model, adapter.tokenizer, read_scan_corpus("wikitext2", config), config)
"""

from ..core.similarity import representation_shift
from .bait.config import BaitConfig, TriggerSearchConfig
from .bait.inversion import BaitReport, bait
from .bait.triggers import recover_triggers
from .lmsanitator.config import LMSanitatorConfig
from .lmsanitator.inversion import LMSanitatorReport, PVCandidate, lmsanitator
from .patronus.config import ScanConfig
from .patronus.scan import ScanReport, scan
from .patronus.verify import TriggerCheck
from .texts import read_scan_corpus

__all__ = ["BaitConfig", "BaitReport", "LMSanitatorConfig", "TriggerSearchConfig", "bait", "recover_triggers", "LMSanitatorReport", "PVCandidate", "ScanConfig", "ScanReport", "TriggerCheck",
           "lmsanitator", "read_scan_corpus", "representation_shift", "scan"]
