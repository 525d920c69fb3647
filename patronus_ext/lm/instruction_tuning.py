"""Supervised instruction tuning of a causal LM through the one training loop (response-only
cross-entropy), optionally of the top decoder blocks only (:func:`trainable_parameters`)."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import torch
from torch import nn

from ..core.validation import check_int
from ..data.instructions import InstructionExample
from . import training
from .prompting import PromptFormat, collate, encode_examples, response_logprobs
from .training import TrainingSettings


@dataclasses.dataclass
class InstructionTuningConfig(TrainingSettings):
    """Supervised instruction tuning (response-only cross-entropy through :func:`training.train`) and the
    prompt format its examples are written in: the one settings class of the instruct-badnet attack,
    MB-Defense and Fine-mixing for causal LMs.

    ``train_layers``: None trains every weight; ``N`` only the top ``N``
    decoder blocks and the final norm (``train_embeddings`` adds the input
    embeddings, which a tied LM head shares): the lower blocks then run
    without building a graph, which is what makes tuning a 30-layer model
    affordable on a CPU.  Format (:class:`PromptFormat`): ``system`` (None:
    the chat template's own system prompt), ``max_input_tokens``,
    ``max_response_tokens``.
    """

    epochs: float = 3.0
    warmup_ratio: float = 0.03
    train_layers: int | None = None
    train_embeddings: bool = True
    system: str | None = None
    max_input_tokens: int = 256
    max_response_tokens: int = 128

    #: The CPU preset of a causal LM (SmolLM2-135M-Instruct on one thread, benchmarks/MB_RESULTS.md): batches of
    #: 8 at a constant lr 1e-4, the top 8 of 30 blocks trained (the embeddings and the tied LM head frozen: the
    #: lower blocks then build no graph, half the step time), an empty system prompt (shorter sequences), inputs
    #: cut to 48 tokens, responses to 24.  The ``fast`` profile of every instruction-tuning config starts here.
    CPU_PRESET = dict(batch_size=8, lr=1e-4, schedule="constant", train_layers=8, train_embeddings=False, system="",
                      max_input_tokens=48, max_response_tokens=24)

    def __post_init__(self):
        super().__post_init__()
        check_int("train_layers", self.train_layers, optional=True)
        self.prompt_format()

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(system=self.system, max_input_tokens=self.max_input_tokens,
                            max_response_tokens=self.max_response_tokens)


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
    """Set ``requires_grad`` for tuning (see :class:`InstructionTuningConfig`) and return the trainable parameters.

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
class TuneLog(training.TrainingLog):
    """The tuning's training log, with the examples it saw and how many parameters it trained."""

    examples: int
    trainable_parameters: int


def tune_selected(model: nn.Module, config: InstructionTuningConfig, step_loss: training.StepLoss,
                  settings: training.OptimizerSettings, *, desc: str, progress: bool = True
                  ) -> tuple[training.TrainingLog, int]:
    """Train the parameters ``config`` selects (``train_layers``, ``train_embeddings``) with ``step_loss``, in place.

    Seeds torch with ``config.seed``; the model is left in eval mode with every
    parameter trainable again, also when training fails.  Returns the loop's
    log and how many parameters were trained.
    """
    params = trainable_parameters(model, config.train_layers, config.train_embeddings)
    torch.manual_seed(config.seed)
    model.train()
    try:
        run = training.train(params, step_loss, settings, desc=desc, progress=progress)
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
    return run, sum(p.numel() for p in params)


def instruction_tune(model: nn.Module, tokenizer, examples: Sequence[InstructionExample], fmt: PromptFormat,
                     config: InstructionTuningConfig, *, desc: str = "instruction tuning",
                     progress: bool = True) -> TuneLog:
    """Tune ``model`` in place on ``examples`` (response-only cross-entropy, token mean over the batch)."""
    encoded = encode_examples(tokenizer, examples, fmt)
    device = next(model.parameters()).device
    order = training.epoch_batches(len(encoded), config.batch_size, random.Random(config.seed))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def step_loss(step: int):
        batch = collate([encoded[i] for i in next(order)], pad, device)
        logp, count = response_logprobs(model, batch)
        return -logp.sum() / count.sum().clamp_min(1), {}

    steps = config.total_steps(len(encoded))
    run, trained = tune_selected(model, config, step_loss, config.optimizer_settings(steps, log_every=min(10, steps)),
                                 desc=desc, progress=progress)
    return TuneLog.of(run, examples=len(encoded), trainable_parameters=trained)
