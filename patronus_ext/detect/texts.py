"""The clean texts a detector reads (both detectors: Patronus and LMSanitator).

:func:`read_scan_corpus` reads a corpus name, file or ``hf:`` spec (or takes texts as given);
:func:`prepare_texts` cuts them to the configuration's ``max_words`` and, when the representation is
read at the mask token, wraps each in a prompt holding one.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from ..data import corpora
from ..data.triggers import PromptTemplate, fit_for_insertion
from ..lm.adapter import ModelAdapter

#: Paragraphs read per text a detector keeps: short fragments, and with --position mask texts whose
#: prompt would not fit, are dropped later, so the reader takes twice the configured limit.
READ_FACTOR = 2


class TextSettings(Protocol):
    """What :func:`read_scan_corpus` and :func:`prepare_texts` read from a detector's configuration."""

    corpus_limit: int
    max_words: int | None


def read_scan_corpus(source: str | Sequence[str], config: TextSettings, seed: int = 0) -> list[str]:
    """Texts for a detector (:func:`patronus_ext.detect.scan`, :func:`patronus_ext.detect.lmsanitator`): a corpus
    name, file or ``hf:`` spec (``READ_FACTOR`` x ``config.corpus_limit`` paragraphs), or texts as given."""
    if not isinstance(source, str):
        return [str(t) for t in source]
    return corpora.read_corpus(source, limit=config.corpus_limit * READ_FACTOR, max_words=config.max_words,
                               seed=seed)


DEFAULT_PROMPT = "{text} {mask}"


def prepare_texts(corpus: Sequence[str], adapter: ModelAdapter, config: TextSettings,
                  prompt_template: str | None = None) -> list[str]:
    """Clean texts, cut to ``max_words``; with ``position='mask'`` wrapped in a prompt holding the mask token."""
    texts = [t.strip() for t in corpus if isinstance(t, str) and t.strip()]
    if config.max_words is not None:
        texts = [" ".join(t.split()[:config.max_words]) for t in texts]
    if adapter.position == "mask":
        # The representation is read at the mask token: every text becomes a prompt with one.
        mask = adapter.tokenizer.mask_token
        if mask is None:
            raise ValueError("position='mask' needs a tokenizer with a mask token")
        prompt = PromptTemplate(prompt_template or DEFAULT_PROMPT)
        # Tokenisation truncates from the right and would cut the mask off a long prompt: cut the text instead.
        # (Triggers are inserted later at token level, after tokenisation, so they need no room here.)
        texts = [prompt.fill(t, mask) for t in fit_for_insertion(adapter.tokenizer, texts, adapter.max_length,
                                                                  prompt=prompt)]
    elif prompt_template is not None:
        raise ValueError("prompt_template applies only with position='mask'")
    return texts[:config.corpus_limit]
