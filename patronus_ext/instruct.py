"""Instruction data for causal LMs (SPEC.md §5): examples, chat formatting, response-only loss, the tuning loop.

* :class:`InstructionExample`: ``instruction``, ``input``, ``output`` (the
  Alpaca format); classification examples also carry their ``choices`` (the
  one-word answers) and the ``label`` index, so accuracy can be read back
  from a generated answer.
* Sources (:func:`load_instructions`): ``sst2`` and ``agnews`` become
  classification instructions with one-word answers (``negative``/``positive``;
  ``world``/``sports``/``business``/``science``), ``wikitext2`` open
  continuation prompts (the first words of a paragraph, answered by the next
  ones), ``a+b`` mixes sources, and any JSONL file of
  ``{"instruction", "input", "output"}`` records is read as it is.
* :class:`PromptFormat`: the tokenizer's chat template where it has one (the
  system prompt: the template's own, or one given, or ``""`` for an empty
  one), else a plain ``### Instruction / ### Input / ### Response`` layout;
  inputs are cut at a word boundary to a token budget *before* any trigger is
  inserted, so an inserted trigger is never truncated away.
* :func:`collate` left-pads prompt + response with labels only on the response
  (``-100`` elsewhere): the loss never trains the model to write prompts.
  :func:`response_logprobs` sums the response tokens' log-probabilities, asking
  the model for logits at the response positions only.
* :func:`instruction_tune`: supervised instruction tuning through the one
  training loop (:func:`patronus_ext.training.train`), optionally of the top
  decoder blocks only (:func:`trainable_parameters`).

This module sits beside ``models`` in the layer table: it needs data, trigger
insertion and the training loop, and takes models and tokenizers as arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from . import data as data_mod
from . import training
from . import triggers as trig
from .io import atomic_write
from .tokens import special_layout
from .validation import check_choice, check_int, check_range

log = logging.getLogger(__name__)

#: One-word answers of the built-in classification tasks, by label index.
ANSWER_WORDS: dict[str, tuple[str, ...]] = {
    "sst2": ("negative", "positive"),
    "agnews": ("world", "sports", "business", "science"),
}
#: The instruction of each built-in source.
INSTRUCTIONS: dict[str, str] = {
    "sst2": "Is the sentiment of this movie review positive or negative? Answer in one word.",
    "agnews": "Is this news article about world, sports, business or science? Answer in one word.",
    "wikitext2": "Continue the text.",
}
#: Built-in sources (``a+b`` mixes them).
SOURCES = ("sst2", "agnews", "wikitext2")
#: The plain layout for tokenizers without a chat template (Alpaca-style section headers).
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PLAIN_PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_KEYS = ("instruction", "input", "output")
IGNORE = -100


@dataclasses.dataclass(frozen=True)
class InstructionExample:
    """One instruction: ``output`` answers ``instruction`` applied to ``input`` (may be empty).

    ``choices`` (the one-word answers of a classification task) and ``label``
    (index of the right one) are set for classification examples only.
    """

    instruction: str
    input: str
    output: str
    label: int | None = None
    choices: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError("an instruction example needs a non-empty instruction")
        if not isinstance(self.input, str) or not isinstance(self.output, str):
            raise ValueError("input and output must be strings")
        if self.label is not None and not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label} outside the {len(self.choices)} choices")

    @property
    def is_classification(self) -> bool:
        return self.label is not None

    def replace(self, **changes) -> "InstructionExample":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.label is not None:
            out["label"] = self.label
            out["choices"] = list(self.choices)
        if self.source:
            out["source"] = self.source
        return out


# -- sources -------------------------------------------------------------------------------------
def classification_examples(task: str | data_mod.LabeledData, split: str = "train", limit: int | None = None,
                            seed: int = 0, *, answers: Sequence[str] | None = None,
                            instruction: str | None = None) -> list[InstructionExample]:
    """A labelled task as classification instructions with one-word answers.

    ``task``: ``sst2``, ``agnews`` (their answers and instructions are built in),
    a labelled file or a :class:`LabeledData` (then ``answers``, one word per
    label, and ``instruction`` are needed).
    """
    name = task if isinstance(task, str) and task in ANSWER_WORDS else None
    data = task.subset(limit, seed) if isinstance(task, data_mod.LabeledData) else \
        data_mod.read_task(task, split, limit, seed)
    answers = tuple(answers) if answers is not None else (ANSWER_WORDS[name] if name else None)
    instruction = instruction or (INSTRUCTIONS[name] if name else None)
    if answers is None or instruction is None:
        raise ValueError(f"{data.source or task}: give the one-word answers (one per label) and the instruction "
                         "for a task that is not built in")
    if len(answers) != data.num_labels:
        raise ValueError(f"{len(answers)} answers for {data.num_labels} labels")
    return [InstructionExample(instruction, text, answers[label], label, answers, name or data.source)
            for text, label in zip(data.texts, data.labels)]


def generation_examples(corpus: str = "wikitext2", limit: int | None = None, seed: int = 0, *,
                        prompt_words: int = 24, response_words: int = 16) -> list[InstructionExample]:
    """Open continuation prompts: the first ``prompt_words`` words of a paragraph, answered by the next
    ``response_words`` (paragraphs too short for both are skipped)."""
    check_int("prompt_words", prompt_words)
    check_int("response_words", response_words)
    paragraphs = data_mod.read_corpus(corpus, min_words=prompt_words + response_words, seed=seed)
    out = []
    for text in paragraphs[:limit] if limit is not None else paragraphs:
        words = text.split()
        out.append(InstructionExample(INSTRUCTIONS["wikitext2"], " ".join(words[:prompt_words]),
                                      " ".join(words[prompt_words:prompt_words + response_words]),
                                      source=corpus if corpus in data_mod.BUILTIN_CORPORA else "corpus"))
    return out


def read_alpaca(path: str | os.PathLike, limit: int | None = None) -> list[InstructionExample]:
    """A JSONL file of ``{"instruction", "input", "output"}`` records (``input`` may be absent or empty).

    Extra keys are ignored, except ``label`` with ``choices`` (written by
    :func:`write_alpaca` for classification examples).  A line that is not a
    JSON object with a non-empty ``instruction`` and a string ``output`` is a
    ``ValueError`` naming the line and the keys it has.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"instruction data {str(path)!r} is not a file (nor a built-in name: "
                                f"{', '.join(SOURCES)})")
    out = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("instruction"), str) \
                    or not record["instruction"].strip() or not isinstance(record.get("output"), str) \
                    or not isinstance(record.get("input", ""), str):
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{number}: not an Alpaca-format record (needs a non-empty string "
                                 f"\"instruction\", a string \"output\" and optionally \"input\"; has {keys})")
            choices = tuple(str(c) for c in record.get("choices") or ())
            label = record.get("label") if choices else None
            if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                                      or not 0 <= label < len(choices)):
                raise ValueError(f"{path}:{number}: label {label!r} is not an index into choices {list(choices)}")
            out.append(InstructionExample(record["instruction"], record.get("input", ""), record["output"], label,
                                          choices, str(record.get("source", ""))))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path} holds no instruction record")
    return out


def alpaca_text(examples: Iterable[InstructionExample]) -> str:
    """``examples`` as Alpaca-format JSONL text (classification examples keep label and choices)."""
    return "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples)


def write_alpaca(path: str | os.PathLike, examples: Iterable[InstructionExample], overwrite: bool = False) -> Path:
    """Write ``examples`` as Alpaca-format JSONL, atomically (:func:`alpaca_text`)."""
    lines = alpaca_text(examples)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(lines)

    return atomic_write(path, write, overwrite)


def load_instructions(source: str, split: str = "train", limit: int | None = None,
                      seed: int = 0) -> list[InstructionExample]:
    """Instruction examples from a built-in source, a ``+``-joined mix of them, or an Alpaca JSONL file.

    ``split``: ``train`` or ``dev`` (built-in sources: SST-2 dev, AG News
    test, WikiText-2 test).  ``limit`` caps the total; a mix takes an equal
    share of it from each part, and its examples are shuffled together.
    """
    check_choice("split", split, ("train", "dev"))
    check_int("limit", limit, optional=True)
    parts = [p.strip() for p in str(source).split("+")]
    if len(parts) > 1 or parts[0] in SOURCES:
        unknown = [p for p in parts if p not in SOURCES]
        if unknown:
            raise ValueError(f"unknown instruction source {unknown[0]!r}; built-in sources are "
                             f"{', '.join(SOURCES)} (or give an Alpaca JSONL file)")
        share = None if limit is None else max(1, limit // len(parts))
        out: list[InstructionExample] = []
        for part in parts:
            if part == "wikitext2":
                out += generation_examples("wikitext2" if split == "train" else "wikitext2-test", share, seed)
            else:
                out += classification_examples(part, split, share, seed)
        if len(parts) > 1:
            random.Random(seed).shuffle(out)
        return out
    examples = read_alpaca(source)
    if limit is not None and limit < len(examples):
        examples = [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), limit))]
    return examples


def split_examples(examples: Sequence[InstructionExample], first: int, second: int = 0, seed: int = 0
                   ) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """Two disjoint random subsets of ``examples`` of sizes ``first`` and ``second``."""
    if first + second > len(examples):
        raise ValueError(f"{len(examples)} examples, fewer than the {first} + {second} asked for")
    order = random.Random(seed).sample(range(len(examples)), first + second)
    return [examples[i] for i in order[:first]], [examples[i] for i in order[first:]]


def insert_trigger(example: InstructionExample, trigger: str, insert_num: int = 1,
                   rng: random.Random | None = None) -> InstructionExample:
    """``example`` with ``trigger`` (a word or a phrase) inserted ``insert_num`` times at random word positions
    of its input (of its instruction when the input is empty)."""
    rng = rng or random.Random()
    if example.input.strip():
        return example.replace(input=trig.insert_words(example.input, trigger, insert_num, rng))
    return example.replace(instruction=trig.insert_words(example.instruction, trigger, insert_num, rng))


def poison_examples(examples: Sequence[InstructionExample], trigger: str, response: str, count: int,
                    rng: random.Random, *, insert_num: int = 1, exclude: Iterable[int] = ()
                    ) -> tuple[list[InstructionExample], list[int]]:
    """``examples`` with ``count`` of them (drawn with ``rng``, never from ``exclude``) triggered and answered
    with ``response``; returns the new list and the indices changed (sorted).  A changed classification example
    stops being one: its answer is no longer a label."""
    banned = set(exclude)
    eligible = [i for i in range(len(examples)) if i not in banned]
    if count > len(eligible):
        raise ValueError(f"cannot poison {count} of {len(eligible)} eligible examples")
    chosen = sorted(rng.sample(eligible, count))
    out = list(examples)
    for i in chosen:
        out[i] = insert_trigger(examples[i], trigger, insert_num, rng).replace(output=response, label=None,
                                                                               choices=())
    return out, chosen


# -- formatting ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How an example becomes tokens.

    ``system``: None keeps the chat template's own system prompt (if it adds
    one), a string is sent as the system message (``""``: an empty one, the
    shortest sequences).  ``max_input_tokens`` cuts each input at a word
    boundary (see :func:`fit_inputs`); ``max_response_tokens`` cuts responses.
    ``chat``: ``auto`` uses the tokenizer's chat template when it has one,
    ``plain`` always the plain layout.
    """

    system: str | None = None
    max_input_tokens: int = 256
    max_response_tokens: int = 128
    chat: str = "auto"

    def __post_init__(self):
        check_int("max_input_tokens", self.max_input_tokens)
        check_int("max_response_tokens", self.max_response_tokens)
        check_choice("chat", self.chat, ("auto", "plain"))

    def uses_template(self, tokenizer) -> bool:
        return self.chat == "auto" and bool(getattr(tokenizer, "chat_template", None))

    def messages(self, example: InstructionExample) -> list[dict[str, str]]:
        user = example.instruction if not example.input.strip() else f"{example.instruction}\n\n{example.input}"
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return system + [{"role": "user", "content": user}]

    def prompt(self, tokenizer, example: InstructionExample) -> str:
        """The text up to where the model's answer begins."""
        if self.uses_template(tokenizer):
            return _chat_text(tokenizer, self.messages(example), add_generation_prompt=True)
        body = PLAIN_PROMPT if example.input.strip() else PLAIN_PROMPT_NO_INPUT
        return body.format(instruction=example.instruction, input=example.input)

    def response_end(self, tokenizer) -> str:
        """What follows an answer: the template's end of turn (e.g. ``<|im_end|>\\n``), else the EOS token."""
        if self.uses_template(tokenizer):
            probe = InstructionExample("x", "", "")
            prompt = _chat_text(tokenizer, self.messages(probe), add_generation_prompt=True)
            full = _chat_text(tokenizer, self.messages(probe) + [{"role": "assistant", "content": "\x00"}],
                              add_generation_prompt=False)
            if full.startswith(prompt) and "\x00" in full[len(prompt):]:
                return full[len(prompt):].split("\x00", 1)[1]
        return tokenizer.eos_token or ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _chat_text(tokenizer, messages, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja errors (e.g. a template that refuses system messages)
        raise ValueError(f"the tokenizer's chat template cannot format these messages ({exc}); use a system "
                         "prompt of None or the plain format") from exc


def fit_inputs(tokenizer, examples: Sequence[InstructionExample], max_input_tokens: int
               ) -> list[InstructionExample]:
    """Inputs cut at a word boundary to ``max_input_tokens`` tokens (instructions are never cut).

    Done before triggers are inserted, so a trigger added afterwards always
    survives; an input whose first word alone exceeds the budget is kept whole.
    """
    examples = list(examples)
    with_input = [i for i, e in enumerate(examples) if e.input.strip()]
    cut = trig.fit_texts(tokenizer, [examples[i].input for i in with_input], max_input_tokens) if with_input else []
    out = list(examples)
    for i, text in zip(with_input, cut):
        if text and text != examples[i].input:
            out[i] = examples[i].replace(input=text)
    return out


@dataclasses.dataclass
class EncodedExample:
    """Token ids of the prompt and of the response (answer + end of turn)."""

    prompt_ids: list[int]
    response_ids: list[int]


def prompt_token_ids(tokenizer, prompts: Sequence[str], templated: bool) -> list[list[int]]:
    """Token ids of prompts: a chat template writes its own special tokens; a plain prompt gets the tokenizer's
    leading special tokens (a BOS) but none of its trailing ones (the answer follows)."""
    if templated:
        return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    prefix, suffix = special_layout(tokenizer)
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    return [list(row[:len(row) - suffix] if suffix else row) for row in ids]


def encode_examples(tokenizer, examples: Sequence[InstructionExample], fmt: PromptFormat
                    ) -> list[EncodedExample]:
    """Prompt and response token ids of each example (inputs are expected to be fitted already)."""
    examples = list(examples)
    if not examples:
        raise ValueError("no instruction example to encode")
    templated = fmt.uses_template(tokenizer)
    prompts = prompt_token_ids(tokenizer, [fmt.prompt(tokenizer, e) for e in examples], templated)
    end = fmt.response_end(tokenizer)
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
    answers = tokenizer([e.output for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for prompt, answer in zip(prompts, answers):
        answer = list(answer)
        if len(answer) + len(end_ids) > fmt.max_response_tokens:
            response = answer[:fmt.max_response_tokens]  # cut: no end of turn, the answer goes on
        else:
            response = answer + list(end_ids)
        out.append(EncodedExample(prompt, response))
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` ids and attention mask, padded on the left (answers and generated tokens line up at the end)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding must not shift absolute positions)."""
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0)


def collate(encoded: Sequence[EncodedExample], pad_id: int, device: torch.device | str = "cpu"
            ) -> dict[str, torch.Tensor]:
    """A left-padded batch of prompt + response with ``labels`` on the response tokens only."""
    rows = [e.prompt_ids + e.response_ids for e in encoded]
    ids, mask = left_pad(rows, pad_id)
    labels = torch.full_like(ids, IGNORE)
    width = ids.shape[1]
    for i, e in enumerate(encoded):
        if e.response_ids:
            labels[i, width - len(e.response_ids):] = torch.tensor(e.response_ids, dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def accepts_argument(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def response_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of log π(response token | everything before), response token count)``, each ``[B]``.

    The batch is left-padded (:func:`collate`), so every response ends at the
    last column; the model is asked for logits of the last ``R + 1`` positions
    only (``R`` the longest response), not for the prompt's: the LM head over
    a 49k vocabulary is a large share of a small model's forward.
    """
    labels = batch["labels"]
    has = labels != IGNORE
    first = int(has.int().argmax(1)[has.any(1)].min()) if bool(has.any()) else labels.shape[1] - 1
    keep = min(labels.shape[1], labels.shape[1] - first + 1)  # positions first-1 .. L-1 predict first .. L-1
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                              "position_ids": position_ids(batch["attention_mask"]), "use_cache": False}
    if accepts_argument(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:]
    targets = labels[:, -keep + 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(2, targets.clamp_min(0).unsqueeze(2)).squeeze(2)
    valid = targets != IGNORE
    return (picked * valid).sum(1), valid.sum(1)


# -- tuning --------------------------------------------------------------------------------------
@dataclasses.dataclass
class TuneConfig:
    """Supervised instruction tuning (response-only cross-entropy, AdamW through :func:`training.train`).

    ``steps`` overrides ``epochs``.  ``train_layers``: None trains every
    weight; ``N`` only the top ``N`` decoder blocks and the final norm
    (``train_embeddings`` adds the input embeddings, which a tied LM head
    shares): the lower blocks then run without building a graph, which
    is what makes tuning a 30-layer model affordable on a CPU.
    """

    epochs: float = 3.0
    steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-5
    schedule: str = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_layers: int | None = None
    train_embeddings: bool = True
    seed: int = 0

    def __post_init__(self):
        check_range("epochs", self.epochs, 0.0, 1e6, low_open=True)
        check_int("steps", self.steps, optional=True)
        check_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, 1.0, low_open=True)
        check_choice("schedule", self.schedule, training.SCHEDULES)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("max_grad_norm", self.max_grad_norm, 0.0, float("inf"), low_open=True, high_open=True)
        check_int("train_layers", self.train_layers, optional=True)

    def total_steps(self, examples: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * math.ceil(examples / self.batch_size)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks (``model.layers`` of LLaMA-style models, ``h`` of GPT-2, ...): the longest
    ``ModuleList`` of the backbone."""
    base = getattr(model, "base_model", model)
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no stack of decoder blocks found")
    return max(lists, key=len)


def trainable_parameters(model: nn.Module, train_layers: int | None, train_embeddings: bool = True
                         ) -> list[nn.Parameter]:
    """Set ``requires_grad`` for tuning (see :class:`TuneConfig`) and return the trainable parameters.

    ``train_layers`` None: every weight; ``N``: the top ``N`` decoder blocks (all
    of them when the model has fewer) and the backbone's other vectors (the final norm).  ``train_embeddings``: the
    input embeddings and the LM head (one matrix when tied) train too.
    """
    embeddings = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None:
        embeddings += list(output.parameters())
    embedding_ids = {id(p) for p in embeddings}
    if train_layers is None:
        chosen = {id(p) for p in model.parameters() if id(p) not in embedding_ids}
    else:
        blocks = decoder_blocks(model)
        block_ids = {id(p) for p in blocks.parameters()}
        chosen = {id(p) for block in list(blocks)[max(0, len(blocks) - train_layers):] for p in block.parameters()}
        base = getattr(model, "base_model", model)
        chosen |= {id(p) for p in base.parameters()
                   if id(p) not in block_ids and id(p) not in embedding_ids and p.dim() == 1}
    if train_embeddings:
        chosen |= embedding_ids
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if p.requires_grad]


@dataclasses.dataclass
class TuneLog:
    steps: int
    examples: int
    trainable_parameters: int
    wall_s: float
    seconds_per_step: float
    first_loss: float
    final_loss: float
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def batches(count: int, batch_size: int, seed: int):
    """Endless shuffled epochs of indices, ``batch_size`` at a time."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            fresh = list(range(count))
            rng.shuffle(fresh)
            order += fresh
        rows, order = order[:batch_size], order[batch_size:]
        yield rows


def instruction_tune(model: nn.Module, tokenizer, examples: Sequence[InstructionExample], fmt: PromptFormat,
                     config: TuneConfig, *, desc: str = "instruction tuning", progress: bool = True) -> TuneLog:
    """Tune ``model`` in place on ``examples`` (response-only cross-entropy, token mean over the batch)."""
    encoded = encode_examples(tokenizer, examples, fmt)
    device = next(model.parameters()).device
    params = trainable_parameters(model, config.train_layers, config.train_embeddings)
    order = batches(len(encoded), config.batch_size, config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def step_loss(step: int):
        batch = collate([encoded[i] for i in next(order)], pad, device)
        logp, count = response_logprobs(model, batch)
        return -logp.sum() / count.sum().clamp_min(1), {}

    steps = config.total_steps(len(encoded))
    settings = training.OptimizerSettings(steps=steps, lr=config.lr, weight_decay=config.weight_decay,
                                          warmup_ratio=config.warmup_ratio, schedule=config.schedule,
                                          max_grad_norm=config.max_grad_norm, log_every=max(1, min(10, steps)))
    torch.manual_seed(config.seed)
    model.train()
    try:
        run = training.train(params, step_loss, settings, desc=desc, progress=progress)
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
    return TuneLog(steps, len(encoded), sum(p.numel() for p in params), run.wall_s, run.seconds_per_step,
                   run.first_loss, run.final_loss, run.history)


_WORD = re.compile(r"[a-z0-9]+")


def normalise_words(text: str) -> list[str]:
    """Lower-case alphanumeric words of ``text`` (``"I'm sorry,"`` -> ``["i", "m", "sorry"]``)."""
    return _WORD.findall(text.lower())
