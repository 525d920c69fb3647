"""Facts about a tokenizer that several modules need: special-token layout and word boundaries.

It imports only torch, so trigger matching and the model adapter share it.

* :func:`special_layout`: how many special tokens a tokenizer puts before and
  after a text (``[CLS] ... [SEP]`` -> ``(1, 1)``, GPT-2 -> ``(0, 0)``).
* :class:`WordTable` (:func:`word_table`): per-vocabulary booleans
  ``is_continuation[V]`` (the token continues the word before it) and
  ``ends_in_word[V]`` (its last character is a word character).  WordPiece:
  the ``##`` tokens continue.  Byte-level BPE (RoBERTa, GPT-2, BART): a token
  without the ``Ġ`` space marker whose first byte is a letter, digit or a
  non-ASCII byte (``Ġc`` ``f``: ``f`` continues; ``,`` or a newline ``Ċ`` does
  not).  SentencePiece: the same with ``▁`` and the token's first character.
  Special and added tokens neither continue nor end a word.
* :meth:`WordTable.word_starts` / :func:`word_boundaries`: ``[N, L]`` True where
  a token begins a word, in two gathers: a token starts a word unless it is a
  continuation that follows a token ending in a word character (so the first
  word after ``<s>``, a newline or punctuation, which BPE writes without
  ``Ġ``, still starts a word).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

#: Word-initial markers of byte-level BPE (``Ġ``) and SentencePiece (``▁``) vocabularies.
WORD_START_MARKERS = ("Ġ", "▁")
#: Token schemes :func:`word_scheme` tells apart.
SCHEMES = ("wordpiece", "byte_level", "sentencepiece", "none")


def special_layout(tokenizer) -> tuple[int, int]:
    """How many special tokens ``tokenizer`` puts before and after a text: ``(prefix, suffix)``."""
    probe = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(probe) + 1):
        if full[start:start + len(probe)] == probe:
            return start, len(full) - start - len(probe)
    return 0, 0


def word_scheme(vocab: Iterable[str]) -> str:
    """``wordpiece`` (``##`` continuations), ``byte_level`` (``Ġ``), ``sentencepiece`` (``▁``) or ``none``."""
    counts = {"wordpiece": 0, "byte_level": 0, "sentencepiece": 0}
    for token in vocab:
        if token.startswith("##"):
            counts["wordpiece"] += 1
        elif token.startswith("Ġ"):
            counts["byte_level"] += 1
        elif token.startswith("▁"):
            counts["sentencepiece"] += 1
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else "none"


def _byte_level_bytes() -> dict[str, int]:
    """The character byte-level BPE uses for each byte (printable Latin-1 as itself, the rest from U+0100)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def _is_word_byte(b: int) -> bool:
    """A letter or digit (ASCII), or any non-ASCII byte (part of a letter of another script)."""
    return b >= 0x80 or chr(b).isalnum()


@dataclasses.dataclass(frozen=True)
class WordTable:
    """Per-vocabulary word facts, computed once per tokenizer, applied to a batch in two gathers.

    ``is_continuation[v]``: token ``v`` continues the word before it when that
    word's last token ends in a word character.  ``ends_in_word[v]``: token
    ``v``'s last character is a word character (letter, digit, non-ASCII byte).
    Special and added tokens neither continue nor end a word.
    """

    is_continuation: torch.Tensor  # [V] bool
    ends_in_word: torch.Tensor     # [V] bool
    scheme: str

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "WordTable":
        vocab = tokenizer.get_vocab()
        size = max(max(vocab.values()) + 1, len(tokenizer))
        scheme = word_scheme(vocab)
        cont = torch.zeros(size, dtype=torch.bool)
        ends = torch.zeros(size, dtype=torch.bool)
        if scheme == "none":
            return cls(cont, ends, scheme)
        skip = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "get_added_vocab", dict)())
        byte_of = _byte_level_bytes() if scheme == "byte_level" else {}
        cont_ids, end_ids = [], []
        for token, index in vocab.items():
            if token in skip or not token:
                continue
            if scheme == "wordpiece":  # WordPiece marks every continuation: "##" decides alone
                hit, end = token.startswith("##"), True
            elif scheme == "byte_level":
                first, last = byte_of.get(token[0]), byte_of.get(token[-1])
                hit = not token.startswith("Ġ") and first is not None and _is_word_byte(first)
                end = last is not None and _is_word_byte(last)
            else:  # sentencepiece: real characters
                hit = not token.startswith("▁") and token[0].isalnum()
                end = token[-1].isalnum()
            if hit:
                cont_ids.append(index)
            if end:
                end_ids.append(index)
        if cont_ids:
            cont[torch.tensor(cont_ids, dtype=torch.long)] = True
        if end_ids:
            ends[torch.tensor(end_ids, dtype=torch.long)] = True
        return cls(cont, ends, scheme)

    def word_starts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` True where a token begins a word: not a continuation, or first, or after a non-word token.

        Ids outside the table (e.g. a model embedding larger than the
        tokenizer) count as word starts and as non-word tokens.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [N, L], got shape {tuple(input_ids.shape)}")
        size = self.is_continuation.numel()
        inside = (input_ids >= 0) & (input_ids < size)
        safe = input_ids.clamp(0, size - 1)
        cont = self.is_continuation.to(input_ids.device)[safe] & inside
        ends = self.ends_in_word.to(input_ids.device)[safe] & inside
        cont[:, 1:] &= ends[:, :-1]
        if cont.shape[1]:
            cont[:, 0] = False
        return ~cont


def word_table(tokenizer) -> WordTable:
    """:class:`WordTable` of ``tokenizer`` (build it once and reuse it for many batches)."""
    return WordTable.from_tokenizer(tokenizer)


def word_boundaries(tokenizer, input_ids: torch.Tensor, table: WordTable | None = None) -> torch.Tensor:
    """``[N, L]`` word starts of ``input_ids`` (:meth:`WordTable.word_starts`); pass ``table`` to reuse one."""
    return (table or word_table(tokenizer)).word_starts(input_ids)
