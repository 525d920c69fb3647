"""The clean texts a scan reads."""

from __future__ import annotations

from typing import Sequence

from .. import data
from .config import ScanConfig

#: Paragraphs read per text a scan keeps: short fragments, and with --position mask texts whose
#: prompt would not fit, are dropped later, so the reader takes twice the configured limit.
READ_FACTOR = 2


def read_scan_corpus(source: str | Sequence[str], config: ScanConfig, seed: int = 0) -> list[str]:
    """Texts for :func:`patronus_ext.detect.scan`: a corpus name, file or ``hf:`` spec, or texts as given."""
    if not isinstance(source, str):
        return [str(t) for t in source]
    return data.read_corpus(source, limit=config.corpus_limit * READ_FACTOR, max_words=config.max_words, seed=seed)
