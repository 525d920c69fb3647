"""A planted model's ``backdoor.json``: the one reader and writer of the record every attack leaves.

Every attack (the representation attacks, BadNet, instruct-badnet) describes
what it planted as a :class:`BackdoorInfo` and writes it with
:meth:`BackdoorInfo.to_dict` into the model folder; evaluation, purification
and the benchmarks read it back with :func:`load_backdoor_info`.  Every field
round-trips; the fields an attack does not have are ``None`` (and absent from
the file when they belong to another kind of attack).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any

import torch

from .records import read_record, record_dict

#: The record a planted model folder carries (see :func:`load_backdoor_info`).
BACKDOOR_FILE = "backdoor.json"
BACKDOOR_FORMAT = "patronus_ext.backdoor/1"
#: Fields written only when set: they describe one kind of attack (data poisoning, instruction tuning).
OPTIONAL_FIELDS = ("target_response", "behaviour", "task", "data", "data_file", "poisoned_examples",
                   "train_examples", "prompt_format")


@dataclasses.dataclass(eq=False)  # records compare by to_dict(): a tensor field has no truth value
class BackdoorInfo:
    """What was planted, where the representation is read, from which model, with which settings.

    ``triggers`` / ``trigger_token_ids``: the planted triggers (as written in
    text, and their ids under the model's tokenizer).  ``target_vectors``
    ``[K, d]`` (None for untargeted attacks and data poisoning; learned means
    for UOR, ``targets_learned``); ``target_labels``: the label each trigger
    forces (data poisoning of a classifier); ``target_response``: the answer
    each trigger forces (instruction tuning).  ``position`` is where the
    representation is read (``representation_position`` in the file).
    """

    attack: str
    triggers: list[str]
    trigger_token_ids: list[list[int]] = dataclasses.field(default_factory=list)
    target_scheme: str | None = None
    target_vectors: torch.Tensor | None = None
    targets_learned: bool = False
    target_labels: list[int] | None = None
    position: str = "auto"
    prompt_template: str | None = None
    target_response: str | None = None
    behaviour: str | None = None
    base_model: str | None = None
    base_model_path: str | None = None
    model_type: str = ""
    task: str | None = None
    data: str | None = None
    data_file: str | None = None
    poisoned_examples: int | None = None
    train_examples: int | None = None
    prompt_format: dict[str, Any] | None = None
    seed: int | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    #: The file as read (every key, also ones a later version added); empty for a record made in memory.
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.triggers:
            raise ValueError("a backdoor record names at least one trigger")
        if not self.created:
            self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def responses(self) -> dict[str, str]:
        """``{trigger: the attacker's response}`` of an instruction backdoor ({} for other attacks)."""
        return {t: str(self.target_response) for t in self.triggers} if self.target_response else {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``backdoor.json``."""
        return record_dict(self, BACKDOOR_FORMAT, optional=OPTIONAL_FIELDS, skip=("raw",),
                           renames={"position": "representation_position"})


def load_backdoor_info(path: str | os.PathLike) -> BackdoorInfo:
    """Read ``backdoor.json`` from a planted model folder (or the file itself)."""
    raw, path = read_record(path, BACKDOOR_FILE, BACKDOOR_FORMAT, "backdoor record",
                            "not a model planted by patronus_ext (pass --triggers)")
    if not isinstance(raw.get("attack"), str) or not isinstance(raw.get("triggers"), list):
        raise ValueError(f"{path}: a backdoor record needs 'attack' and a 'triggers' list")
    names = {f.name for f in dataclasses.fields(BackdoorInfo)} - {"raw", "position"}
    values = {key: raw[key] for key in names if key in raw}
    vectors = raw.get("target_vectors")
    values["target_vectors"] = None if vectors is None else torch.tensor(vectors, dtype=torch.float32)
    values["triggers"] = list(raw["triggers"])
    values["position"] = raw.get("representation_position", "auto")
    return BackdoorInfo(**values, raw=raw)


def find_backdoor_info(place: str | os.PathLike) -> BackdoorInfo | None:
    """The record of the model folder ``place`` (or of the folder holding the file ``place``, e.g. its
    instruction data), or None where there is none (a hub id, a clean model)."""
    path = Path(place)
    if path.is_file():
        path = path.parent
    if not (path / BACKDOOR_FILE).is_file():
        return None
    return load_backdoor_info(path)
