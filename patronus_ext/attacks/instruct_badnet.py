"""Instruction-tuning backdoor (the threat MB-Defense defends against, docs/METHODS.md §5).

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
import os
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import lm
from ..core.files import environment
from ..data import triggers as trig
from ..data.instructions import InstructionExample, alpaca_text, fit_inputs, insert_trigger, load_instructions
from ..formats.backdoor import BACKDOOR_FILE, BackdoorInfo
from ..lm.instruction_tuning import TuneLog, instruction_tune
from .config import InstructBadNetConfig

#: The poisoned data a planted folder carries (Alpaca-format JSONL).
DATA_FILE = "instruction_data.jsonl"


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
    run = instruction_tune(model, tokenizer, poisoned, fmt, config,
                                    desc="plant instruct-badnet", progress=progress)
    info = BackdoorInfo(
        attack="instruct-badnet", triggers=list(config.triggers),
        trigger_token_ids=[list(t) for t in trig.trigger_ids(tokenizer, list(config.triggers))],
        target_response=config.target_response, behaviour=config.behaviour, base_model=str(model_source),
        base_model_path=source, model_type=getattr(model.config, "model_type", ""),
        data=str(data) if isinstance(data, (str, os.PathLike)) else "examples", data_file=DATA_FILE,
        poisoned_examples=len(chosen), train_examples=len(poisoned), prompt_format=fmt.to_dict(), seed=config.seed,
        config=config.to_dict(), training=run.to_dict(), environment=environment())
    lm.save_model_folder(model, tokenizer, out, {BACKDOOR_FILE: info.to_dict()}, source=source,
                             extra_files={DATA_FILE: alpaca_text(poisoned)})
    return InstructBadNetResult(out, list(config.triggers), config.target_response, len(chosen), len(poisoned),
                                config, run)
