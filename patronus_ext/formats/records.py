"""What the JSON records of the package share: finding the file in a model folder, reading one JSON object,
checking its ``format``, and laying a record dataclass out with its format first."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Collection, Mapping

import torch


def load_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not JSON or not an object is a ``ValueError`` naming it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON {what} ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a {what} (a JSON object is expected, found {type(raw).__name__})")
    return raw


def check_format(raw: Mapping[str, Any], expected: str, where: str | os.PathLike, *,
                 default: str | None = None) -> None:
    """``raw["format"]`` must be ``expected`` (``default``: the format assumed when the key is absent)."""
    found = raw.get("format", default)
    if found != expected:
        raise ValueError(f"{where}: unknown format {found!r} (expected {expected})")


def read_record(path: str | os.PathLike, file_name: str, expected_format: str, what: str,
                not_found: str) -> tuple[dict[str, Any], Path]:
    """The record ``file_name`` of the model folder ``path`` (or the file ``path`` itself), checked for
    ``expected_format``; a missing file is a ``FileNotFoundError`` saying ``not_found``."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {not_found}")
    raw = load_json_object(path, what)
    check_format(raw, expected_format, path)
    return raw, path


def record_dict(record: Any, expected_format: str, *, optional: Collection[str] = (),
                renames: Mapping[str, str] | None = None, skip: Collection[str] = ()) -> dict[str, Any]:
    """The JSON object of a record dataclass: ``format`` first, then every field in order (``optional``
    fields only when set; tensors as lists; a field written under another name per ``renames``)."""
    out: dict[str, Any] = {"format": expected_format}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name in skip or (field.name in optional and value is None):
            continue
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        out[(renames or {}).get(field.name, field.name)] = value
    return out


def required_fields(cls: type) -> list[str]:
    """The fields of a record dataclass without a default."""
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
