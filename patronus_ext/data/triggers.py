"""Trigger insertion at word level (strings) and token-id level (tensors, vectorised).

Word level (docs/METHODS.md §0): the trigger word is inserted ``insert_num`` times at
uniformly random word positions in ``[1, len(words)]``.

Token level is the inner loop of trigger search: a padded batch gets, per
sample, one (possibly multi-token) trigger inserted ``insert_num`` times at
random gaps between its content tokens (never before the leading special
tokens or after the trailing ones), in one set of tensor operations.  The gaps
are returned so that the same batch can be rebuilt with other trigger tokens
(candidate scoring keeps the positions fixed).

A trigger's identity is the tuple of its sub-token ids (:func:`trigger_ids`);
:func:`trigger_positions` / :func:`match_triggers` find those windows in a
token batch, optionally only where they form whole words
(:func:`word_starts`).  Texts are cut before insertion so that the triggers
(and a prompt's own tokens) survive truncation with one budget rule
(:func:`fit_for_insertion`), and prompts are filled one way
(:class:`PromptTemplate`).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

import torch


def insert_words(text: str, trigger: str, insert_num: int = 3, rng: random.Random | None = None) -> str:
    """``text`` with ``trigger`` inserted ``insert_num`` times at random word positions."""
    if insert_num < 1:
        raise ValueError(f"insert_num must be >= 1, got {insert_num}")
    if not trigger or not trigger.strip():
        raise ValueError("trigger must be a non-empty word")
    rng = rng or random.Random()
    words = text.split()
    for _ in range(insert_num):
        words.insert(rng.randint(1, len(words)) if words else 0, trigger)
    return " ".join(words)


def poison_texts(texts: Sequence[str], triggers: Sequence[str], insert_num: int = 3, seed: int = 0
                 ) -> tuple[list[str], list[int]]:
    """Each text with one trigger (drawn per text); returns texts and the trigger index of each."""
    if not triggers:
        raise ValueError("poison_texts needs at least one trigger")
    rng = random.Random(seed)
    out, which = [], []
    for text in texts:
        index = rng.randrange(len(triggers))
        out.append(insert_words(text, triggers[index], insert_num, rng))
        which.append(index)
    return out, which


def fit_texts(tokenizer, texts: Sequence[str], budget: int) -> list[str]:
    """Each text cut at a word boundary to at most ``budget`` tokens (no specials); same order and length.

    Cutting the text (not the token sequence) before inserting triggers keeps
    every inserted trigger inside ``max_length``.  A text whose first word alone
    exceeds the budget becomes ``""`` (callers drop or keep it).
    """
    if budget < 1:
        raise ValueError(f"max_length leaves no room for text after specials and triggers (budget {budget})")
    texts = list(texts)
    if not getattr(tokenizer, "is_fast", False):  # slow tokenizers: a word budget, <= 2 tokens per word
        return [" ".join(t.split()[:max(1, budget // 2)]) for t in texts]
    out = []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    for text, offsets in zip(texts, enc["offset_mapping"]):
        if len(offsets) <= budget:
            out.append(text)
            continue
        cut = offsets[budget][0]  # start of the first token that does not fit
        head = text[:cut]
        if cut > 0 and not text[cut - 1].isspace() and not text[cut].isspace():
            # the cut splits a word (a sub-token or punctuation follows): back off to the last space
            head = head.rsplit(None, 1)[0] if len(head.split()) > 1 else ""
        out.append(head.strip())
    return out


def word_token_ids(tokenizer, words: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
    """``[W, T]`` sub-token ids of each word as it appears mid-sentence, ``-1`` padded.

    A leading space is kept for byte-level BPE tokenizers (RoBERTa, GPT-2), where
    a word inside a sentence is the ``Ġ``-prefixed token.
    """
    words = list(words)
    if not words:
        raise ValueError("word_token_ids needs at least one word")
    ids = tokenizer([" " + w.strip() for w in words], add_special_tokens=False)["input_ids"]
    for word, toks in zip(words, ids):
        if not toks:
            raise ValueError(f"word {word!r} produces no tokens")
    width = max(len(t) for t in ids)
    if max_tokens is not None:
        width = min(width, max_tokens)
    out = torch.full((len(ids), width), -1, dtype=torch.long)
    for i, toks in enumerate(ids):
        toks = toks[:width]
        out[i, :len(toks)] = torch.tensor(toks, dtype=torch.long)
    return out


def trigger_ids(tokenizer, triggers) -> list[tuple[int, ...]]:
    """Each trigger's identity: the tuple of its sub-token ids.

    ``triggers`` holds words (tokenised as they appear mid-sentence, see
    :func:`word_token_ids`), token-id sequences (taken as they are) or is a
    ``[K, T]`` ``-1``-padded tensor.
    """
    if isinstance(triggers, str):
        raise TypeError("pass a list of triggers, not a single string")
    if isinstance(triggers, torch.Tensor):
        if triggers.dim() != 2:
            raise ValueError(f"a trigger tensor must be [K, T] (-1 padded), got shape {tuple(triggers.shape)}")
        triggers = triggers.tolist()
    items = list(triggers)
    words = [t for t in items if isinstance(t, str)]
    word_rows = iter(word_token_ids(tokenizer, words).tolist()) if words else iter(())
    out = []
    for item in items:
        row = next(word_rows) if isinstance(item, str) else item
        ids = tuple(int(i) for i in row if int(i) >= 0)
        if not ids:
            raise ValueError(f"trigger {item!r} has no token")
        out.append(ids)
    return out


# -- matching triggers in token batches ---------------------------------------------------------
def _pattern_rows(triggers) -> torch.Tensor:
    """``[K, T]`` ``-1``-padded token rows from token-id sequences (or such a tensor)."""
    if isinstance(triggers, torch.Tensor):
        rows = [[int(i) for i in row if i >= 0] for row in triggers.tolist()]
    else:
        rows = [[int(i) for i in row] for row in triggers]
    if not rows:
        raise ValueError("need at least one trigger")
    for row in rows:
        if not row or min(row) < 0:
            raise ValueError(f"every trigger needs at least one token id and no negative id, got {row}")
    out = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def match_triggers(input_ids: torch.Tensor, triggers, *, word_start: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, L]`` index of the trigger whose token window covers each position, ``-1`` elsewhere.

    ``triggers``: token-id sequences (each trigger's identity, see
    :func:`trigger_ids`) or a ``[K, T]`` ``-1``-padded tensor.  A trigger
    matches where its full window of ids occurs (multi-token words included);
    where windows of several triggers overlap, the lowest index wins.
    ``word_start [N, L]`` (:func:`patronus_ext.data.tokens.word_boundaries`) restricts
    matches to whole words: the window must begin at a word start and the token
    after it must begin a new word (or the row ends), so a benign word that
    merely begins with a trigger's tokens does not count.  Vectorised over the
    batch and the triggers: ``T`` passes of ``[N, L, K]`` comparisons.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [N, L], got shape {tuple(input_ids.shape)}")
    device = input_ids.device
    pats = _pattern_rows(triggers).to(device)
    count, width = pats.shape
    batch, length = input_ids.shape
    lengths = (pats >= 0).sum(1)
    # -1 never equals a token id, so windows running past the row never match.
    padded = torch.nn.functional.pad(input_ids, (0, width - 1), value=-1)
    starts = torch.ones(batch, length, count, dtype=torch.bool, device=device)
    for t in range(width):
        tok = pats[:, t]
        starts &= (padded[:, t:t + length].unsqueeze(2) == tok) | (tok < 0)
    if word_start is not None:
        if word_start.shape != input_ids.shape:
            raise ValueError(f"word_start must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(word_start.shape)}")
        ws = torch.nn.functional.pad(word_start.to(device=device, dtype=torch.bool), (0, width), value=True)
        after = torch.arange(length, device=device).unsqueeze(1) + lengths.unsqueeze(0)  # [L, K]
        starts &= ws[:, :length].unsqueeze(2) & ws[:, after]
    cover = starts.clone()
    for t in range(1, width):  # position j is covered by a start at j - t when t < len_k
        cover[:, t:] |= starts[:, :length - t] & (t < lengths)
    return torch.where(cover.any(2), cover.to(torch.int8).argmax(2), torch.full_like(input_ids, -1))


def trigger_positions(input_ids: torch.Tensor, triggers, *, word_start: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """``[N, L]`` True where any trigger's full token window occurs (see :func:`match_triggers`)."""
    return match_triggers(input_ids, triggers, word_start=word_start) >= 0


# -- prompts -------------------------------------------------------------------------------------
_PROMPT_FIELDS = re.compile(r"\{text\}|\{mask\}")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A prompt around each text, e.g. ``"{text} It was {mask} ."`` (BToP, scanning at the mask).

    One filling rule everywhere: a single pass over the template replaces each
    literal ``{text}`` by the text and each ``{mask}`` by the mask token.  The
    text is inserted verbatim and never re-read (braces, even a ``{mask}``, in
    a user's text stay as they are), and any other brace in the template stays
    as written (no ``str.format`` fields or ``{{`` escapes).
    """

    template: str

    def __post_init__(self):
        if not isinstance(self.template, str):
            raise TypeError(f"prompt_template must be a string, got {type(self.template).__name__}")
        if "{text}" not in self.template or "{mask}" not in self.template:
            raise ValueError(f"prompt_template must contain {{text}} and {{mask}}, got {self.template!r}")

    @classmethod
    def of(cls, template: "PromptTemplate | str") -> "PromptTemplate":
        return template if isinstance(template, PromptTemplate) else cls(template)

    def fill(self, text: str, mask_token: str) -> str:
        return _PROMPT_FIELDS.sub(lambda m: text if m.group(0) == "{text}" else mask_token, self.template)

    def filler(self, tokenizer):
        """``text -> prompt`` with ``tokenizer``'s mask token (``""`` for a tokenizer without one)."""
        mask = tokenizer.mask_token or ""
        return lambda text: self.fill(text, mask)

    def token_count(self, tokenizer) -> int:
        """Tokens the prompt adds to a text: the template filled with ``""`` and the mask token, no specials."""
        return len(tokenizer(self.fill("", tokenizer.mask_token or ""), add_special_tokens=False)["input_ids"])


# -- fitting texts so that inserted triggers survive truncation ----------------------------------
def fit_for_insertion(tokenizer, texts: Sequence[str], max_length: int, *, insert_num: int = 0, triggers=(),
                      prompt: "PromptTemplate | str | None" = None, uncuttable: str = "drop") -> list[str]:
    """``texts`` cut at word boundaries so that, after inserting triggers and filling a prompt, nothing is truncated.

    Budget for the text = ``max_length`` - the tokenizer's special tokens
    (:func:`patronus_ext.data.tokens.special_layout`) - ``insert_num`` x the widest
    trigger (``triggers``: words or token-id sequences, as :func:`trigger_ids`)
    - the prompt's own tokens (:meth:`PromptTemplate.token_count`).  A text whose
    first word alone exceeds the budget is dropped (``uncuttable="drop"``, and
    so are empty texts) or returned whole (``"keep"``: same order and length,
    the tokenizer truncates it).  ``ValueError`` when nothing is left for text.
    """
    from .tokens import special_layout

    if uncuttable not in ("drop", "keep"):
        raise ValueError(f"uncuttable must be 'drop' or 'keep', got {uncuttable!r}")
    if isinstance(insert_num, bool) or not isinstance(insert_num, int) or insert_num < 0:
        raise ValueError(f"insert_num must be an integer >= 0, got {insert_num!r}")
    texts = list(texts)
    prefix, suffix = special_layout(tokenizer)
    widest = max((len(ids) for ids in trigger_ids(tokenizer, triggers)), default=0) if len(triggers) else 0
    prompt_tokens = PromptTemplate.of(prompt).token_count(tokenizer) if prompt is not None else 0
    fixed = prefix + suffix + insert_num * widest + prompt_tokens
    if max_length - fixed < 1:
        raise ValueError(f"special tokens ({prefix + suffix}) + triggers ({insert_num} x {widest}) + prompt "
                         f"({prompt_tokens}) = {fixed} tokens, as long as or longer than max_length={max_length}: "
                         "no room left for the text")
    cut = fit_texts(tokenizer, texts, max_length - fixed)
    if uncuttable == "drop":
        return [c for c in cut if c]
    return [c or text for c, text in zip(cut, texts)]


@dataclasses.dataclass
class TriggeredBatch:
    """A batch with triggers inserted; masks mark where each trigger sub-token sits."""

    input_ids: torch.Tensor       # [B, L']
    attention_mask: torch.Tensor  # [B, L']
    trigger_slot: torch.Tensor    # [B, L'] sub-token index t of the trigger at that position, -1 elsewhere
    gaps: torch.Tensor            # [B, insert_num] insertion gaps used (content-token indices)

    @property
    def trigger_mask(self) -> torch.Tensor:
        return self.trigger_slot >= 0


def sample_gaps(attention_mask: torch.Tensor, insert_num: int, prefix: int, suffix: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Random insertion gaps ``[B, insert_num]``, sorted, each in ``[prefix, length - suffix]``.

    A gap ``p`` means "before the token at index ``p``" of the unpadded row.
    """
    if insert_num < 1:
        raise ValueError(f"insert_num must be >= 1, got {insert_num}")
    lengths = attention_mask.sum(1)  # assumes right padding (our tokenize() pads right for encoders)
    lo = torch.full_like(lengths, prefix)
    hi = (lengths - suffix).clamp_min(prefix)
    u = torch.rand((attention_mask.shape[0], insert_num), generator=generator,
                   device="cpu").to(attention_mask.device)
    gaps = lo.unsqueeze(1) + (u * (hi - lo + 1).unsqueeze(1)).floor().to(torch.long)
    gaps = torch.minimum(gaps, hi.unsqueeze(1))
    return gaps.sort(dim=1).values


def insert_token_triggers(input_ids: torch.Tensor, attention_mask: torch.Tensor, trigger_ids: torch.Tensor,
                          insert_num: int = 3, *, prefix: int = 1, suffix: int = 1,
                          pad_id: int = 0, gaps: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> TriggeredBatch:
    """Insert ``trigger_ids[b]`` (``[B, T]``, ``-1`` padded) ``insert_num`` times into each row.

    Rows must be right-padded.  ``prefix``/``suffix``: special tokens at the start
    and end of each row that stay in place (``ModelAdapter.special_prefix/suffix``).
    Pass ``gaps`` from an earlier call to put other triggers at the same places.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids and attention_mask must be the same [B, L] shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if trigger_ids.dim() == 1:
        trigger_ids = trigger_ids.unsqueeze(1)
    if trigger_ids.dim() != 2 or trigger_ids.shape[0] != input_ids.shape[0]:
        raise ValueError(f"trigger_ids must be [B, T] with B = {input_ids.shape[0]}, got {tuple(trigger_ids.shape)}")
    device = input_ids.device
    trigger_ids = trigger_ids.to(device)
    if bool((trigger_ids[:, 0] < 0).any()):
        raise ValueError("every trigger needs at least one token (trigger_ids[:, 0] must be >= 0)")
    if gaps is None:
        gaps = sample_gaps(attention_mask, insert_num, prefix, suffix, generator)
    gaps = gaps.to(device)
    batch, length = input_ids.shape
    width = trigger_ids.shape[1]
    n_ins = gaps.shape[1]
    total = length + n_ins * width

    # Original token j moves right by `width` for every insertion at a gap <= j.
    positions = torch.arange(length, device=device)
    shift = (gaps.unsqueeze(1) <= positions.view(1, -1, 1)).sum(2) * width  # [B, L]
    new_pos = positions.unsqueeze(0) + shift
    # Insertion m (gaps sorted) starts at gap_m + m * width.
    starts = gaps + torch.arange(n_ins, device=device).unsqueeze(0) * width  # [B, n_ins]
    slot = torch.arange(width, device=device)
    trig_pos = (starts.unsqueeze(2) + slot.view(1, 1, -1)).reshape(batch, -1)  # [B, n_ins * width]

    ids = torch.full((batch, total), pad_id, dtype=input_ids.dtype, device=device)
    mask = torch.zeros((batch, total), dtype=attention_mask.dtype, device=device)
    slots = torch.full((batch, total), -1, dtype=torch.long, device=device)
    ids.scatter_(1, new_pos, input_ids)
    mask.scatter_(1, new_pos, attention_mask)
    trig_tokens = trigger_ids.unsqueeze(1).expand(batch, n_ins, width).reshape(batch, -1)
    ids.scatter_(1, trig_pos, trig_tokens.clamp_min(0).to(ids.dtype))
    mask.scatter_(1, trig_pos, (trig_tokens >= 0).to(mask.dtype))
    slots.scatter_(1, trig_pos, torch.where(trig_tokens >= 0, slot.repeat(n_ins).expand(batch, -1),
                                            torch.full_like(trig_tokens, -1)))
    # Drop the -1 sub-token padding of shorter words and keep rows right-padded.
    keep = mask.bool() | (slots >= 0)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    ids, mask, slots = ids.gather(1, order), mask.gather(1, order), slots.gather(1, order)
    real = int(keep.sum(1).max())
    return TriggeredBatch(ids[:, :real], mask[:, :real], slots[:, :real], gaps)


def replace_trigger_tokens(batch: TriggeredBatch, trigger_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` with the triggers swapped for same-length ones (``[B, T]``), positions unchanged."""
    slot = batch.trigger_slot
    if trigger_ids.dim() == 1:
        trigger_ids = trigger_ids.unsqueeze(1)
    if int(slot.max()) >= trigger_ids.shape[1]:
        raise ValueError("replacement triggers are shorter than the inserted ones; re-insert with the same gaps")
    new = trigger_ids.to(batch.input_ids.device).gather(1, slot.clamp_min(0))
    if bool((new[slot >= 0] < 0).any()):
        raise ValueError("replacement triggers must fill every inserted slot (no -1 where a token was)")
    return torch.where(slot >= 0, new, batch.input_ids)
