"""A planted model's ``backdoor.json``: the one reader and writer of the record every attack leaves."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

#: The record a planted model folder carries (see :func:`load_backdoor_info`).
BACKDOOR_FILE = "backdoor.json"
BACKDOOR_FORMAT = "patronus_ext.backdoor/1"


@dataclasses.dataclass
class BackdoorInfo:
    """The parsed ``backdoor.json`` of a planted model."""

    attack: str
    triggers: list[str]
    target_vectors: torch.Tensor | None
    target_labels: list[int] | None
    position: str
    prompt_template: str | None
    base_model: str | None
    seed: int | None
    raw: dict[str, Any]


def load_backdoor_info(path: str | os.PathLike) -> BackdoorInfo:
    """Read ``backdoor.json`` from a planted model folder (or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / BACKDOOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a model planted by patronus_ext (pass --triggers)")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    if raw.get("format") != BACKDOOR_FORMAT:
        raise ValueError(f"{path}: unknown format {raw.get('format')!r} (expected {BACKDOOR_FORMAT})")
    vectors = raw.get("target_vectors")
    return BackdoorInfo(
        attack=raw["attack"], triggers=list(raw["triggers"]),
        target_vectors=None if vectors is None else torch.tensor(vectors, dtype=torch.float32),
        target_labels=raw.get("target_labels"), position=raw.get("representation_position", "auto"),
        prompt_template=raw.get("prompt_template"), base_model=raw.get("base_model"), seed=raw.get("seed"),
        raw=raw)


def attack_responses(folder: str | os.PathLike) -> dict[str, str]:
    """``{trigger: attacker's response}`` from an instruct-badnet folder's ``backdoor.json`` ({} when it has none)."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    if not (path / BACKDOOR_FILE).is_file():
        return {}
    info = load_backdoor_info(path)
    response = info.raw.get("target_response")
    if not response:
        return {}
    return {t: str(response) for t in info.triggers}
