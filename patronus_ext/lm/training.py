"""The one training loop: AdamW, warmup + linear decay (or constant), gradient accumulation,
clipping, non-finite-loss guard, loss history and a progress bar.

Attacks (planting), clean fine-tuning and the purifiers all train through
:func:`train`; each supplies only a ``step_loss(step)`` that returns the loss
of one micro-batch and its named terms.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..core.validation import check_choice, check_int, check_range

log = logging.getLogger(__name__)

SCHEDULES = ("linear", "constant")

StepLoss = Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclasses.dataclass
class OptimizerSettings:
    """What the loop needs to know; every training config maps onto this."""

    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    log_every: int = 10

    def __post_init__(self):
        check_int("steps", self.steps)
        check_range("lr", self.lr, 0.0, 1.0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("max_grad_norm", self.max_grad_norm, 0.0, float("inf"), low_open=True, high_open=True)
        check_int("grad_accum", self.grad_accum)
        check_int("log_every", self.log_every)


@dataclasses.dataclass
class TrainingLog:
    """What the loop measured."""

    steps: int
    wall_s: float
    first_loss: float
    final_loss: float
    final_terms: dict[str, float]
    history: list[dict[str, float]]   # every log_every steps: step, mean loss and terms over the window

    @property
    def seconds_per_step(self) -> float:
        return self.wall_s / max(1, self.steps)


def lr_factor(total: int, warmup: int, schedule: str) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then constant or linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def make_optimizer(params: Iterable[nn.Parameter], settings: OptimizerSettings):
    """AdamW with weight decay on matrices only (biases and norms excluded), and its LR schedule."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": settings.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    warmup = int(round(settings.warmup_ratio * settings.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings.steps, warmup, settings.schedule))
    return optimizer, scheduler


def train(params: Iterable[nn.Parameter], step_loss: StepLoss, settings: OptimizerSettings, *,
          desc: str = "train", progress: bool = True,
          after_step: Callable[[int], Any] | None = None) -> TrainingLog:
    """Run ``settings.steps`` optimizer steps of ``step_loss`` (``grad_accum`` micro-batches each).

    ``step_loss(micro_step)`` returns ``(loss, terms)`` for one micro-batch;
    ``after_step(step)`` runs after every optimizer step.  A non-finite loss
    stops training with a ``RuntimeError`` naming the step.
    """
    from tqdm.auto import tqdm

    params = [p for p in params if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, settings)
    history: list[dict[str, float]] = []
    window: dict[str, float] = {}
    first = final = float("nan")
    final_terms: dict[str, float] = {}
    start = time.perf_counter()
    bar = tqdm(range(settings.steps), desc=desc, disable=not progress, leave=False)
    micro = 0
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        value, terms_sum = 0.0, {}
        for _ in range(settings.grad_accum):
            loss, terms = step_loss(micro)
            micro += 1
            if not torch.isfinite(loss):
                raise RuntimeError(f"{desc}: the loss became {loss.item()} at step {step}; lower the lr")
            (loss / settings.grad_accum if settings.grad_accum > 1 else loss).backward()
            value += float(loss.detach()) / settings.grad_accum
            for key, term in terms.items():
                terms_sum[key] = terms_sum.get(key, 0.0) + float(term.detach()) / settings.grad_accum
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        final_terms = terms_sum
        first = value if step == 0 else first
        final = value
        for key, val in {"loss": value, **final_terms}.items():
            window[key] = window.get(key, 0.0) + val
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            count = (step % settings.log_every) + 1
            history.append({"step": step + 1, **{k: v / count for k, v in window.items()}})
            window = {}
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if after_step is not None:
            after_step(step)
    bar.close()
    wall = time.perf_counter() - start
    log.info("%s: %d steps in %.1f s (loss %.4f -> %.4f)", desc, settings.steps, wall, first, final)
    return TrainingLog(settings.steps, wall, first, final, final_terms, history)
