"""JSON reports and output paths: written atomically, never overwriting without consent."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch


class OutputExistsError(FileExistsError, ValueError):
    """An output path exists and may not be replaced.

    Also a ``ValueError`` so that the CLI reports it as a usage error (exit 2)
    rather than a traceback; still a ``FileExistsError`` for callers.
    """


def environment() -> dict[str, Any]:
    """Versions and devices, for the record in every report."""
    import transformers

    from . import __version__, _extension

    ext = _extension.state()
    return {
        "patronus_ext": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "compiled_kernels": ext.loaded,
    }


def _plain(value: Any) -> Any:
    """JSON-safe: tensors to lists, non-finite floats to strings, paths to str."""
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early (before hours of work) if ``path`` exists and may not be replaced."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another path or pass --force to replace it")
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"folder {out.parent} does not exist")
    return out


def write_json(path: str | os.PathLike, data: dict, overwrite: bool = False) -> Path:
    """Write ``data`` as indented JSON via a temporary file and an atomic rename."""
    out = check_output_path(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report should read like any new file
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_plain(data), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
