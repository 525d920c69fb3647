"""Transferable-backdoor attacks on pre-trained LMs: the test subjects of the defenses (docs/METHODS.md §0).

Every attack plants triggers into a Hugging Face model and writes a NEW folder
(safetensors weights, tokenizer, config) with ``backdoor.json`` (attack,
triggers, target vectors, seed, hyper-parameters, versions, training stats).

    from patronus_ext import attacks
    result = attacks.plant("por", "all-MiniLM-L6-v2", "wikitext2",
                           attacks.PORConfig.profile("fast", triggers=("cf", "mn", "bb", "tq")), "out/por")
    info = attacks.load_backdoor_info("out/por")      # .triggers, .target_vectors, .position

Methods: ``neuba``, ``por`` (POR-1), ``por2``, ``btop``, ``uor``, ``badpre``,
``adaptive1``/``adaptive2``/``adaptive3`` (POR plus the adaptive losses).  Data-poisoning attacks
(``DOWNSTREAM_METHODS``): ``badnet`` (a poisoned classification task) and ``instruct-badnet`` (poisoned
instruction tuning of a causal LM, the threat MB-Defense defends against).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from ..core.files import OutputExistsError
from ..formats.backdoor import BACKDOOR_FILE, BackdoorInfo, load_backdoor_info
from .adaptive import Adaptive
from .badnet import BadNetResult, plant_badnet, poison_task
from .badpre import BadPre
from .base import AttackContext, AttackMethod, AttackResult, StepBatch, TrainingStats, run_attack
from .btop import BToP
from .config import (
    BEHAVIOURS,
    DEFAULT_TRIGGERS,
    REFUSAL,
    TARGET,
    AdaptiveConfig,
    AttackConfig,
    BadNetConfig,
    BadPreConfig,
    BToPConfig,
    InstructBadNetConfig,
    NeuBAConfig,
    PORConfig,
    UORConfig,
)
from .instruct_badnet import InstructBadNetResult, plant_instruct_badnet, poison_instructions
from .neuba import NeuBA
from .por import POR
from .targets import neuba_targets, por1_targets, por2_subsets, por2_targets, target_vectors
from .uor import UOR

#: method name -> (its AttackMethod, config class, config fields fixed by the name)
METHODS: dict[str, tuple[Callable[[], AttackMethod], type[AttackConfig], dict[str, Any]]] = {
    "neuba": (NeuBA, NeuBAConfig, {}),
    "por": (lambda: POR(1), PORConfig, {"variant": 1}),
    "por2": (lambda: POR(2), PORConfig, {"variant": 2}),
    "btop": (BToP, BToPConfig, {}),
    "uor": (UOR, UORConfig, {}),
    "badpre": (BadPre, BadPreConfig, {}),
    "adaptive1": (lambda: Adaptive(1), AdaptiveConfig, {"adaptive_type": 1}),
    "adaptive2": (lambda: Adaptive(2), AdaptiveConfig, {"adaptive_type": 2}),
    "adaptive3": (lambda: Adaptive(3), AdaptiveConfig, {"adaptive_type": 3}),
}
#: Downstream (task-data) poisoning attacks: name -> (plant function, config class).  Not in METHODS: they
#: fine-tune a classifier on poisoned task data rather than plant into a PLM over a corpus.
DOWNSTREAM_METHODS: dict[str, tuple[Callable[..., Any], type]] = {
    "badnet": (plant_badnet, BadNetConfig),
    "instruct-badnet": (plant_instruct_badnet, InstructBadNetConfig),
}


def _check_method(method: str, downstream: bool = False) -> None:
    if method not in METHODS and not (downstream and method in DOWNSTREAM_METHODS):
        names = list(METHODS) + (list(DOWNSTREAM_METHODS) if downstream else [])
        raise ValueError(f"unknown attack {method!r}; choose one of {', '.join(names)}")


def make_config(method: str, profile: str = "paper", *, fast: bool | None = None, **overrides) -> AttackConfig:
    """The config of ``method`` in ``profile`` (``paper``: its defaults; ``fast``: the CPU profile) with ``overrides``.

    The one override rule of :mod:`patronus_ext.core.profiles` applies: ``None``
    overrides are ignored, so CLI arguments can be passed through as they are;
    explicit ``epochs`` drop the profile's ``steps``; a setting the method does
    not have, or ``steps`` together with ``epochs``, is a ``ValueError`` naming
    it.  ``fast=True`` is an alias of ``profile="fast"``.
    """
    _check_method(method, downstream=True)
    if fast:
        profile = "fast"
    values = {key: value for key, value in overrides.items() if value is not None}
    if method in DOWNSTREAM_METHODS:
        cls = DOWNSTREAM_METHODS[method][1]
        foreign = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if foreign:
            raise ValueError(f"{method} has no setting {', '.join(foreign)}")
        return cls.profile(profile, **values)
    _, cls, fixed = METHODS[method]
    known = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(values) - known)
    if foreign:
        owners = {name: [m for m, (_, c, _) in METHODS.items() if name in {f.name for f in dataclasses.fields(c)}]
                  for name in foreign}
        raise ValueError("; ".join(f"{name} applies to {', '.join(owners[name])} only" if owners[name]
                                   else f"attacks have no setting {name}" for name in foreign))
    for key, value in fixed.items():
        if key in values and values[key] != value:
            raise ValueError(f"{method} fixes {key}={value!r}, got {values[key]!r}")
        values[key] = value
    return cls.profile(profile, **values)


def method_for(method: str, config: AttackConfig) -> AttackMethod:
    """The :class:`AttackMethod` of ``method``, after checking ``config`` fits it."""
    _check_method(method)
    build, cls, fixed = METHODS[method]
    if not isinstance(config, cls):
        raise TypeError(f"{method} needs a {cls.__name__}, got {type(config).__name__}")
    for key, value in fixed.items():
        if getattr(config, key) != value:
            raise ValueError(f"{method} needs {key}={value!r}, the config has {getattr(config, key)!r}")
    return build()


def plant(method: str, model_source: str | os.PathLike, corpus: str | Sequence[str],
          config: AttackConfig | None, out_dir: str | os.PathLike, *, device: str | None = None,
          allow_pickle: bool = False, progress: bool = True) -> AttackResult:
    """Plant attack ``method`` into ``model_source`` over ``corpus`` (texts, a file, ``wikitext2``, ``hf:...``).

    ``config`` None uses the method's defaults.  ``out_dir`` must not exist (or be
    empty); the input model is never modified.  ``device`` None: CUDA when
    available, else the CPU; ``allow_pickle`` lets pickle-only checkpoints load
    with ``torch.load(weights_only=True)``.
    """
    config = config if config is not None else make_config(method)
    if method in DOWNSTREAM_METHODS:
        plant_fn, cls = DOWNSTREAM_METHODS[method]
        if not isinstance(config, cls):
            raise TypeError(f"{method} needs a {cls.__name__}, got {type(config).__name__}")
        return plant_fn(model_source, corpus, config, out_dir, device=device, allow_pickle=allow_pickle,
                        progress=progress)
    return run_attack(method_for(method, config), model_source, corpus, config, out_dir, device=device,
                      allow_pickle=allow_pickle, progress=progress)


__all__ = [
    "AdaptiveConfig", "AttackConfig", "AttackContext", "AttackMethod", "AttackResult", "BACKDOOR_FILE",
    "BackdoorInfo", "BadNetConfig", "BadNetResult", "BadPreConfig", "BEHAVIOURS", "BToPConfig", "DEFAULT_TRIGGERS",
    "DOWNSTREAM_METHODS", "InstructBadNetConfig", "InstructBadNetResult", "load_backdoor_info", "make_config",
    "method_for", "METHODS", "neuba_targets", "NeuBAConfig", "OutputExistsError", "plant", "plant_badnet",
    "plant_instruct_badnet", "poison_instructions", "poison_task", "por1_targets", "por2_subsets", "por2_targets",
    "PORConfig", "REFUSAL", "run_attack", "StepBatch", "TARGET", "target_vectors", "TrainingStats", "UORConfig"
]
