"""Patronus mitigation by training (docs/METHODS.md §2): adversarial pre-training and adversarial fine-tuning.

Both take the triggers the scan confirmed (:func:`patronus_ext.purify.triggers_from_report`),
not the planted ones, and train through the package's one training loop.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import lm
from ..core.files import JSONRecord
from ..data import corpora as data_mod
from ..data import triggers as trig
from ..data.corpora import LabeledData
from ..evaluate import metrics
from ..lm import training
from ..lm.finetune import FinetunedClassifier, finetune_classifier
from .config import AdvFinetuneConfig, AdvPretrainConfig

log = logging.getLogger(__name__)


def _check_triggers(triggers: Sequence[str]) -> list[str]:
    if isinstance(triggers, str):
        raise TypeError("pass a list of triggers, not a single string")
    words = [str(t).strip() for t in triggers]
    if not words or any(not w for w in words):
        raise ValueError("purification needs at least one (non-empty) trigger")
    return words


# -- adversarial pre-training -----------------------------------------------------------------
@dataclasses.dataclass
class AdvPretrainResult(JSONRecord):
    steps: int
    wall_s: float
    train_texts: int
    dev_texts: int
    initial_dev_loss: float
    best_step: int
    best_dev_loss: float
    dev_history: list[dict[str, float]]     # step, loss, clean (to reference), poison (triggered vs clean)
    history: list[dict[str, float]]


def purification_loss(adapter: lm.ModelAdapter, reference: lm.ModelAdapter, clean: Sequence[str],
                      poisoned: Sequence[str], max_length: int, clean_weight: float = 1.0
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``c·MSE(rep_θ(x_c), rep_ref(x_c)) + MSE(rep_θ(x_c), rep_θ(x_p))``: one forward of clean + triggered rows,
    gradients through both branches."""
    count = len(clean)
    enc = adapter.tokenize(list(clean) + list(poisoned), max_length)
    reps = adapter.represent(enc["input_ids"], enc["attention_mask"])
    rep_c, rep_p = reps[:count], reps[count:]
    with torch.no_grad():
        ref_enc = reference.tokenize(list(clean), max_length)
        ref = reference.represent(ref_enc["input_ids"], ref_enc["attention_mask"])
    term_clean = F.mse_loss(rep_c, ref)
    term_poison = F.mse_loss(rep_c, rep_p)
    return clean_weight * term_clean + term_poison, {"clean": term_clean, "poison": term_poison}


def adversarial_pretrain(adapter: lm.ModelAdapter, triggers: Sequence[str],
                         config: AdvPretrainConfig | None = None, *, corpus: Sequence[str] | None = None,
                         progress: bool = True) -> AdvPretrainResult:
    """Purify ``adapter.model`` in place (Patronus adversarial pre-training, docs/METHODS.md §2).

    ``corpus``: plain texts (default: ``config.corpus``).  A frozen copy of the
    input model is the reference; the weights with the lowest dev loss are
    loaded back at the end.
    """
    config = config or AdvPretrainConfig()
    words = _check_triggers(triggers)
    tokenizer = adapter.tokenizer
    texts = list(corpus) if corpus is not None else data_mod.read_corpus(config.corpus)
    texts = trig.fit_for_insertion(tokenizer, texts, config.max_length, insert_num=config.insert_num, triggers=words)
    rng = random.Random(config.seed)
    rng.shuffle(texts)
    dev, train_texts = texts[:config.dev_texts], texts[config.dev_texts:]
    if config.corpus_limit is not None:
        train_texts = train_texts[:config.corpus_limit]
    if len(dev) < 2 or len(train_texts) < config.batch_size:
        raise ValueError(f"the corpus has {len(texts)} usable texts: need dev_texts ({config.dev_texts}) + "
                         f"batch_size ({config.batch_size}) at least")
    total = config.total_steps(len(train_texts))
    eval_every = config.eval_every or math.ceil(len(train_texts) / config.batch_size)  # once per epoch
    dev_rng = random.Random(config.seed + 1)
    dev_poisoned = [trig.insert_words(t, words[dev_rng.randrange(len(words))], config.insert_num, dev_rng)
                    for t in dev]

    model = adapter.model
    ref_model = copy.deepcopy(model).eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    reference = lm.ModelAdapter(ref_model, tokenizer, position=adapter.position, max_length=config.max_length)
    torch.manual_seed(config.seed)

    @torch.no_grad()
    def dev_loss() -> dict[str, float]:
        was = model.training
        model.eval()
        sums = {"loss": 0.0, "clean": 0.0, "poison": 0.0}
        for start in range(0, len(dev), 32):
            c, p = dev[start:start + 32], dev_poisoned[start:start + 32]
            loss, terms = purification_loss(adapter, reference, c, p, config.max_length, config.clean_weight)
            for key, value in (("loss", loss), *terms.items()):
                sums[key] += float(value) * len(c)
        model.train(was)
        return {key: value / len(dev) for key, value in sums.items()}

    initial = dev_loss()
    batches = training.epoch_batches(len(train_texts), config.batch_size, rng)

    def step_loss(step: int):
        clean = [train_texts[i] for i in next(batches)]
        poisoned = [trig.insert_words(t, words[rng.randrange(len(words))], config.insert_num, rng) for t in clean]
        return purification_loss(adapter, reference, clean, poisoned, config.max_length, config.clean_weight)

    best: dict[str, Any] = {"loss": math.inf, "step": 0, "state": None}
    dev_history: list[dict[str, float]] = [{"step": 0, **initial}]

    def after_step(step: int):
        if (step + 1) % eval_every and step + 1 != total:
            return
        measured = dev_loss()
        dev_history.append({"step": step + 1, **measured})
        if measured["loss"] < best["loss"]:
            best.update(loss=measured["loss"], step=step + 1,
                        state={key: value.detach().clone() for key, value in model.state_dict().items()})

    settings = config.optimizer_settings(total)
    model.train()
    run = training.train(model.parameters(), step_loss, settings, desc="adversarial pre-training",
                         progress=progress, after_step=after_step)
    model.load_state_dict(best["state"])
    model.eval()
    log.info("adversarial pre-training: best dev loss %.4f at step %d (initial %.4f)", best["loss"], best["step"],
             initial["loss"])
    return AdvPretrainResult(steps=total, wall_s=run.wall_s, train_texts=len(train_texts), dev_texts=len(dev),
                             initial_dev_loss=initial["loss"], best_step=best["step"], best_dev_loss=best["loss"],
                             dev_history=dev_history, history=run.history)


# -- adversarial fine-tuning ------------------------------------------------------------------
def adversarial_examples(data: LabeledData, triggers: Sequence[str], extra_rate: float = 0.2, insert_num: int = 3,
                         seed: int = 0, tokenizer=None, max_length: int | None = None) -> LabeledData:
    """``data`` plus, per trigger, ``round(extra_rate·N)`` examples drawn with replacement with the trigger
    inserted ``insert_num`` times and their TRUE label.

    With ``tokenizer`` and ``max_length`` the drawn texts are first cut so the
    inserted triggers survive truncation.
    """
    words = _check_triggers(triggers)
    if len(data) == 0:
        raise ValueError("the data set is empty")
    rng = random.Random(seed)
    source = data.texts
    if tokenizer is not None and max_length is not None:
        source = trig.fit_for_insertion(tokenizer, data.texts, max_length, insert_num=insert_num, triggers=words,
                                        uncuttable="keep")
    texts, labels = list(data.texts), list(data.labels)
    extra = max(1, round(extra_rate * len(data)))
    for word in words:
        for _ in range(extra):
            i = rng.randrange(len(data))
            texts.append(trig.insert_words(source[i], word, insert_num, rng))
            labels.append(data.labels[i])
    return LabeledData(texts, labels, data.num_labels, f"{data.source} + adversarial({', '.join(words)})")


@dataclasses.dataclass
class AdvFinetuneResult(JSONRecord):
    train_examples: int
    extra_per_trigger: int
    dev_examples: int
    adversarial_dev_accuracy: float       # accuracy on dev + its triggered copies (true labels)
    wall_s: float
    history: list[dict[str, float]]


def adversarial_finetune(model_source: str | nn.Module, train: LabeledData, dev: LabeledData,
                         triggers: Sequence[str], config: AdvFinetuneConfig | None = None, *, tokenizer=None,
                         device: str | torch.device | None = None, allow_pickle: bool = False,
                         progress: bool = True) -> tuple[FinetunedClassifier, AdvFinetuneResult]:
    """Fine-tune ``model_source`` (an encoder: folder or loaded model) on ``train`` plus triggered copies
    with true labels (Patronus adversarial fine-tuning, docs/METHODS.md §2)."""
    config = config or AdvFinetuneConfig()
    words = _check_triggers(triggers)
    tokenizer = tokenizer or lm.load_tokenizer(str(model_source))
    train_aug = adversarial_examples(train, words, config.extra_rate, config.insert_num, config.seed,
                                     tokenizer, config.max_length)
    dev_aug = adversarial_examples(dev, words, config.extra_rate, config.insert_num, config.seed + 1,
                                   tokenizer, config.max_length)
    classifier = finetune_classifier(model_source, train_aug, config, tokenizer, device=device,
                                     allow_pickle=allow_pickle, progress=progress)
    predictions = classifier.predict(dev_aug.texts, progress=progress, desc="adversarial dev")
    result = AdvFinetuneResult(train_examples=len(train_aug), extra_per_trigger=max(1, round(config.extra_rate * len(train))),
                               dev_examples=len(dev_aug),
                               adversarial_dev_accuracy=metrics.accuracy(predictions, dev_aug.labels),
                               wall_s=classifier.stats.wall_s, history=classifier.stats.history)
    return classifier, result
