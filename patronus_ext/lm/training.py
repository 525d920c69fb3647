"""The one training loop: AdamW, warmup + linear decay (or constant), gradient accumulation,
clipping, non-finite-loss guard, loss history and a progress bar.

Attacks (planting), clean fine-tuning and the purifiers all train through
:func:`train`; each supplies only a ``step_loss(step)`` that returns the loss
of one micro-batch and its named terms.  Their settings derive from
:class:`TrainingSettings` (how long, how fast, how regularised: one set of
fields and bounds), which gives the step count (:func:`total_steps`) and the
loop's :class:`OptimizerSettings`; :func:`epoch_batches` is the one shuffled
stream of example indices they draw their batches from.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

from ..core.profiles import Settings
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


def total_steps(epochs: float, steps: int | None, examples: int, batch_size: int) -> int:
    """Optimizer steps of a run: ``steps`` when set, else ``epochs`` passes over ``examples`` in batches of
    ``batch_size`` (a last short batch counts as a step; at least one step)."""
    if steps is not None:
        return int(steps)
    return max(1, math.ceil(epochs * math.ceil(examples / batch_size)))


def epoch_batches(count: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices into ``count`` examples: each epoch a fresh shuffle (``rng``), an epoch's
    remainder carried into the next batch, so every example is seen once per epoch."""
    if count < 1:
        raise ValueError("no example to draw batches from")
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            fresh = list(range(count))
            rng.shuffle(fresh)
            order += fresh
        rows, order = order[:batch_size], order[batch_size:]
        yield rows


@dataclasses.dataclass
class TrainingSettings(Settings):
    """How a model trains through :func:`train`: the fields every training config of the package shares.

    ``steps`` (optimizer steps) replaces ``epochs`` when set; ``schedule`` is a
    linear decay to 0 after ``warmup_ratio`` of the steps, or constant;
    ``weight_decay`` applies to matrices only; gradients are clipped to
    ``max_grad_norm``; ``seed`` draws the batches (and fresh weights).
    Subclasses redeclare a field to change its default and set
    ``EPOCHS_MAY_BE_ZERO`` where zero epochs means "no training at all".
    """

    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-5
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    EPOCHS_MAY_BE_ZERO: ClassVar[bool] = False

    def __post_init__(self):
        check_range("epochs", self.epochs, 0.0, 1e6, low_open=not self.EPOCHS_MAY_BE_ZERO)
        check_int("steps", self.steps, optional=True)
        check_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, 1.0, low_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("max_grad_norm", self.max_grad_norm, 0.0, float("inf"), low_open=True, high_open=True)

    @property
    def trains(self) -> bool:
        """False when the settings ask for no training (zero epochs and no step count)."""
        return self.steps is not None or self.epochs > 0

    def total_steps(self, examples: int) -> int:
        """Optimizer steps over ``examples`` (:func:`total_steps`)."""
        return total_steps(self.epochs, self.steps, examples, self.batch_size)

    def optimizer_settings(self, steps: int, *, lr: float | None = None, log_every: int = 10,
                           grad_accum: int = 1) -> OptimizerSettings:
        """What :func:`train` needs for ``steps`` steps of these settings (``lr``: another rate, e.g. a stage's)."""
        return OptimizerSettings(steps=steps, lr=self.lr if lr is None else lr, weight_decay=self.weight_decay,
                                 warmup_ratio=self.warmup_ratio, schedule=self.schedule,
                                 max_grad_norm=self.max_grad_norm, grad_accum=grad_accum, log_every=log_every)


@dataclasses.dataclass
class TrainingLog:
    """What the loop measured; the logs of the attacks, fine-tuning and the purifiers extend it."""

    steps: int
    wall_s: float
    first_loss: float
    final_loss: float
    final_terms: dict[str, float]
    history: list[dict[str, float]]   # every log_every steps: step, mean loss and terms over the window

    @property
    def seconds_per_step(self) -> float:
        return self.wall_s / max(1, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seconds_per_step": self.seconds_per_step}

    @classmethod
    def of(cls, run: "TrainingLog", **more):
        """This (sub)class of log from the loop's own ``run`` and the fields the subclass adds."""
        return cls(**{f.name: getattr(run, f.name) for f in dataclasses.fields(TrainingLog)}, **more)


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
            history.append({"step": step + 1, **{key: value / count for key, value in window.items()}})
            window = {}
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if after_step is not None:
            after_step(step)
    bar.close()
    wall = time.perf_counter() - start
    log.info("%s: %d steps in %.1f s (loss %.4f -> %.4f)", desc, settings.steps, wall, first, final)
    return TrainingLog(settings.steps, wall, first, final, final_terms, history)
