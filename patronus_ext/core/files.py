"""Files the whole package writes and reads: atomic writes, guarded output paths, the JSON-lines
reader, the cache folder and the environment record.

Attacks, defenses, evaluation and the command line all write through it, so nothing is ever
half-written or overwritten without consent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


class JSONRecord:
    """Mixin of the package's result dataclasses: ``to_dict()`` for reports and JSON files."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class OutputExistsError(FileExistsError, ValueError):
    """An output path exists and may not be replaced.

    Also a ``ValueError`` so that the CLI reports it as a usage error (exit 2)
    rather than a traceback; still a ``FileExistsError`` for callers.
    """


def environment() -> dict[str, Any]:
    """Versions and devices, for the record in every report."""
    import torch
    import transformers

    from .. import __version__
    from ..ops import _extension

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


def to_jsonable(value: Any) -> Any:
    """JSON-safe: tensors to lists, non-finite floats to strings, paths to str."""
    import torch  # here, not at import: the command line reads this module before it needs torch

    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): to_jsonable(value) for key, value in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """``write(tmp)`` fills a temporary sibling of ``path``, which is then renamed into place.

    A reader never sees a half-written file, a failure leaves nothing behind,
    and an existing ``path`` is replaced only with ``overwrite``.
    """
    out = check_output_path(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; an output should read like any new file
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def write_json(path: str | os.PathLike, data: dict, overwrite: bool = False) -> Path:
    """Write ``data`` as indented JSON, atomically (:func:`atomic_write`)."""
    text = json.dumps(to_jsonable(data), indent=2) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return atomic_write(path, write, overwrite)


def current_umask() -> int:
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_root() -> Path:
    """Where converted and planted models are kept: ``$PATRONUS_CACHE`` or ``~/.cache/patronus_ext``."""
    root = os.environ.get("PATRONUS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "patronus_ext")
    return Path(root).expanduser()


def read_jsonl(path: str | os.PathLike, *, skip_bad_lines: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON-lines file.

    A line that is not JSON is a ``ValueError`` naming the file and the line;
    with ``skip_bad_lines`` (a log that a crash may have cut mid-line) it is
    logged and skipped instead, and undecodable bytes are replaced.
    """
    with open(path, encoding="utf-8", errors="replace" if skip_bad_lines else "strict") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                if not skip_bad_lines:
                    raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc
                log.warning("%s line %d is not a complete record (cut by a crash?); ignored", path, number)
                continue
            yield number, value
