"""Which folder a model given to the audit is, and its content hash (the audit's resume key).

The hash covers what loading a model reads (weights, configuration, tokenizer
files at the top of the folder: names and bytes, streamed), so the same
checkpoint under two paths is one model, and a renamed or moved folder is not
scanned again.  Documentation and the package's own records (``backdoor.json``
of a planted model, ``purify.json``) are left out: they change no weight.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
from pathlib import Path
from typing import Iterable

from .. import lm

#: Top-level files that loading a model (weights, config, tokenizer) reads.
MODEL_FILE_PATTERNS = ("*.safetensors", *lm.PICKLE_PATTERNS, "*.json", "*.txt", "*.model", "*.tiktoken")
#: Records beside the weights that say something about a model without being part of it.
RECORD_FILES = frozenset({"backdoor.json", "purify.json"})
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model given to the audit: the name as given, the folder a scan loads, its content hash."""

    model: str
    folder: str | None = None
    content_hash: str | None = None
    error: str | None = None      # why there is no folder or hash (missing path, hub fetch failed, ...)


def model_files(folder: str | os.PathLike) -> list[Path]:
    """The files of ``folder`` that the content hash covers, sorted by name."""
    root = Path(folder)
    return sorted((p for p in root.iterdir()
                   if p.is_file() and p.name not in RECORD_FILES and not p.name.startswith(".")
                   and any(fnmatch.fnmatch(p.name, pattern) for pattern in MODEL_FILE_PATTERNS)),
                  key=lambda p: p.name)


def content_hash(folder: str | os.PathLike) -> str:
    """SHA-256 over (name, size, bytes) of :func:`model_files`, read in 1 MiB chunks (never whole in memory)."""
    files = model_files(folder)
    if not files:
        raise ValueError(f"{folder}: no model files ({', '.join(MODEL_FILE_PATTERNS)})")
    digest = hashlib.sha256()
    for path in files:
        name = path.name.encode("utf-8")
        # Lengths first, so (name, bytes) pairs cannot run into each other.
        digest.update(len(name).to_bytes(8, "little") + name + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_folder(model: str) -> str:
    """The local folder of ``model``: a folder, the packaged ``all-MiniLM-L6-v2``, or a hub id fetched into the
    Hugging Face cache (weights, config and tokenizer files only)."""
    source = lm.resolve_model_source(model)
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=source, allow_patterns=list(MODEL_FILE_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found errors come in many types
        raise lm.ModelLoadError(f"{source}: not a local folder and cannot be fetched from the hub "
                                    f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc


def describe_source(model: str) -> ModelSource:
    """Resolve and hash one model; a failure becomes ``error`` (the audit records it and goes on)."""
    try:
        folder = resolve_folder(model)
        return ModelSource(model, folder, content_hash(folder))
    except (OSError, ValueError, RuntimeError) as exc:
        return ModelSource(model, error=" ".join(str(exc).split()) or type(exc).__name__)


def read_model_list(path: str | os.PathLike) -> list[str]:
    """Models listed one per line; blank lines and lines starting with ``#`` are skipped."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


def unique(names: Iterable[str]) -> list[str]:
    """``names`` without repeats, first occurrence kept (a model listed twice is audited once)."""
    return list(dict.fromkeys(names))
