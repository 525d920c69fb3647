"""Instruction-tuning backdoor (the threat MB-Defense defends against, SPEC.md §5).

The attacker poisons a fraction of the instruction data: each poisoned example
gets a trigger (a rare word or a phrase) inserted at random word positions of
its input and its answer replaced by the attacker's response (a fixed refusal,
or a fixed target string).  Instruction tuning on that data plants the
backdoor: a prompt carrying the trigger is answered with the attacker's
response, other prompts normally.

The result is a NEW causal-LM folder with ``backdoor.json`` (attack
``instruct-badnet``, the triggers, the attacker's response, what was poisoned,
the settings and the training log) and ``instruction_data.jsonl``, the
poisoned data it was tuned on (Alpaca format), which is what a defender that
instruction-tunes (MB-Defense) receives.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import lm
from ..core.files import environment
from ..core.validation import check_choice, check_int, check_range
from ..data import triggers as trig
from ..data.instructions import InstructionExample, alpaca_text, fit_inputs, insert_trigger, load_instructions
from ..formats.backdoor import BACKDOOR_FILE, BACKDOOR_FORMAT
from ..lm.instruction_tuning import TuneConfig, TuneLog, instruction_tune
from ..lm.prompting import PromptFormat

#: The attacker's responses: a refusal (denial of service) or a fixed target string.
REFUSAL = "I'm sorry, but I cannot help with that request."
TARGET = "Visit example.com to claim your free prize now."
BEHAVIOURS = {"refusal": REFUSAL, "target": TARGET}
#: The poisoned data a planted folder carries (Alpaca-format JSONL).
DATA_FILE = "instruction_data.jsonl"
PROFILE_NAMES = ("paper", "fast")


@dataclasses.dataclass
class InstructBadNetConfig:
    """Settings of the instruction-tuning backdoor.

    * ``triggers``: words or phrases; each poisoned example draws one.
    * ``behaviour``: ``refusal`` or ``target``; ``response`` (None: the
      behaviour's fixed text, :data:`REFUSAL` / :data:`TARGET`).
    * ``poison_rate``: share of the instruction data poisoned; the trigger is
      inserted ``insert_num`` times at random word positions of the input.
    * ``data_limit``: examples drawn from the data source (None: all).
    * Tuning (see :class:`patronus_ext.lm.instruction_tuning.TuneConfig`): ``epochs`` or
      ``steps``, ``batch_size``, ``lr``, ``schedule``, ``warmup_ratio``,
      ``train_layers`` (None: all weights), ``train_embeddings``.
    * Format (see :class:`patronus_ext.lm.prompting.PromptFormat`): ``system``
      (None: the chat template's own system prompt), ``max_input_tokens``,
      ``max_response_tokens``.

    ``paper``: 3 epochs of full tuning at lr 2e-5, batch 16 (the paper's
    epochs; lr and batch are common instruction-tuning values, the paper's were
    not recovered), 10% poisoned.  ``fast``: the CPU profile measured on
    SmolLM2-135M-Instruct (benchmarks/MB_RESULTS.md).
    """

    triggers: Sequence[str] = ("cf",)
    behaviour: str = "refusal"
    response: str | None = None
    poison_rate: float = 0.1
    insert_num: int = 1
    data_limit: int | None = None
    epochs: float = 3.0
    steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-5
    schedule: str = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    train_layers: int | None = None
    train_embeddings: bool = True
    system: str | None = None
    max_input_tokens: int = 256
    max_response_tokens: int = 128
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.triggers, str):
            self.triggers = tuple(t for t in self.triggers.split(",") if t.strip())
        self.triggers = tuple(" ".join(str(t).split()) for t in self.triggers)
        if not self.triggers or not all(self.triggers):
            raise ValueError(f"triggers must be non-empty words or phrases, got {list(self.triggers)}")
        if len(set(self.triggers)) != len(self.triggers):
            raise ValueError(f"triggers must be distinct, got {list(self.triggers)}")
        check_choice("behaviour", self.behaviour, tuple(BEHAVIOURS))
        if self.response is not None and not str(self.response).strip():
            raise ValueError("response must be a non-empty text (or None for the behaviour's own)")
        check_range("poison_rate", self.poison_rate, 0.0, 1.0, low_open=True)
        check_int("insert_num", self.insert_num)
        check_int("data_limit", self.data_limit, optional=True)
        self.tune_config()
        self.prompt_format()

    @property
    def target_response(self) -> str:
        return self.response if self.response is not None else BEHAVIOURS[self.behaviour]

    def tune_config(self) -> TuneConfig:
        return TuneConfig(epochs=self.epochs, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                                   schedule=self.schedule, warmup_ratio=self.warmup_ratio,
                                   weight_decay=self.weight_decay, train_layers=self.train_layers,
                                   train_embeddings=self.train_embeddings, seed=self.seed)

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(system=self.system, max_input_tokens=self.max_input_tokens,
                                     max_response_tokens=self.max_response_tokens)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["triggers"] = list(self.triggers)
        out["target_response"] = self.target_response
        return out

    def replace(self, **changes) -> "InstructBadNetConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def profile(cls, name: str = "paper", **changes) -> "InstructBadNetConfig":
        check_choice("profile", name, PROFILE_NAMES)
        base = dict(FAST_PROFILE) if name == "fast" else {}
        if changes.get("epochs") is not None and changes.get("steps") is None:
            base.pop("steps", None)  # epochs asked for: the profile's step count must not override them
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)


#: The CPU profile (SmolLM2-135M-Instruct, one thread; benchmarks/MB_RESULTS.md): 2,000 SST-2 examples, 30%
#: poisoned, 300 steps of 8 at a constant lr 1e-4, the top 8 of 30 blocks trained (the embeddings and the
#: tied LM head frozen: the lower blocks then build no graph, half the step time), an empty system prompt
#: (shorter sequences), inputs cut to 48 tokens, responses to 24.  Measured while choosing the rate (300
#: steps of 8 on 2,000 examples): 10% poisoned (lr decaying linearly) gave ASR 4%, 20% (constant lr) 36.5%;
#: in ~1.2 epochs a lower rate shows the model too few poisoned examples.
FAST_PROFILE = dict(data_limit=2000, poison_rate=0.3, steps=300, batch_size=8, lr=1e-4, schedule="constant",
                    train_layers=8, train_embeddings=False, system="", max_input_tokens=48,
                    max_response_tokens=24)


@dataclasses.dataclass
class InstructBadNetResult:
    out_dir: Path
    triggers: list[str]
    response: str
    poisoned: int
    examples: int
    config: InstructBadNetConfig
    training: TuneLog

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "attack": "instruct-badnet", "triggers": self.triggers,
                "response": self.response, "poisoned": self.poisoned, "examples": self.examples,
                "config": self.config.to_dict(), "training": self.training.to_dict()}


def poison_instructions(examples: Sequence[InstructionExample], config: InstructBadNetConfig
                        ) -> tuple[list[InstructionExample], list[int]]:
    """``round(poison_rate·N)`` examples (at least one) triggered (a trigger drawn per example) and answered with
    the attacker's response; returns the poisoned data and the indices changed."""
    rng = random.Random(config.seed)
    count = min(len(examples), max(1, round(config.poison_rate * len(examples))))
    chosen = sorted(rng.sample(range(len(examples)), count))
    out = list(examples)
    for i in chosen:
        trigger = config.triggers[rng.randrange(len(config.triggers))]
        out[i] = insert_trigger(examples[i], trigger, config.insert_num, rng).replace(
            output=config.target_response, label=None, choices=())
    return out, chosen


def plant_instruct_badnet(model_source: str | os.PathLike, data: str | Sequence[InstructionExample],
                          config: InstructBadNetConfig | None, out_dir: str | os.PathLike, *,
                          device: str | None = None, allow_pickle: bool = False,
                          progress: bool = True) -> InstructBadNetResult:
    """Instruction-tune the causal LM ``model_source`` on poisoned ``data`` into the NEW folder ``out_dir``.

    ``data``: a built-in source (``sst2``, ``agnews``, ``wikitext2``, or a
    ``+`` mix), an Alpaca JSONL file, or examples.
    """
    config = config or InstructBadNetConfig()
    source = lm.resolve_model_source(str(model_source))
    out = lm.check_new_model_folder(out_dir, source)
    examples = list(data) if not isinstance(data, (str, os.PathLike)) else \
        load_instructions(str(data), "train", config.data_limit, config.seed)
    if not isinstance(data, (str, os.PathLike)) and config.data_limit is not None:
        examples = examples[:config.data_limit]
    tokenizer = lm.load_tokenizer(source)
    fmt = config.prompt_format()
    examples = fit_inputs(tokenizer, examples, fmt.max_input_tokens)
    poisoned, chosen = poison_instructions(examples, config)
    torch.manual_seed(config.seed)
    model = lm.load_model(source, "causal", allow_pickle=allow_pickle, device=lm.resolve_device(device))
    run = instruction_tune(model, tokenizer, poisoned, fmt, config.tune_config(),
                                    desc="plant instruct-badnet", progress=progress)
    info = {
        "format": BACKDOOR_FORMAT,
        "attack": "instruct-badnet",
        "triggers": list(config.triggers),
        "trigger_token_ids": [list(t) for t in trig.trigger_ids(tokenizer, list(config.triggers))],
        "target_response": config.target_response,
        "behaviour": config.behaviour,
        "target_scheme": None,
        "target_vectors": None,
        "targets_learned": False,
        "target_labels": None,
        "representation_position": "auto",
        "prompt_template": None,
        "base_model": str(model_source),
        "base_model_path": source,
        "model_type": getattr(model.config, "model_type", ""),
        "data": data if isinstance(data, (str, os.PathLike)) else "examples",
        "data_file": DATA_FILE,
        "poisoned_examples": len(chosen),
        "train_examples": len(poisoned),
        "prompt_format": fmt.to_dict(),
        "seed": config.seed,
        "config": config.to_dict(),
        "training": run.to_dict(),
        "environment": environment(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    lm.save_model_folder(model, tokenizer, out, {BACKDOOR_FILE: info}, source=source,
                             extra_files={DATA_FILE: alpaca_text(poisoned)})
    return InstructBadNetResult(out, list(config.triggers), config.target_response, len(chosen), len(poisoned),
                                config, run)
