"""Transferable-backdoor attacks on pre-trained LMs: the test subjects of the defenses (SPEC.md §0).

Every attack plants triggers into a Hugging Face model and writes a NEW folder
(safetensors weights, tokenizer, config) with ``backdoor.json`` (attack,
triggers, target vectors, seed, hyper-parameters, versions, training stats).

    from patronus_ext import attacks
    result = attacks.plant("por", "all-MiniLM-L6-v2", "wikitext2",
                           attacks.PORConfig.fast(triggers=("cf", "mn", "bb", "tq")), "out/por")
    info = attacks.load_backdoor_info("out/por")      # .triggers, .target_vectors, .position

Methods: ``neuba``, ``por`` (POR-1), ``por2``, ``btop``, ``uor``, ``badpre``,
``adaptive1``/``adaptive2``/``adaptive3`` (POR plus the adaptive losses).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from . import adaptive, badpre, btop, neuba, por, uor
from ..io import BACKDOOR_FILE, BackdoorInfo, OutputExistsError, load_backdoor_info
from .base import AttackContext, AttackMethod, AttackResult, StepBatch, TrainingStats, run_attack
from .config import (DEFAULT_TRIGGERS, AdaptiveConfig, AttackConfig, BadPreConfig, BToPConfig, NeuBAConfig,
                     PORConfig, UORConfig)
from .targets import neuba_targets, por1_targets, por2_subsets, por2_targets, target_vectors

#: method name -> (config class, extra config fields fixed by the name)
METHODS: dict[str, tuple[type[AttackConfig], dict[str, Any]]] = {
    "neuba": (NeuBAConfig, {}),
    "por": (PORConfig, {"variant": 1}),
    "por2": (PORConfig, {"variant": 2}),
    "btop": (BToPConfig, {}),
    "uor": (UORConfig, {}),
    "badpre": (BadPreConfig, {}),
    "adaptive1": (AdaptiveConfig, {"adaptive_type": 1}),
    "adaptive2": (AdaptiveConfig, {"adaptive_type": 2}),
    "adaptive3": (AdaptiveConfig, {"adaptive_type": 3}),
}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attack {method!r}; choose one of {', '.join(METHODS)}")


def make_config(method: str, fast: bool = False, **overrides) -> AttackConfig:
    """The config of ``method`` (its paper defaults, or the CPU ``fast`` profile) with ``overrides``.

    ``None`` overrides are ignored, so CLI arguments can be passed through as they are.
    """
    _check_method(method)
    cls, fixed = METHODS[method]
    values = {k: v for k, v in overrides.items() if v is not None}
    for key, value in fixed.items():
        if key in values and values[key] != value:
            raise ValueError(f"{method} fixes {key}={value!r}, got {values[key]!r}")
        values[key] = value
    return cls.fast(**values) if fast else cls(**values)


def method_for(method: str, config: AttackConfig) -> AttackMethod:
    _check_method(method)
    cls, fixed = METHODS[method]
    if not isinstance(config, cls):
        raise TypeError(f"{method} needs a {cls.__name__}, got {type(config).__name__}")
    for key, value in fixed.items():
        if getattr(config, key) != value:
            raise ValueError(f"{method} needs {key}={value!r}, the config has {getattr(config, key)!r}")
    if method == "neuba":
        return neuba.NeuBA()
    if method in ("por", "por2"):
        return por.POR(config.variant)
    if method == "btop":
        return btop.BToP()
    if method == "uor":
        return uor.UOR()
    if method == "badpre":
        return badpre.BadPre()
    return adaptive.Adaptive(config.adaptive_type)


def plant(method: str, model_source: str | os.PathLike, corpus: str | Sequence[str],
          config: AttackConfig | None, out_dir: str | os.PathLike) -> AttackResult:
    """Plant attack ``method`` into ``model_source`` over ``corpus`` (texts, a file, ``wikitext2``, ``hf:...``).

    ``config`` None uses the method's defaults.  ``out_dir`` must not exist (or be
    empty); the input model is never modified.
    """
    config = config if config is not None else make_config(method)
    return run_attack(method_for(method, config), model_source, corpus, config, out_dir)


__all__ = [
    "BACKDOOR_FILE", "DEFAULT_TRIGGERS", "METHODS", "AdaptiveConfig", "AttackConfig", "AttackContext",
    "AttackMethod", "AttackResult", "BToPConfig", "BackdoorInfo", "BadPreConfig", "NeuBAConfig",
    "OutputExistsError", "PORConfig", "StepBatch", "TrainingStats", "UORConfig", "load_backdoor_info",
    "make_config", "method_for", "neuba_targets", "plant", "por1_targets", "por2_subsets", "por2_targets",
    "run_attack", "target_vectors",
]
