"""The one attack-vector bank format of the package.

A bank is what an output monitor compares every served representation with:
``K`` attack vectors ``[K, d]`` (LMSanitator's inverted predefined vectors, or a
Patronus scan's mean triggered representation per confirmed trigger group),
stored as safetensors with one tensor ``vectors`` and string metadata naming
the model, the representation position, the method that produced it and a
label per vector.  Writes are atomic (temporary file, then rename) and never
replace an existing file without ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.files import atomic_write

BANK_FORMAT = "patronus_ext.bank/1"
TENSOR = "vectors"


@dataclasses.dataclass
class AttackBank:
    """``vectors [K, d]`` and what they are."""

    vectors: torch.Tensor
    model: str                       # the model the vectors were found in (path or name)
    position: str                    # where the representation is read: first | last | eos | mask
    method: str                      # patronus | lmsanitator | ...
    labels: list[str] = dataclasses.field(default_factory=list)   # one per vector (e.g. the trigger group)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.vectors, torch.Tensor) or self.vectors.dim() != 2 or self.vectors.shape[0] < 1:
            shape = tuple(self.vectors.shape) if isinstance(self.vectors, torch.Tensor) else type(self.vectors)
            raise ValueError(f"a bank needs vectors of shape [K >= 1, d], got {shape}")
        if not torch.isfinite(self.vectors).all():
            raise ValueError("bank vectors must be finite")
        self.vectors = self.vectors.detach().to("cpu", torch.float32).contiguous()
        if not self.labels:
            self.labels = [f"vector-{i}" for i in range(len(self))]
        if len(self.labels) != len(self):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} vectors")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def metadata(self) -> dict[str, str]:
        return {"format": BANK_FORMAT, "model": str(self.model), "position": str(self.position),
                "method": str(self.method), "labels": json.dumps(list(self.labels)),
                "extra": json.dumps(self.extra, default=str)}


def save_bank(bank: AttackBank, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``bank`` as safetensors, atomically."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file({TENSOR: bank.vectors}, tmp, metadata=bank.metadata()),
                        overwrite)


def load_bank(path: str | os.PathLike) -> AttackBank:
    """Read a bank written by :func:`save_bank`; anything else is a ``ValueError`` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bank {path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if TENSOR not in handle.keys():
                raise ValueError(f"{path}: no tensor {TENSOR!r} (tensors: {sorted(handle.keys())})")
            vectors = handle.get_tensor(TENSOR)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors reports a corrupt file with its own error type
        raise ValueError(f"{path}: not a readable safetensors bank ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != BANK_FORMAT:
        raise ValueError(f"{path}: unknown bank format {meta.get('format')!r} (expected {BANK_FORMAT})")
    try:
        labels = json.loads(meta.get("labels", "[]"))
        extra = json.loads(meta.get("extra", "{}"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt bank metadata ({exc})") from exc
    return AttackBank(vectors, meta.get("model", ""), meta.get("position", ""), meta.get("method", ""), labels, extra)

