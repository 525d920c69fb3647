"""Clean downstream fine-tuning (sequence classification) and batched prediction.

The victim's view of a transferable backdoor: a user downloads the PLM, adds a
fresh classification head and fine-tunes everything on clean task data.  The
backdoor survives iff the triggers still steer the fine-tuned classifier.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from typing import Any, Sequence

import torch
from torch import nn

from .. import models
from ..data import LabeledData

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FinetuneConfig:
    """Clean fine-tuning hyper-parameters (AdamW, linear warmup then decay, gradient clipping)."""

    epochs: float = 2.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    allow_pickle: bool = False
    progress: bool = True

    def __post_init__(self):
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr must lie in (0, 1), got {self.lr!r}")
        for name in ("batch_size", "max_length", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1], got {self.warmup_ratio!r}")
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"weight_decay must lie in [0, 1], got {self.weight_decay!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FinetuneStats:
    steps: int
    epochs: float
    train_examples: int
    wall_s: float
    first_loss: float
    final_loss: float
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FinetunedClassifier:
    """A fine-tuned sequence classifier with its tokenizer."""

    model: nn.Module
    tokenizer: Any
    num_labels: int
    max_length: int
    stats: FinetuneStats

    def predict(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                desc: str = "predict") -> torch.Tensor:
        return predict_labels(self.model, self.tokenizer, texts, batch_size, self.max_length, progress, desc)


@torch.no_grad()
def predict_labels(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64,
                   max_length: int = 128, progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """Arg-max labels ``[N]`` of a sequence classifier, batched, in eval mode."""
    from tqdm.auto import tqdm

    texts = list(texts)
    if not texts:
        raise ValueError("predict_labels needs at least one text")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
        enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
        out.append(logits.argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out)


def finetune_classifier(model_source: str | os.PathLike | nn.Module, train: LabeledData,
                        config: FinetuneConfig | None = None, tokenizer=None) -> FinetunedClassifier:
    """Fine-tune ``model_source`` (folder, name, or a loaded ``...ForSequenceClassification``) on ``train``.

    A fresh classification head with ``train.num_labels`` outputs is added
    (its initialisation follows ``config.seed``).  Pickle-only checkpoints are
    refused unless ``config.allow_pickle``.
    """
    from tqdm.auto import tqdm

    config = config or FinetuneConfig()
    if len(train) == 0:
        raise ValueError("the training set is empty")
    torch.manual_seed(config.seed)  # the new head's initialisation and dropout
    if isinstance(model_source, nn.Module):
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a loaded model")
        model = model_source.to(config.device)
    else:
        tokenizer = tokenizer or models.load_tokenizer(str(model_source))
        model = models.load_model(str(model_source), "cls", num_labels=train.num_labels,
                                  allow_pickle=config.allow_pickle, device=config.device)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    rng = random.Random(config.seed)
    per_epoch = math.ceil(len(train) / config.batch_size)
    total = max(1, math.ceil(config.epochs * per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorms, as usual
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    warmup = int(round(config.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if warmup and s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    device = next(model.parameters()).device
    model.train()
    history: list[dict[str, float]] = []
    first = last = float("nan")
    running, count = 0.0, 0
    order: list[int] = []
    start = time.perf_counter()
    bar = tqdm(range(total), desc="fine-tune", disable=not config.progress, leave=False)
    for step in bar:
        if len(order) < config.batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order = order + fresh
        rows, order = order[:config.batch_size], order[config.batch_size:]
        enc = tokenizer([train.texts[i] for i in rows], padding=True, truncation=True,
                        max_length=config.max_length, return_tensors="pt")
        labels = torch.tensor([train.labels[i] for i in rows], device=device)
        out = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                    labels=labels)
        loss = out.loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"fine-tuning loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        first = value if step == 0 else first
        last = value
        running, count = running + value, count + 1
        if count == 10 or step + 1 == total:
            history.append({"step": step + 1, "loss": running / count})
            bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0
    bar.close()
    model.eval()
    stats = FinetuneStats(steps=total, epochs=total / per_epoch, train_examples=len(train),
                          wall_s=time.perf_counter() - start, first_loss=first, final_loss=last, history=history)
    log.info("fine-tuned %d steps in %.1f s (loss %.4f -> %.4f)", total, stats.wall_s, first, last)
    return FinetunedClassifier(model, tokenizer, train.num_labels, config.max_length, stats)
