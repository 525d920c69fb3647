"""A model in production with its checks riding on the normal forward.

:class:`MonitoredModel` wraps a Hugging Face model and tokenizer: each batch of
texts is tokenised once; the input monitor matches triggers on those very
token ids (no extra pass); the model's own forward serves the request and its
final hidden state gives the representation the output monitor compares with
the attack-vector bank.  Flagged inputs are then handled by the action:

* ``flag``: served as they are, with the decision saying why they were flagged;
* ``reject``: not served (``text_out`` is ``None``);
* ``strip``: the trigger words are removed and the cleaned text is served (one
  more forward, for the stripped rows only); if the output monitor still flags
  the cleaned text, it is rejected;
* ``purge`` (LMSanitator): word-deletion variants of a flagged text are scored
  in one batch per round and the first variant both monitors pass is served,
  with the removed words in the decision; none found: rejected.

Optional confirmation (``confirm_below``): a lexically flagged input is only
kept flagged when removing its trigger moves the representation (cosine of
the representations with and without the trigger below the value), one extra
pass for flagged rows only.  Calls are thread-safe: one lock serialises the
tokenizer and the forward, and every decision depends only on its own text.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..core.validation import check_choice, check_int, check_range
from ..lm.adapter import ModelAdapter
from .input import InputMonitor, TriggerMatch
from .output import OutputMonitor

ACTIONS = ("flag", "reject", "strip", "purge")
#: Longest input accepted, in characters (the tokenizer truncates to max_length tokens anyway).
MAX_TEXT_CHARS = 20_000


@dataclasses.dataclass
class Decision:
    """What the monitor decided for one input, and why."""

    flagged: bool
    action: str                          # pass | flag | reject | strip | purge | error
    reasons: list[dict[str, Any]]
    text_out: str | None                 # what is served; None when rejected or on error
    output: dict[str, Any] | None = None  # the served model output (label and probability), if it has a head
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"flagged": self.flagged, "action": self.action, "reasons": self.reasons, "text_out": self.text_out}
        if self.output is not None:
            out["output"] = self.output
        if self.error is not None:
            out["error"] = self.error
        return out


def check_text(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why ``text`` cannot be served (``None`` when it can)."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "text is empty"
    if len(text) > max_chars:
        return f"text is {len(text)} characters long; the limit is {max_chars}"
    if "\x00" in text:
        return "text holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: the tokenizer would fail the whole batch
        return f"text holds a lone surrogate at character {exc.start}"
    return None


def screen_texts(texts: Sequence[str], max_chars: int = MAX_TEXT_CHARS
                 ) -> tuple[list[str], list["Decision | None"], list[int]]:
    """The first step of every ``check``: ``(texts, decisions, usable)`` -- the texts as a list, an error
    decision for each one :func:`check_text` refuses (``None`` for the others, to be decided) and the indices
    of the usable ones.  A single string is refused: it would be read as a list of characters."""
    if isinstance(texts, str):
        raise TypeError("check expects a list of texts, got a single string")
    texts = list(texts)
    decisions: list[Decision | None] = [None] * len(texts)
    usable = []
    for i, text in enumerate(texts):
        problem = check_text(text, max_chars)
        if problem is None:
            usable.append(i)
        else:
            decisions[i] = Decision(False, "error", [], None, error=problem)
    return texts, decisions, usable


class MonitoredModel:
    """``check(texts) -> [Decision]``: the serving forward with input and output monitoring."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, input_monitor: InputMonitor | None = None,
                 output_monitor: OutputMonitor | None = None, action: str = "flag", max_length: int = 128,
                 position: str | None = None, confirm_below: float | None = None, purge_rounds: int = 3,
                 max_chars: int = MAX_TEXT_CHARS):
        if input_monitor is None and output_monitor is None:
            raise ValueError("a monitored model needs an input monitor, an output monitor or both")
        check_choice("action", action, ACTIONS)
        check_int("max_length", max_length)
        check_int("purge_rounds", purge_rounds)
        check_int("max_chars", max_chars)
        check_range("confirm_below", confirm_below, -1.0, 1.0, optional=True)
        if action == "strip" and input_monitor is None:
            raise ValueError("action 'strip' removes trigger words: it needs an input monitor (a scan report)")
        position = position or (output_monitor.position if output_monitor is not None else "auto")
        self.adapter = ModelAdapter(model, tokenizer, position=position or "auto", max_length=max_length)
        if output_monitor is not None and output_monitor.bank.dim != self.adapter.hidden_size:
            raise ValueError(f"the bank's vectors have d={output_monitor.bank.dim} but the model's hidden size is "
                             f"{self.adapter.hidden_size}: the bank belongs to another model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.input_monitor = input_monitor
        self.output_monitor = output_monitor
        self.action = action
        self.max_length = max_length
        self.confirm_below = confirm_below
        self.purge_rounds = purge_rounds
        self.max_chars = max_chars
        self._lock = threading.Lock()

    @classmethod
    def from_pipeline(cls, pipeline, **kwargs) -> "MonitoredModel":
        """Monitor the model and tokenizer of a ``transformers`` pipeline (its own forward is not used)."""
        return cls(pipeline.model, pipeline.tokenizer, **kwargs)

    # -- the serving forward -----------------------------------------------------------------
    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """``(encoding, representations [B, d], logits [B, C] or None)`` from one forward of the model."""
        enc = self.adapter.tokenize(list(texts), self.max_length)
        captured: list[torch.Tensor] = []
        # The backbone's final hidden state, caught on its way to the head: asking the model for every
        # layer's hidden states costs more than the checks themselves at batch 1.
        hook = self.adapter.backbone.register_forward_hook(
            lambda module, args, output: captured.append(output[0] if isinstance(output, tuple)
                                                         else output.last_hidden_state))
        try:
            out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], return_dict=True)
        finally:
            hook.remove()
        reps = self.adapter.select_position(captured[-1], enc["input_ids"], enc["attention_mask"]).float()
        logits = getattr(out, "logits", None)
        if logits is not None and logits.dim() != 2:
            logits = None  # token-level heads (MLM, causal LM): no single served label
        return enc, reps, logits

    def check(self, texts: Sequence[str]) -> list[Decision]:
        """Decisions for ``texts`` in order; an unusable text gets an error decision, the others go on."""
        texts, decisions, valid = screen_texts(texts, self.max_chars)
        if valid:
            chosen = [texts[i] for i in valid]
            with self._lock:
                for i, decision in zip(valid, self._decide(chosen, *self.forward(chosen))):
                    decisions[i] = decision
        return decisions  # type: ignore[return-value]

    __call__ = check

    def decide(self, texts: Sequence[str], encoding: dict[str, torch.Tensor], representations: torch.Tensor,
               logits: torch.Tensor | None = None) -> list[Decision]:
        """Decisions from a forward the caller already ran (``forward(texts)``'s outputs): for serving stacks
        that run the model themselves, so monitoring adds only the checks, never a second pass."""
        texts = list(texts)
        ids = encoding.get("input_ids") if isinstance(encoding, dict) else None
        if ids is None or "attention_mask" not in encoding:
            raise ValueError("encoding needs 'input_ids' and 'attention_mask' (as forward() returns them)")
        if ids.shape[0] != len(texts) or representations.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts but encoding has {ids.shape[0]} rows and representations "
                             f"{representations.shape[0]}")
        if representations.dim() != 2 or representations.shape[1] != self.adapter.hidden_size:
            raise ValueError(f"representations must be [B, {self.adapter.hidden_size}], got "
                             f"{list(representations.shape)}")
        with self._lock:
            return self._decide(texts, encoding, representations, logits)

    # -- internals ---------------------------------------------------------------------------
    def _decide(self, texts: list[str], enc: dict[str, torch.Tensor], reps: torch.Tensor,
                logits: torch.Tensor | None) -> list[Decision]:
        reasons: list[list[dict[str, Any]]] = [[] for _ in texts]
        lexical = [False] * len(texts)
        matches: list[list[TriggerMatch]] = [[] for _ in texts]
        if self.input_monitor is not None:
            hits = self.input_monitor.match(enc["input_ids"], enc["attention_mask"])
            matches = self.input_monitor.matches(hits)
            lexical = [bool(m) for m in matches]
            shifts: dict[int, float] = {}
            if self.confirm_below is not None and any(lexical):
                lexical, shifts = self._confirm(texts, reps, lexical)
            for i, found in enumerate(matches):
                if lexical[i]:
                    extra = {"shift_cos": shifts[i]} if i in shifts else {}
                    reasons[i] += [{"kind": "trigger", **m.to_dict(), **extra} for m in found]
        semantic = [False] * len(texts)
        if self.output_monitor is not None:
            check = self.output_monitor.check(reps)
            semantic = check.flagged.tolist()
            for i, flagged in enumerate(semantic):
                if flagged:
                    reasons[i].append(self._vector_reason(float(check.score[i]), int(check.index[i])))
        out = []
        for i, text in enumerate(texts):
            flagged = lexical[i] or semantic[i]
            served = _served(logits, i)
            if not flagged:
                out.append(Decision(False, "pass", [], text, served))
            elif self.action == "flag":
                out.append(Decision(True, "flag", reasons[i], text, served))
            elif self.action == "reject":
                out.append(Decision(True, "reject", reasons[i], None))
            else:
                out.append(None)  # strip / purge below, in one batch per step
        pending = [i for i, d in enumerate(out) if d is None]
        if pending:
            fix = self._strip if self.action == "strip" else self._purge
            for i, decision in zip(pending, fix([texts[i] for i in pending], [reasons[i] for i in pending],
                                                [lexical[i] for i in pending])):
                out[i] = decision
        return out

    def _vector_reason(self, score: float, index: int) -> dict[str, Any]:
        bank = self.output_monitor.bank
        return {"kind": "attack_vector", "mode": self.output_monitor.mode, "score": score,
                "threshold": self.output_monitor.threshold, "vector": index,
                "label": bank.labels[index] if 0 <= index < len(bank) else None}

    def _confirm(self, texts, reps, lexical) -> tuple[list[bool], dict[int, float]]:
        """Keep a lexical flag only where removing the trigger moves the representation."""
        rows = [i for i, hit in enumerate(lexical) if hit]
        stripped = self.input_monitor.strip([texts[i] for i in rows], self.max_length)
        kept, shifts = list(lexical), {}
        usable = [(i, s) for i, s in zip(rows, stripped) if s.strip()]
        if usable:
            _, clean_reps, _ = self.forward([s for _, s in usable])
            cos = F.cosine_similarity(reps[[i for i, _ in usable]], clean_reps, dim=1)
            for (i, _), value in zip(usable, cos.tolist()):
                shifts[i] = value
                kept[i] = value < self.confirm_below
        return kept, shifts

    def _passes(self, texts: list[str]) -> tuple[list[bool], torch.Tensor, torch.Tensor | None, list[float]]:
        """Whether each text passes both monitors; its representations, logits and output scores."""
        enc, reps, logits = self.forward(texts)
        ok = [True] * len(texts)
        scores = [float("nan")] * len(texts)
        if self.input_monitor is not None:
            ok = [not f for f in self.input_monitor.flags(enc["input_ids"], enc["attention_mask"]).tolist()]
        if self.output_monitor is not None:
            check = self.output_monitor.check(reps)
            scores = check.score.tolist()
            ok = [a and not b for a, b in zip(ok, check.flagged.tolist())]
        return ok, reps, logits, scores

    def _strip(self, texts, reasons, lexical) -> list[Decision]:
        cleaned = self.input_monitor.strip(texts, self.max_length)
        out: list[Decision | None] = [None] * len(texts)
        servable = [i for i, c in enumerate(cleaned) if c.strip()]
        for i in range(len(texts)):
            if i not in servable:
                out[i] = Decision(True, "reject", reasons[i] + [{"kind": "strip", "detail": "nothing left"}], None)
        if servable:
            ok, _, logits, _ = self._passes([cleaned[i] for i in servable])
            for j, i in enumerate(servable):
                if ok[j]:
                    out[i] = Decision(True, "strip", reasons[i], cleaned[i], _served(logits, j))
                else:
                    out[i] = Decision(True, "reject", reasons[i] + [{"kind": "strip",
                                                                     "detail": "still flagged after stripping"}], None)
        return out  # type: ignore[return-value]

    def _purge(self, texts, reasons, lexical) -> list[Decision]:
        return [self._purge_one(text, why) for text, why in zip(texts, reasons)]

    def _purge_one(self, text: str, reasons: list[dict]) -> Decision:
        """Greedy word deletion: each round scores every one-word deletion in one batch."""
        words = text.split()
        removed: list[str] = []
        for _ in range(self.purge_rounds):
            if len(words) < 2:
                break
            variants = [" ".join(words[:j] + words[j + 1:]) for j in range(len(words))]
            ok, _, logits, scores = self._passes(variants)
            if any(ok):
                j = ok.index(True)
                removed.append(words[j])
                return Decision(True, "purge", reasons + [{"kind": "purge", "removed": removed}], variants[j],
                                _served(logits, j))
            # No single deletion passes: drop the word whose removal lowers the output score most, go on.
            finite = [(s, j) for j, s in enumerate(scores) if s == s]
            if not finite:
                break
            j = min(finite)[1]
            removed.append(words[j])
            words = words[:j] + words[j + 1:]
        return Decision(True, "reject", reasons + [{"kind": "purge", "detail": "no deletion passes the monitors",
                                                    "tried_removing": removed}], None)


def _served(logits: torch.Tensor | None, row: int) -> dict[str, Any] | None:
    if logits is None:
        return None
    probs = logits[row].float().softmax(-1)
    label = int(probs.argmax())
    return {"label": label, "probability": float(probs[label])}
