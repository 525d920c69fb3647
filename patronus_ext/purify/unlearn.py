"""Detection-fed repair of an instruction-tuned causal LM (docs/METHODS.md §8): unlearn what a BAIT scan found.

A ``patronus scan --method bait`` report names the inverted target (the attacker's response) and, when the
trigger search confirmed some, the triggers.  :func:`unlearn` tunes the model on a small clean instruction
set, each step over three views of the same ``batch_size`` clean examples:

* **clean**: the example with its own answer (cross-entropy; holds CACC);
* **triggered**: a recovered trigger inserted like the attacks insert triggers (random word positions of the
  input), answered with what the *teacher* (the model itself, or a clean reference) answers to the same
  prompt WITHOUT the trigger, generated greedily once before training (cross-entropy): the trigger stops
  changing the answer;
* **target**: the same triggered prompt followed by the inverted target, whose tokens get the bounded
  unlikelihood ``-log(1 - p)``: it pushes the target down where the trigger makes it likely and vanishes as
  ``p`` falls, so the model is not taught to avoid the target's words everywhere.

**Target only** (no confirmed trigger): a *soft trigger* stands in for it.  A run of ``soft_tokens``
placeholder words (one rare vocabulary word repeated) is inserted like a trigger, and a forward hook on the
input embeddings replaces the placeholder's embeddings by learned vectors; the vectors are optimised first
(the model frozen, the one training loop) to make the model say the target on clean prompts, then frozen
and used as the trigger of the repair.  What the soft trigger reaches is the target's circuit, not the
attacker's exact words: how far that carries to the real trigger is measured, not assumed (METHODS §8).

Teacher answers that themselves begin with the target (the backdoor leaking onto clean prompts, or a
reference that happens to say it) are replaced by the example's own answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..data.instructions import InstructionExample, fit_inputs, insert_trigger
from ..evaluate.generation import shows_response
from ..lm import training
from ..lm.generation import greedy_generate
from ..lm.instruction_tuning import TuneLog, tune_selected
from ..lm.prompting import EncodedExample, PromptFormat, collate, encode_examples, response_token_logprobs
from .config import UnlearnConfig

#: ``p`` is clamped below 1 - this in ``-log(1 - p)``, so a target the model is sure of gives a large, finite loss.
_UNLIKELIHOOD_EPS = 1e-6


# -- the soft trigger (target only) ------------------------------------------------------------------
def placeholder_word(tokenizer, avoid: Sequence[int] = ()) -> tuple[str, int]:
    """A rare word of the vocabulary that is one token after a space, twice in a row too (``"x W W y"``):
    the soft trigger's placeholder.  Searched from the end of the vocabulary (late BPE merges are rare words);
    ``avoid``: ids that must not be used (the target's)."""
    banned = set(int(i) for i in avoid) | set(tokenizer.all_special_ids)
    for token_id in range(len(tokenizer) - 1, -1, -1):
        if token_id in banned:
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str) or piece[:1] not in ("\u0120", "\u2581"):
            continue
        word = piece[1:]
        if len(word) < 3 or not word.isascii() or not word.isalpha():
            continue
        ids = tokenizer(f"x {word} {word} y", add_special_tokens=False)["input_ids"]
        if ids.count(token_id) == 2 and tokenizer(f" {word}", add_special_tokens=False)["input_ids"] == [token_id]:
            return word, token_id
    raise ValueError("no placeholder word for a soft trigger in this vocabulary (a space-marked word that is one "
                     "token)")


class SoftTrigger(nn.Module):
    """``count`` learned input vectors that replace, in order, the embeddings of a placeholder token wherever
    it occurs (:meth:`active`); ``text`` is what to insert into a prompt (the placeholder word ``count`` times)."""

    def __init__(self, word: str, token_id: int, vectors: torch.Tensor):
        super().__init__()
        self.word, self.token_id = word, int(token_id)
        self.vectors = nn.Parameter(vectors.detach().clone())

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def text(self) -> str:
        return " ".join([self.word] * self.count)

    @contextlib.contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        """While inside: every forward of ``model`` sees the vectors at the placeholder's positions (the k-th
        placeholder of a row gets vector ``k mod count``)."""
        def hook(module, args, output):
            ids = args[0] if args else None
            if ids is None or not bool((ids == self.token_id).any()):
                return output
            mask = ids == self.token_id
            order = (mask.long().cumsum(1) - 1).clamp_min(0) % self.count
            soft = self.vectors.to(output.dtype)[order]
            return torch.where(mask.unsqueeze(-1), soft, output)

        handle = model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


@dataclasses.dataclass
class SoftTriggerLog(training.TrainingLog):
    """The soft trigger's optimisation: placeholder word, vectors, and the target's mean token probability on
    the optimisation prompts before and after."""

    word: str
    tokens: int
    target_prob_before: float
    target_prob_after: float


def _target_rows(tokenizer, examples: Sequence[InstructionExample], fmt: PromptFormat,
                 target_ids: Sequence[int]) -> list[EncodedExample]:
    """Each example's prompt followed by the target's tokens (no end of turn: the target is what the answer
    begins with)."""
    encoded = encode_examples(tokenizer, [e.replace(output="") for e in examples], fmt)
    return [EncodedExample(e.prompt_ids, list(target_ids)) for e in encoded]


def _mean_target_prob(model, rows, pad, device) -> float:
    with torch.no_grad():
        logp, valid = response_token_logprobs(model, collate(rows, pad, device))
    return float((logp.exp() * valid).sum() / valid.sum().clamp_min(1))


def learn_soft_trigger(model: nn.Module, tokenizer, examples: Sequence[InstructionExample], target_ids: Sequence[int],
                       config: UnlearnConfig, *, progress: bool = True) -> tuple[SoftTrigger, SoftTriggerLog]:
    """A soft trigger that makes the frozen ``model`` say the target after ``examples``' prompts: its vectors
    start as the embeddings of random vocabulary tokens and minimise the target's token-mean cross-entropy
    (``soft_steps`` steps of ``soft_batch`` prompts at ``soft_lr``, constant; the one training loop)."""
    fmt = config.prompt_format()
    word, token_id = placeholder_word(tokenizer, target_ids)
    embeddings = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(config.seed)
    start = torch.randint(0, embeddings.shape[0], (config.soft_tokens,), generator=gen)
    soft = SoftTrigger(word, token_id, embeddings[start.to(embeddings.device)].float())
    rng = random.Random(config.seed + 11)
    triggered = [insert_trigger(e, soft.text, 1, rng) for e in examples]
    rows = _target_rows(tokenizer, triggered, fmt, target_ids)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = training.epoch_batches(len(rows), config.soft_batch, random.Random(config.seed + 12))
    was = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        with soft.active(model):
            before = _mean_target_prob(model, rows[:config.soft_batch * 2], pad, device)

            def step_loss(step: int):
                logp, valid = response_token_logprobs(model, collate([rows[i] for i in next(order)], pad, device))
                return -logp.sum() / valid.sum().clamp_min(1), {}

            settings = training.OptimizerSettings(steps=config.soft_steps, lr=config.soft_lr, schedule="constant",
                                                  log_every=min(10, config.soft_steps))
            run = training.train([soft.vectors], step_loss, settings, desc="unlearn: soft trigger",
                                 progress=progress)
            after = _mean_target_prob(model, rows[:config.soft_batch * 2], pad, device)
    finally:
        for p in model.parameters():
            p.requires_grad_(was[id(p)])
    soft.vectors.requires_grad_(False)
    return soft, SoftTriggerLog.of(run, word=word, tokens=config.soft_tokens, target_prob_before=before,
                                   target_prob_after=after)


# -- the repair --------------------------------------------------------------------------------------
def teacher_answers(teacher: nn.Module, tokenizer, examples: Sequence[InstructionExample], fmt: PromptFormat,
                    target_text: str, config: UnlearnConfig, *, progress: bool = False
                    ) -> tuple[list[str], int]:
    """The teacher's greedy answers to ``examples`` (untriggered), batched, once; an answer that is empty or
    begins with the target (its first ``match_words`` words) is replaced by the example's own answer.
    Returns the answers and how many were replaced."""
    tokens = config.answer_tokens or fmt.max_response_tokens
    answers = greedy_generate(teacher, tokenizer, [fmt.prompt(tokenizer, e) for e in examples],
                              templated=fmt.uses_template(tokenizer), max_new_tokens=tokens, progress=progress,
                              desc="unlearn: teacher answers")
    out, replaced = [], 0
    for example, answer in zip(examples, answers):
        if not answer.strip() or shows_response(answer, target_text, config.match_words):
            out.append(example.output)
            replaced += 1
        else:
            out.append(answer)
    return out, replaced


def unlearn_loss(model: nn.Module, batch: dict[str, torch.Tensor], rows: int, weight: float
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``CE(clean) + CE(triggered → teacher answer) + weight · mean(-log(1 - p(target token)))`` over a batch of
    ``3·rows`` rows ordered ``[clean…, triggered…, triggered + target…]``; each CE is the token mean of its rows,
    the unlikelihood the mean over the target's tokens."""
    logp, valid = response_token_logprobs(model, batch)
    count = valid.sum(1)
    ce_clean = -logp[:rows].sum() / count[:rows].sum().clamp_min(1)
    ce_triggered = -logp[rows:2 * rows].sum() / count[rows:2 * rows].sum().clamp_min(1)
    target_logp = logp[2 * rows:].clamp_max(float(torch.log(torch.tensor(1.0 - _UNLIKELIHOOD_EPS))))
    target_valid = valid[2 * rows:]
    unlikely = -torch.log1p(-target_logp.exp())
    unlikelihood = (unlikely * target_valid).sum() / target_valid.sum().clamp_min(1)
    target_prob = (target_logp.exp() * target_valid).sum() / target_valid.sum().clamp_min(1)
    return ce_clean + ce_triggered + weight * unlikelihood, {
        "ce_clean": ce_clean, "ce_triggered": ce_triggered, "unlikelihood": unlikelihood,
        "target_prob": target_prob}


@dataclasses.dataclass
class UnlearnResult:
    """What the repair did: the triggers it trained against (recovered words, or the soft trigger), the
    teacher, the data and the training log."""

    target: str
    triggers: list[str]
    soft_trigger: SoftTriggerLog | None
    teacher: str
    clean_samples: int
    teacher_answers_replaced: int
    training: TuneLog
    timings: dict[str, float]
    samples: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["training"] = self.training.to_dict()
        out["soft_trigger"] = None if self.soft_trigger is None else self.soft_trigger.to_dict()
        return out


def unlearn(model: nn.Module, tokenizer, target_ids: Sequence[int], target_text: str, triggers: Sequence[str],
            clean: Sequence[InstructionExample], config: UnlearnConfig | None = None, *,
            teacher: nn.Module | None = None, teacher_name: str = "the model itself",
            progress: bool = True) -> tuple[nn.Module, UnlearnResult]:
    """Repair ``model`` in place against the inverted target (``target_ids`` / ``target_text``) and the
    recovered ``triggers`` (empty: target only, a learned soft trigger stands in) on ``clean`` instruction
    examples (``config.clean_samples`` of them); ``teacher`` answers the untriggered prompts (None: ``model``
    before any change).  Returns the model (eval mode) and what was done."""
    config = config or UnlearnConfig()
    fmt = config.prompt_format()
    timings: dict[str, float] = {}
    clean = fit_inputs(tokenizer, list(clean)[:config.clean_samples], fmt.max_input_tokens)
    if len(clean) < config.clean_samples:
        raise ValueError(f"unlearning needs {config.clean_samples} clean samples, got {len(clean)}")
    if not target_ids:
        raise ValueError("unlearning needs the inverted target's token ids")
    t0 = time.perf_counter()
    answers, replaced = teacher_answers(teacher if teacher is not None else model, tokenizer, clean, fmt,
                                        target_text, config, progress=progress)
    timings["teacher_answers"] = time.perf_counter() - t0
    soft, soft_log = None, None
    if not triggers:
        t0 = time.perf_counter()
        soft, soft_log = learn_soft_trigger(model, tokenizer, clean, target_ids, config, progress=progress)
        timings["soft_trigger"] = time.perf_counter() - t0
        words = [soft.text]
    else:
        words = list(triggers)
    rng = random.Random(config.seed + 21)
    triggered = [insert_trigger(e, words[i % len(words)], config.insert_num, rng) for i, e in enumerate(clean)]
    plain_rows = encode_examples(tokenizer, clean, fmt)
    answer_rows = encode_examples(tokenizer, [t.replace(output=a) for t, a in zip(triggered, answers)], fmt)
    target_rows = _target_rows(tokenizer, triggered, fmt, target_ids)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = training.epoch_batches(len(clean), config.batch_size, random.Random(config.seed + 22))

    def step_loss(step: int):
        chosen = next(order)
        rows = [plain_rows[i] for i in chosen] + [answer_rows[i] for i in chosen] + [target_rows[i] for i in chosen]
        return unlearn_loss(model, collate(rows, pad, device), len(chosen), config.unlikelihood_weight)

    steps = config.total_steps(len(clean))
    settings = config.optimizer_settings(steps, log_every=min(10, steps))
    t0 = time.perf_counter()
    with soft.active(model) if soft is not None else contextlib.nullcontext():
        run, trained = tune_selected(model, config, step_loss, settings, desc="unlearn", progress=progress)
    timings["training"] = time.perf_counter() - t0
    samples = [{"input": t.input or t.instruction, "teacher_answer": a} for t, a in list(zip(triggered, answers))[:3]]
    result = UnlearnResult(target=target_text, triggers=list(triggers), soft_trigger=soft_log, teacher=teacher_name,
                           clean_samples=len(clean), teacher_answers_replaced=replaced,
                           training=TuneLog.of(run, examples=len(clean), trainable_parameters=trained),
                           timings=timings, samples=samples)
    return model.eval(), result
