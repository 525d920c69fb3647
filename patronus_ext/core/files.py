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
from typing import Any, Callable, Iterable, Iterator

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


def check_output_path(path: str | os.PathLike, overwrite: bool = False, *, folder: bool = False) -> Path:
    """Fail early (before hours of work) if ``path`` cannot be written: it exists and may not be replaced, or
    its folder is missing, is not a folder or is not writable.

    Writability is tried by creating (and removing) a file in the folder: root passes every permission bit,
    and a read-only mount or a root-squashed share refuses writes that the bits allow.  ``folder``: ``path``
    is a folder the verb creates or fills (a model folder, an audit folder); whether an existing one may be
    used is the verb's own rule, so only a non-folder there is refused here, and the test is made in the
    folder itself when it exists, else in its parent.
    """
    out = Path(path)
    if folder:
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a folder")
        check_writable_folder(out if out.is_dir() else out.parent)
        return out
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder, not a file; name a file to write")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another path or pass --force to replace it")
    check_writable_folder(out.parent)
    return out


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """``folder`` exists, is a folder, and a file can really be created in it (then removed)."""
    where = Path(folder) if str(folder) else Path(".")
    if not where.exists():
        if where.is_symlink():
            raise FileNotFoundError(f"folder {where} does not exist (a link to {os.readlink(where)}, which is gone)")
        raise FileNotFoundError(f"folder {where} does not exist")
    if not where.is_dir():
        raise NotADirectoryError(f"{where} is not a folder (a file is there), so nothing can be written under it")
    if not os.access(where, os.W_OK | os.X_OK):
        raise PermissionError(f"folder {where} is not writable (its permissions forbid it)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".patronus-write-test-", dir=where)
    except OSError as exc:
        raise PermissionError(f"folder {where} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return where


def check_output_paths(paths: Iterable[str | os.PathLike | None], overwrite: bool = False, *,
                       folders: Iterable[str | os.PathLike | None] = ()) -> list[Path]:
    """:func:`check_output_path` for every output of a verb (``None`` entries skipped; ``folders`` are
    folder outputs), and no path named twice (one output would silently replace the other)."""
    checked: list[Path] = []
    seen: dict[str, str] = {}
    for path, folder in [(p, False) for p in paths] + [(p, True) for p in folders]:
        if path is None or str(path) in ("", "-"):
            continue
        key = os.path.normcase(os.path.abspath(os.path.expanduser(str(path))))
        if key in seen:
            raise ValueError(f"{path} is named twice as an output ({seen[key]} and {path}): one would replace "
                             "the other; give each output its own path")
        seen[key] = str(path)
        checked.append(check_output_path(path, overwrite, folder=folder))
    return checked


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
