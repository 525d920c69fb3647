"""The searchable vocabulary: whole-word tokens (token level) or words (word level), rarest first.

Token level (docs/METHODS.md §1): special tokens, tokens made only of punctuation,
anything with a digit and single letters (any script, by Unicode category)
are removed; BERT-style ``##`` continuations and ``[unused*]`` slots are
dropped; for byte-level BPE (RoBERTa, BART, DeBERTa, GPT-2, Llama-3-style) and
SentencePiece (ALBERT, XLNet, T5) vocabularies only word-initial tokens
(``Ġ``/``▁``) that re-tokenise to themselves are kept, their surface form
decoded through the tokenizer (so ``ĠcafÃ©`` is ``café`` and symbols such as
``≈`` stay searchable).  Symbols (``≈ ≡ ∈ ⊆``, triggers of the NeuBA
literature) are kept.

Rarity (``wordfreq`` Zipf frequency) sets the search's priority: a trigger
must not fire on everyday text, so ``zipf_threshold`` (default 4.0) cuts the
vocabulary there.  ``None`` searches every token, the rare part still first
(each fuzz loop starts from rare entries; the gradient steps may move to any
entry).  :func:`coverage` says what was searched.  ASCII punctuation and
symbols (``$ + = |``...) stay out: wordfreq has no frequency for them, yet
they are everyday characters.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from functools import lru_cache
from typing import Iterable

import torch

from ...data.tokens import WORD_START_MARKERS

#: Rarity below which an entry counts as rare (the default cut, and the priority when nothing is cut).
RARE_ZIPF = 4.0
#: Symbol triggers of the NeuBA literature; added to the built-in word list.
SYMBOL_TRIGGERS = ("≈", "≡", "∈", "⊆", "⊕", "⊗", "∆", "∞")


@dataclasses.dataclass
class Vocabulary:
    """Searchable candidates: ``rows [W, T]`` sub-token ids (``-1`` padded) and their texts.

    A candidate's identity is its token-id tuple (:attr:`keys`); the texts are
    for display.  ``index_of`` / ``text_of`` look candidates up by that tuple.
    """

    rows: torch.Tensor
    texts: list[str]
    word_level: bool
    #: The rarity cut used (None: none) and how many entries the source offered before it.
    zipf_threshold: float | None = None
    offered: int = 0
    #: ``[W]`` True for rare entries (Zipf below RARE_ZIPF): where each fuzz loop starts.
    rare: torch.Tensor | None = None

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
        return Vocabulary(self.rows[keep], [self.texts[i] for i in keep], self.word_level, self.zipf_threshold,
                          self.offered, None if self.rare is None else self.rare[keep])

    def start_pool(self, count: int) -> list[int] | None:
        """Indices a fuzz loop draws its first ``count`` triggers from: the rare entries when there are
        enough and not every entry is rare, else None (all)."""
        if self.rare is None or bool(self.rare.all()) or int(self.rare.sum()) < count:
            return None
        return self.rare.nonzero().flatten().tolist()


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
    """A searchable surface: no space, no digit, not only punctuation or ASCII symbols, not a single letter."""
    if not surface or any(ch.isspace() for ch in surface):
        return False
    categories = [unicodedata.category(ch) for ch in surface]
    if any(cat.startswith("N") for cat in categories):       # digits and other numbers, any script
        return False
    if all(cat.startswith(("P", "C", "M")) or (ch.isascii() and not ch.isalnum())
           for ch, cat in zip(surface, categories)):           # punctuation (— … •), controls, ASCII symbols
        return False
    if len(surface) == 1 and categories[0].startswith("L"):    # a single letter, Latin or CJK alike
        return False
    return True


def _build(ids: list[list[int]], texts: list[str], zipf_threshold: float | None, offered: int,
           word_level: bool) -> Vocabulary:
    width = max(len(r) for r in ids)
    tensor = torch.full((len(ids), width), -1, dtype=torch.long)
    for i, row in enumerate(ids):
        tensor[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    rare = torch.tensor([zipf(t.lower()) < RARE_ZIPF for t in texts], dtype=torch.bool)
    return Vocabulary(tensor, list(texts), word_level, zipf_threshold, offered, rare)


def token_vocabulary(tokenizer, zipf_threshold: float | None = 4.0) -> Vocabulary:
    """Whole-word single tokens of ``tokenizer`` (below ``zipf_threshold`` unless it is None), in id order."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    marked = any(tok.startswith(WORD_START_MARKERS) for tok in list(vocab)[:5000])
    ids, texts = [], []
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        if token in special or token.startswith("[unused") or (token.startswith("<") and token.endswith(">")):
            continue
        if marked:
            if not token.startswith(WORD_START_MARKERS):
                continue
            # The surface a reader sees: byte-level tokens hold bytes as characters (Ġcafé is ĠcafÃ©).
            surface = tokenizer.convert_tokens_to_string([token]).strip()
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
        if zipf_threshold is not None and zipf(surface.lower()) >= zipf_threshold:
            continue
        ids.append([index])
        texts.append(surface)
    if not ids:
        raise ValueError("the tokenizer has no searchable token (check zipf_threshold)")
    return _build(ids, texts, zipf_threshold, len(vocab), word_level=False)


def english_words(size: int) -> list[str]:
    """The ``size`` most frequent English words of ``wordfreq`` (alphabetic, 2+ letters) and the symbol triggers."""
    from wordfreq import top_n_list

    return [w for w in top_n_list("en", size) if w.isalpha() and w.isascii() and len(w) >= 2] + list(SYMBOL_TRIGGERS)


def _is_cased(tokenizer) -> bool:
    return tokenizer("Paris", add_special_tokens=False)["input_ids"] != \
        tokenizer("paris", add_special_tokens=False)["input_ids"]


def word_vocabulary(tokenizer, words: list[str] | None = None, zipf_threshold: float | None = 4.0,
                    max_tokens: int = 4, size: int = 100_000) -> Vocabulary:
    """Words as ``[W, T]`` sub-token rows.

    A user's ``words`` are searched as given (case kept: on a cased tokenizer
    ``Paris`` and ``paris`` are different triggers).  The built-in list
    (wordfreq's English words, two letters and up, plus symbol triggers) is
    lowercase; on a cased tokenizer each word is also searched capitalised.
    Entries with the same token ids are searched once.
    """
    from ...data.triggers import word_token_ids

    if words is not None:
        pool = [w.strip() for w in words if w.strip()]
    else:
        pool = english_words(size)
        if _is_cased(tokenizer):
            pool += [w.capitalize() for w in pool if w.isalpha()]
    offered = len(pool)
    # Sorted; where case variants share token ids (an uncased tokenizer), the lowercase one is shown.
    chosen = sorted(set(w for w in pool if zipf_threshold is None or zipf(w.lower()) < zipf_threshold),
                    key=lambda w: (w.lower(), not w.islower(), w))
    if not chosen:
        raise ValueError("no searchable word below the Zipf threshold")
    rows = word_token_ids(tokenizer, chosen)
    lengths = (rows >= 0).sum(1)
    special = torch.tensor(sorted(tokenizer.all_special_ids), dtype=torch.long)
    ok = (lengths <= max_tokens) & ~torch.isin(rows, special).any(1)
    ids, texts, seen = [], [], set()
    for i in ok.nonzero().flatten().tolist():
        key = tuple(t for t in rows[i].tolist() if t >= 0)
        if key in seen:
            continue
        seen.add(key)
        ids.append(list(key))
        texts.append(chosen[i])
    if not ids:
        raise ValueError("no searchable word: every word has too many sub-tokens or a special token")
    return _build(ids, texts, zipf_threshold, offered, word_level=True)


def coverage(vocab: Vocabulary, tokenizer) -> dict:
    """What a scan searched: entries, the tokenizer's size, the fraction and the rarity cut."""
    total = len(tokenizer)
    return {"searched": len(vocab), "offered": vocab.offered, "vocabulary_size": total,
            "fraction_of_vocabulary": len(vocab) / total if not vocab.word_level and total else None,
            "zipf_threshold": vocab.zipf_threshold, "level": "word" if vocab.word_level else "token",
            "rare_entries": None if vocab.rare is None else int(vocab.rare.sum()), "rare_below_zipf": RARE_ZIPF}
