"""Instruction data for causal LMs (docs/METHODS.md §5): examples, built-in sources, Alpaca I/O, poisoning, splits.

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
* Inputs are cut at a word boundary to a token budget (:func:`fit_inputs`)
  *before* any trigger is inserted, so an inserted trigger is never truncated away.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.files import atomic_write, read_jsonl
from ..core.validation import check_choice, check_int
from . import corpora
from . import triggers as trig

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
#: The fields of an Alpaca-format record.
ALPACA_KEYS = ("instruction", "input", "output")


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
def classification_examples(task: str | corpora.LabeledData, split: str = "train", limit: int | None = None,
                            seed: int = 0, *, answers: Sequence[str] | None = None,
                            instruction: str | None = None) -> list[InstructionExample]:
    """A labelled task as classification instructions with one-word answers.

    ``task``: ``sst2``, ``agnews`` (their answers and instructions are built in),
    a labelled file or a :class:`LabeledData` (then ``answers``, one word per
    label, and ``instruction`` are needed).
    """
    name = task if isinstance(task, str) and task in ANSWER_WORDS else None
    data = task.subset(limit, seed) if isinstance(task, corpora.LabeledData) else \
        corpora.read_task(task, split, limit, seed)
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
    paragraphs = corpora.read_corpus(corpus, min_words=prompt_words + response_words, seed=seed)
    out = []
    for text in paragraphs[:limit] if limit is not None else paragraphs:
        words = text.split()
        out.append(InstructionExample(INSTRUCTIONS["wikitext2"], " ".join(words[:prompt_words]),
                                      " ".join(words[prompt_words:prompt_words + response_words]),
                                      source=corpus if corpus in corpora.BUILTIN_CORPORA else "corpus"))
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
    for number, record in read_jsonl(path):
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
    rows, other = corpora.disjoint_samples(len(examples), first, second, seed)
    return [examples[i] for i in rows], [examples[i] for i in other]


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


