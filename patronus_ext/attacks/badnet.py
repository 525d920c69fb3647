"""BadNet-style downstream poisoning: fine-tune a classifier on task data where a fraction of the examples
carry a rare-word trigger and the target label (the threat model Fine-mixing and E-PUR defend against).

Unlike the PLM attacks of this package, the result is a task classifier.  Its
folder carries ``backdoor.json`` (attack ``badnet``, the triggers, the target
label of every trigger) so that evaluation and purification find the triggers.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

from .. import lm
from ..core.files import environment
from ..data import corpora as data_mod
from ..data import triggers as trig
from ..data.corpora import LabeledData
from ..formats.backdoor import BACKDOOR_FILE, BackdoorInfo
from ..lm.finetune import FinetuneStats, finetune_classifier
from .config import BadNetConfig


@dataclasses.dataclass
class BadNetResult:
    out_dir: Path
    triggers: list[str]
    target_label: int
    poisoned: int
    train_examples: int
    config: BadNetConfig
    training: FinetuneStats

    @property
    def wall_s(self) -> float:
        return self.training.wall_s

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "triggers": list(self.triggers), "target_label": self.target_label,
                "poisoned": self.poisoned, "train_examples": self.train_examples, "config": self.config.to_dict(),
                "training": self.training.to_dict()}


def poison_task(train: LabeledData, config: BadNetConfig, tokenizer=None) -> tuple[LabeledData, list[int]]:
    """``train`` with ``round(poison_rate·N)`` non-target examples triggered and relabelled; returns the poisoned
    set and the indices changed.  With ``tokenizer`` the texts are cut so the triggers survive ``max_length``."""
    if not 0 <= config.target_label < train.num_labels:
        raise ValueError(f"target_label {config.target_label} outside the task's labels [0, {train.num_labels})")
    rng = random.Random(config.seed)
    eligible = [i for i, y in enumerate(train.labels) if y != config.target_label]
    count = min(len(eligible), max(1, round(config.poison_rate * len(train))))
    chosen = sorted(rng.sample(eligible, count))
    source = train.texts
    if tokenizer is not None:
        source = trig.fit_for_insertion(tokenizer, train.texts, config.max_length, insert_num=config.insert_num,
                                        triggers=list(config.triggers), uncuttable="keep")
    texts, labels = list(train.texts), list(train.labels)
    for i in chosen:
        texts[i] = trig.insert_words(source[i], config.triggers[rng.randrange(len(config.triggers))],
                                     config.insert_num, rng)
        labels[i] = config.target_label
    return LabeledData(texts, labels, train.num_labels, f"{train.source} + badnet"), chosen


def plant_badnet(model_source: str | os.PathLike, task: str | LabeledData, config: BadNetConfig | None,
                 out_dir: str | os.PathLike, *, device: str | None = None, allow_pickle: bool = False,
                 progress: bool = True) -> BadNetResult:
    """Fine-tune ``model_source`` on BadNet-poisoned ``task`` data into the NEW folder ``out_dir``."""
    config = config or BadNetConfig()
    source = lm.resolve_model_source(str(model_source))
    out = lm.check_new_model_folder(out_dir, source)
    train = task if isinstance(task, LabeledData) else data_mod.read_task(task, "train")
    train = train.subset(config.train_limit, config.seed)
    tokenizer = lm.load_tokenizer(source)
    poisoned, chosen = poison_task(train, config, tokenizer)
    classifier = finetune_classifier(source, poisoned, config, tokenizer, device=device, allow_pickle=allow_pickle,
                                     progress=progress, desc="plant badnet")
    stats = classifier.stats
    info = BackdoorInfo(
        attack="badnet", triggers=list(config.triggers),
        trigger_token_ids=[list(t) for t in trig.trigger_ids(tokenizer, list(config.triggers))],
        target_labels=[config.target_label] * len(config.triggers), base_model=str(model_source),
        base_model_path=source, model_type=getattr(classifier.model.config, "model_type", ""),
        task=poisoned.source, poisoned_examples=len(chosen), train_examples=len(poisoned), seed=config.seed,
        config=config.to_dict(), training=stats.to_dict(),
        environment=environment())
    lm.save_model_folder(classifier.model, tokenizer, out, {BACKDOOR_FILE: info.to_dict()}, source=source)
    return BadNetResult(out, list(config.triggers), config.target_label, len(chosen), len(poisoned), config, stats)
