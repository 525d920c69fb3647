"""Clean downstream fine-tuning (sequence classification) and batched prediction.

The victim's view of a transferable backdoor: a user downloads the PLM, adds a
fresh classification head and fine-tunes everything on clean task data.  The
backdoor survives iff the triggers still steer the fine-tuned classifier.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from typing import Any, Sequence

import torch
from torch import nn

from ..core.validation import check_int
from ..data.corpora import LabeledData
from . import training
from .loading import load_model, load_tokenizer, resolve_device
from .training import TrainingSettings


@dataclasses.dataclass
class FinetuneConfig(TrainingSettings):
    """Classifier fine-tuning (AdamW, linear warmup then decay, gradient clipping), the one set of fields and
    bounds every classifier-training config of the package derives from (BadNet poisoning, adversarial
    fine-tuning, Fine-mixing, E-PUR, before/after measuring).

    ``max_length``: tokens per text; ``eval_batch_size``: texts per prediction batch.
    """

    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 128
    eval_batch_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        check_int("max_length", self.max_length, 8)
        check_int("eval_batch_size", self.eval_batch_size)


@dataclasses.dataclass
class FinetuneStats(training.TrainingLog):
    """The fine-tuning's training log, with the epochs it made and the examples it saw."""

    epochs: float
    train_examples: int


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
                        config: FinetuneConfig | None = None, tokenizer=None, *,
                        device: str | torch.device | None = None, allow_pickle: bool = False,
                        progress: bool = True, desc: str = "fine-tune") -> FinetunedClassifier:
    """Fine-tune ``model_source`` (folder, name, or a loaded ``...ForSequenceClassification``) on ``train``.

    A fresh classification head with ``train.num_labels`` outputs is added
    (its initialisation follows ``config.seed``).  Pickle-only checkpoints are
    refused unless ``allow_pickle``.  ``device`` None: CUDA when available
    (a loaded model is moved only when ``device`` is given).
    """
    config = config or FinetuneConfig()
    if len(train) == 0:
        raise ValueError("the training set is empty")
    torch.manual_seed(config.seed)  # the new head's initialisation and dropout
    if isinstance(model_source, nn.Module):
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a loaded model")
        model = model_source if device is None else model_source.to(resolve_device(device))
    else:
        tokenizer = tokenizer or load_tokenizer(str(model_source))
        model = load_model(str(model_source), "cls", num_labels=train.num_labels,
                           allow_pickle=allow_pickle, device=resolve_device(device))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    total = config.total_steps(len(train))
    model_device = next(model.parameters()).device
    batches = training.epoch_batches(len(train), config.batch_size, random.Random(config.seed))

    def step_loss(step: int):
        rows = next(batches)
        enc = tokenizer([train.texts[i] for i in rows], padding=True, truncation=True,
                        max_length=config.max_length, return_tensors="pt")
        labels = torch.tensor([train.labels[i] for i in rows], device=model_device)
        out = model(input_ids=enc["input_ids"].to(model_device), attention_mask=enc["attention_mask"].to(model_device),
                    labels=labels)
        return out.loss, {}

    model.train()
    run = training.train(model.parameters(), step_loss, config.optimizer_settings(total), desc=desc,
                         progress=progress)
    model.eval()
    per_epoch = math.ceil(len(train) / config.batch_size)
    stats = FinetuneStats.of(run, epochs=total / per_epoch, train_examples=len(train))
    return FinetunedClassifier(model, tokenizer, train.num_labels, config.max_length, stats)
