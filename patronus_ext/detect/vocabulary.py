"""The searchable vocabulary: rare whole-word tokens (token level) or rare words (word level).

Token level (SPEC.md §1): special tokens, ASCII punctuation, anything with a
digit and single ASCII letters are removed; BERT-style ``##`` continuations
and ``[unused*]`` slots are dropped; for byte-level BPE (RoBERTa, BART,
DeBERTa, GPT-2) and SentencePiece (ALBERT, XLNet) vocabularies only
word-initial tokens (``Ġ``/``▁``) that re-tokenise to themselves are kept.
Only rare words are kept (``wordfreq`` Zipf frequency below the threshold):
a trigger must not fire on everyday text.  Already confirmed triggers are
excluded by the caller.
"""

from __future__ import annotations

import dataclasses
import string
from functools import lru_cache
from typing import Iterable

import torch

from ..tokens import WORD_START_MARKERS

_ASCII_JUNK = set(string.punctuation + string.digits)


@dataclasses.dataclass
class Vocabulary:
    """Searchable candidates: ``rows [W, T]`` sub-token ids (``-1`` padded) and their texts.

    A candidate's identity is its token-id tuple (:attr:`keys`); the texts are
    for display.  ``index_of`` / ``text_of`` look candidates up by that tuple.
    """

    rows: torch.Tensor
    texts: list[str]
    word_level: bool

    def __post_init__(self):
        self.keys: list[tuple[int, ...]] = [tuple(t for t in row if t >= 0) for row in self.rows.tolist()]
        self._index = {key: i for i, key in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.texts)

    def index_of(self, key: Iterable[int]) -> int | None:
        """Vocabulary index of the candidate with token ids ``key`` (None if it is not searchable)."""
        return self._index.get(tuple(int(t) for t in key if t >= 0))

    def text_of(self, key: Iterable[int]) -> str:
        """Display text of ``key`` (its token ids as text when it is not in the vocabulary)."""
        key = tuple(int(t) for t in key if t >= 0)
        index = self._index.get(key)
        return self.texts[index] if index is not None else str(key)

    def without(self, excluded_rows: Iterable[Iterable[int]]) -> "Vocabulary":
        """The vocabulary minus candidates whose token ids are in ``excluded_rows``."""
        excluded = {tuple(int(t) for t in row if t >= 0) for row in excluded_rows}
        if not excluded:
            return self
        keep = [i for i, key in enumerate(self.keys) if key not in excluded]
        return Vocabulary(self.rows[keep], [self.texts[i] for i in keep], self.word_level)


@lru_cache(maxsize=200_000)
def zipf(word: str) -> float:
    """English Zipf frequency; CJK words unknown in English use Chinese counts when jieba is installed."""
    from wordfreq import zipf_frequency

    value = zipf_frequency(word, "en")
    if value > 0 or not any("\u4e00" <= ch <= "\u9fff" for ch in word) or not _has_jieba():
        return value
    return zipf_frequency(word, "zh")


@lru_cache(maxsize=1)
def _has_jieba() -> bool:
    import importlib.util

    return importlib.util.find_spec("jieba") is not None


def _plain_word(surface: str) -> bool:
    """Not punctuation/digits, no digit inside, not a single ASCII letter."""
    if not surface or all(ch in _ASCII_JUNK for ch in surface):
        return False
    if any(ch.isdigit() for ch in surface):
        return False
    if len(surface) == 1 and surface.isascii() and surface.isalpha():
        return False
    return not any(ch.isspace() for ch in surface)


def token_vocabulary(tokenizer, zipf_threshold: float = 4.0) -> Vocabulary:
    """Rare whole-word single tokens of ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    byte_level = any(tok.startswith(WORD_START_MARKERS) for tok in list(vocab)[:5000])
    ids, texts = [], []
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        if token in special or token.startswith("[unused") or (token.startswith("<") and token.endswith(">")):
            continue
        if byte_level:
            if not token.startswith(WORD_START_MARKERS):
                continue
            surface = token[1:]
            if not _plain_word(surface):
                continue
            # Keep only tokens that a word in running text actually becomes.
            if tokenizer(" " + surface, add_special_tokens=False)["input_ids"] != [index]:
                continue
        else:
            if token.startswith("##"):
                continue
            surface = token
            if not _plain_word(surface):
                continue
        if zipf(surface.lower()) >= zipf_threshold:
            continue
        ids.append([index])
        texts.append(surface)
    if not ids:
        raise ValueError("the tokenizer has no searchable token (check zipf_threshold)")
    return Vocabulary(torch.tensor(ids, dtype=torch.long), texts, word_level=False)


def english_words(size: int) -> list[str]:
    """The ``size`` most frequent English words of ``wordfreq`` (alphabetic, 3+ letters)."""
    from wordfreq import top_n_list

    return [w for w in top_n_list("en", size) if w.isalpha() and w.isascii() and len(w) >= 3]


def word_vocabulary(tokenizer, words: list[str] | None = None, zipf_threshold: float = 4.0,
                    max_tokens: int = 4, size: int = 100_000) -> Vocabulary:
    """Rare words (from ``words`` or wordfreq's list) as ``[W, T]`` sub-token rows."""
    from ..triggers import word_token_ids

    pool = words if words is not None else english_words(size)
    chosen = sorted({w.strip().lower() for w in pool if w.strip() and zipf(w.strip().lower()) < zipf_threshold})
    if not chosen:
        raise ValueError("no searchable word below the Zipf threshold")
    rows = word_token_ids(tokenizer, chosen)
    lengths = (rows >= 0).sum(1)
    special = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
    ok = (lengths <= max_tokens) & ~torch.isin(rows, special).any(1)
    keep = ok.nonzero().flatten().tolist()
    width = int(lengths[keep].max()) if keep else 1
    return Vocabulary(rows[keep][:, :width].contiguous(), [chosen[i] for i in keep], word_level=True)
