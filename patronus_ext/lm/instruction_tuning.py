"""Supervised instruction tuning of a causal LM through the one training loop (response-only
cross-entropy), optionally of the top decoder blocks only (:func:`trainable_parameters`)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Sequence

import torch
from torch import nn

from ..core.validation import check_choice, check_int, check_range
from ..data.instructions import InstructionExample
from . import training
from .prompting import PromptFormat, collate, encode_examples, response_logprobs


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


