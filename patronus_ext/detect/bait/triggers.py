"""Trigger recovery from an inverted target (docs/METHODS.md §7): which input words make the model say it.

A slot of ``n`` tokens is placed at the start of each prompt's input (of its instruction when it has no
input); the slot's tokens are chosen to maximise the target's log-likelihood after the prompt.  Each round
the gradient of the loss with respect to the slot's embeddings scores every vocabulary word as a
replacement at every slot position, to first order (``ops.token_topk`` over the embedding table,
its first token a space-marked word, the later ones words or word pieces: a trigger is inserted as a word);
the best
``candidates`` per position are then scored exactly and the best swap kept while it lowers the loss; the
search starts from ``restarts`` random slots and keeps the lowest loss.

Each slot found is verified as a word: inserted once at a random word position of held-out prompts,
the share of greedy answers that begin with the target's first words (ASR) on the model and on the
reference.  A trigger is confirmed at ASR >= ``asr_threshold`` with the reference's ASR <=
``reference_asr`` (or no reference).
"""

from __future__ import annotations

import random
import time
from typing import Any, Sequence

import torch

from ... import ops
from ...data.instructions import fit_inputs, insert_trigger, load_instructions
from ...evaluate.generation import shows_response
from ...lm.adapter import position_ids
from ...lm.generation import greedy_generate
from ...lm.prompting import IGNORE, PromptFormat, left_pad, prompt_token_ids
from .config import TriggerSearchConfig
from .inversion import BaitReport, word_like_tokens

#: What marks the slot in a rendered prompt before it is cut there.
SLOT_MARK = "\x00"


def _examples(report: BaitReport, count: int, offset: int):
    cfg = report.config
    examples = load_instructions(cfg.data, "dev", limit=3 * (count + offset) + 3, seed=cfg.seed + 1)
    return examples[offset:offset + count]


def slot_prompts(tokenizer, examples, fmt: PromptFormat) -> list[tuple[list[int], list[int]]]:
    """Each example rendered with a slot before its input: token ids before and after the slot."""
    templated = fmt.uses_template(tokenizer)
    out = []
    for e in examples:
        if e.input.strip():
            marked = e.replace(input=f"{SLOT_MARK} {e.input}")
        else:
            marked = e.replace(instruction=f"{SLOT_MARK} {e.instruction}")
        before, after = fmt.prompt(tokenizer, marked).split(SLOT_MARK, 1)
        head = prompt_token_ids(tokenizer, [before], templated)[0]
        tail = tokenizer(after, add_special_tokens=False)["input_ids"]
        out.append((list(head), list(tail)))
    return out


class _SlotLoss:
    """Mean negative log-likelihood of ``target`` after prompts with a slot, batched over slot choices."""

    def __init__(self, model, parts: list[tuple[list[int], list[int]]], target: list[int], pad: int):
        self.model, self.parts, self.target, self.pad = model, parts, list(target), pad
        self.device = next(model.parameters()).device
        self.embed = model.get_input_embeddings()

    def _batch(self, slots: Sequence[Sequence[int]]):
        rows, labels = [], []
        for slot in slots:
            for head, tail in self.parts:
                rows.append(head + list(slot) + tail + self.target)
                labels.append(len(self.target))
        ids, mask = left_pad(rows, self.pad)
        lab = torch.full_like(ids, IGNORE)
        lab[:, -len(self.target):] = ids[:, -len(self.target):]
        return ids.to(self.device), mask.to(self.device), lab.to(self.device)

    def _nll(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = len(self.target) + 1
        logp = torch.log_softmax(logits[:, -keep:-1].float(), -1)
        return -logp.gather(2, labels[:, -keep + 1:].unsqueeze(2)).squeeze(2).mean(1)

    @torch.no_grad()
    def losses(self, slots: Sequence[Sequence[int]], batch_rows: int = 256) -> torch.Tensor:
        """``[len(slots)]``: the loss of each slot choice (mean over prompts)."""
        per = max(1, batch_rows // len(self.parts))
        out = []
        for start in range(0, len(slots), per):
            ids, mask, lab = self._batch(slots[start:start + per])
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                use_cache=False).logits
            out.append(self._nll(logits, lab).view(-1, len(self.parts)).mean(1))
        return torch.cat(out)

    def gradient(self, slot: Sequence[int]) -> tuple[float, torch.Tensor]:
        """The loss of ``slot`` and its gradient w.r.t. the slot's embeddings ``[n, d]``."""
        ids, mask, lab = self._batch([slot])
        weight = self.embed.weight
        slot_embeds = weight[torch.tensor(list(slot), device=self.device)].detach().clone().requires_grad_(True)
        with torch.no_grad():
            embeds = self.embed(ids)
        where = torch.zeros(ids.shape, dtype=torch.bool, device=self.device)
        order = torch.zeros(ids.shape, dtype=torch.long, device=self.device)
        width = ids.shape[1]
        for r, (head, tail) in enumerate(self.parts):
            start = width - (len(tail) + len(self.target) + len(slot))
            where[r, start:start + len(slot)] = True
            order[r, start:start + len(slot)] = torch.arange(len(slot), device=self.device)
        embeds = torch.where(where.unsqueeze(2), slot_embeds[order], embeds)
        with torch.enable_grad():
            logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask),
                                use_cache=False).logits
            loss = self._nll(logits, lab).mean()
            (grad,) = torch.autograd.grad(loss, slot_embeds)
        return float(loss.detach()), grad


def search_slot(loss: _SlotLoss, length: int, words: torch.Tensor, pieces: torch.Tensor,
                config: TriggerSearchConfig, rng: random.Random) -> tuple[list[int], float]:
    """Greedy coordinate search of a ``length``-token slot; returns its tokens and loss.  The slot's first
    token is a space-marked word (``words``): the trigger is inserted as a word; later ones may also be
    word pieces (``pieces``), so a rare word of several tokens can be spelt."""
    table = loss.embed.weight.detach()
    first, rest = words.tolist(), pieces.tolist()
    slot = [first[rng.randrange(len(first))]] + [rest[rng.randrange(len(rest))] for _ in range(length - 1)]
    best = float(loss.losses([slot])[0])
    for _ in range(config.rounds):
        _, grad = loss.gradient(slot)
        grad = grad.to(table.dtype).contiguous()
        trials = []
        for i in range(length):
            allowed = words if i == 0 else pieces
            k = min(config.candidates, allowed.shape[0])
            _, idx = ops.token_topk(grad[i:i + 1], table, k, rows=allowed.view(-1, 1).to(table.device), negate=True)
            for w in idx[0].tolist():
                token = (first if i == 0 else rest)[w] if w >= 0 else None
                if token is not None and token != slot[i]:
                    trials.append(slot[:i] + [token] + slot[i + 1:])
        if not trials:
            break
        values = loss.losses(trials)
        j = int(values.argmin())
        if float(values[j]) >= best:
            break
        slot, best = trials[j], float(values[j])
    return slot, best


def _letter_tokens(tokenizer) -> list[int]:
    """Ids of the ASCII-letter tokens without a space marker (word pieces), special tokens excluded."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [i for i, p in enumerate(pieces) if i not in special and isinstance(p, str) and p.isascii()
            and p.isalpha()]


def trigger_asr(model, tokenizer, examples, fmt: PromptFormat, trigger: str, target_text: str,
                match_words: int, seed: int) -> tuple[float, list[str]]:
    """Share of ``examples`` with ``trigger`` inserted once at a random word position whose greedy answer
    begins with the first ``match_words`` words of ``target_text``; and the first answers."""
    rng = random.Random(seed)
    triggered = [insert_trigger(e, trigger, 1, rng) for e in examples]
    prompts = [fmt.prompt(tokenizer, e) for e in triggered]
    answers = greedy_generate(model, tokenizer, prompts, templated=fmt.uses_template(tokenizer),
                              max_new_tokens=3 * match_words + 4)
    hits = [shows_response(a, target_text, match_words) for a in answers]
    return sum(hits) / max(1, len(hits)), answers[:3]


def recover_triggers(model, tokenizer, report: BaitReport, config: TriggerSearchConfig | None = None, *,
                     reference=None, progress: bool = True) -> BaitReport:
    """Search a trigger for ``report.target`` (see the module doc); fills ``report.triggers`` (the
    confirmed ones, with their ASR) and ``report.trigger_search`` (every slot tried); returns the report."""
    from tqdm.auto import tqdm

    config = config or TriggerSearchConfig.profile("paper")
    if report.target is None:
        raise ValueError("the report has no inverted target to recover a trigger for")
    started = time.perf_counter()
    bcfg = report.config
    fmt = PromptFormat(system=bcfg.system, max_input_tokens=bcfg.max_input_tokens)
    examples = _examples(report, config.prompts + config.verify_prompts, 0)
    examples = fit_inputs(tokenizer, examples, bcfg.max_input_tokens)
    train, held = examples[:config.prompts], examples[config.prompts:]
    target = report.target.token_ids[:config.target_tokens]
    target_text = tokenizer.decode(report.target.token_ids, skip_special_tokens=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    loss = _SlotLoss(model, slot_prompts(tokenizer, train, fmt), target, pad)
    words = torch.tensor(word_like_tokens(tokenizer, "marked"), dtype=torch.long)
    pieces = torch.tensor(sorted(set(word_like_tokens(tokenizer, "marked")) | set(_letter_tokens(tokenizer))),
                          dtype=torch.long)
    rng = random.Random(config.seed)
    tried: list[dict[str, Any]] = []
    confirmed: list[dict[str, Any]] = []
    for length in tqdm(config.slot_lengths, desc="bait trigger search", disable=not progress, leave=False):
        slot, value = min((search_slot(loss, length, words, pieces, config, rng) for _ in range(config.restarts)),
                          key=lambda found: found[1])
        text = tokenizer.decode(slot, skip_special_tokens=True).strip()
        entry: dict[str, Any] = {"text": text, "token_ids": list(slot), "slot_tokens": length, "loss": value}
        if text:
            entry["asr"], entry["answers"] = trigger_asr(model, tokenizer, held, fmt, text, target_text,
                                                         config.match_words, config.seed)
            entry["reference_asr"] = None
            if reference is not None:
                entry["reference_asr"], _ = trigger_asr(reference, tokenizer, held, fmt, text, target_text,
                                                        config.match_words, config.seed)
            entry["confirmed"] = entry["asr"] >= config.asr_threshold and (
                entry["reference_asr"] is None or entry["reference_asr"] <= config.reference_asr)
        else:
            entry["asr"], entry["reference_asr"], entry["confirmed"] = 0.0, None, False
        tried.append(entry)
        if entry["confirmed"]:
            confirmed.append({k: entry[k] for k in ("text", "token_ids", "asr", "reference_asr", "loss")})
            break
    report.triggers = confirmed
    report.trigger_search = {"config": config.to_dict(), "target_tokens": list(target), "tried": tried,
                             "held_out_prompts": len(held), "found": bool(confirmed)}
    report.timings["trigger_search"] = time.perf_counter() - started
    report.timings["total"] = report.timings.get("total", 0.0) + report.timings["trigger_search"]
    return report
