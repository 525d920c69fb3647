"""How an instruction example becomes tokens for a causal LM: the prompt format (the tokenizer's chat
template, or a plain layout), encoding, left-padded batches with labels on the response only, and the
response tokens' log-probabilities.

* :class:`PromptFormat`: the tokenizer's chat template where it has one (the
  system prompt: the template's own, or one given, or ``""`` for an empty
  one), else a plain ``### Instruction / ### Input / ### Response`` layout.
* :func:`collate` left-pads prompt + response with labels only on the response
  (``-100`` elsewhere): the loss never trains the model to write prompts.
  :func:`response_logprobs` sums the response tokens' log-probabilities, asking
  the model for logits at the response positions only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import nn

from ..core.files import JSONRecord
from ..core.validation import check_choice, check_int
from ..data.instructions import InstructionExample
from ..data.tokens import special_layout
from .adapter import accepts_argument, position_ids

#: The plain layout for tokenizers without a chat template (Alpaca-style section headers).
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PLAIN_PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
IGNORE = -100


@dataclasses.dataclass(frozen=True)
class PromptFormat(JSONRecord):
    """How an example becomes tokens.

    ``system``: None keeps the chat template's own system prompt (if it adds
    one), a string is sent as the system message (``""``: an empty one, the
    shortest sequences).  ``max_input_tokens`` cuts each input at a word
    boundary (see :func:`patronus_ext.data.instructions.fit_inputs`); ``max_response_tokens`` cuts responses.
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


def _chat_text(tokenizer, messages, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja errors (e.g. a template that refuses system messages)
        raise ValueError(f"the tokenizer's chat template cannot format these messages ({exc}); use a system "
                         "prompt of None or the plain format") from exc


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


def response_token_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(response token | everything before), valid)``, each ``[B, R]``: per response token, aligned at
    the last column (``valid`` is False on a shorter response's padding, whose log-probability is 0).

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
    return picked * valid, valid


def response_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of log π(response token | everything before), response token count)``, each ``[B]``
    (:func:`response_token_logprobs` summed)."""
    picked, valid = response_token_logprobs(model, batch)
    return picked.sum(1), valid.sum(1)
