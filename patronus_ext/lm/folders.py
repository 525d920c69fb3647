"""Model folders the package writes: NEW folders only, staged and renamed into place when complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path

import torch
from torch import nn

from ..core.files import OutputExistsError, write_json


def check_new_model_folder(out_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """A model output folder must not exist (an empty one is accepted), nor lie inside the input model."""
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not empty; patronus_ext never overwrites a model folder: "
                                "choose a new --out")
    if not out.parent.exists():
        raise FileNotFoundError(f"folder {out.parent} does not exist")
    if source is not None and os.path.isdir(source):
        src, dst = Path(source).resolve(), out.resolve()
        if dst == src or src in dst.parents:
            raise ValueError(f"the output {out} must lie outside the input model folder {source}")
    return out


def save_model_folder(model: nn.Module, tokenizer, out_dir: str | os.PathLike, meta: dict | None = None, *,
                      source: str | os.PathLike | None = None,
                      extra_state: dict[str, torch.Tensor] | None = None,
                      extra_files: dict[str, str] | None = None) -> Path:
    """Write a NEW model folder (safetensors weights, config, tokenizer, ``meta`` JSON files) atomically.

    Everything is written into a hidden sibling folder that is renamed into
    place only when complete, so an interrupted run leaves no half model and
    nothing existing is overwritten.  ``meta`` maps file names to JSON objects
    (e.g. ``{"backdoor.json": {...}}``); ``extra_state`` adds tensors to the
    saved state dict (weights the model class drops, such as BERT's pooler);
    ``extra_files`` maps file names to text (e.g. the data a model was tuned on).
    """
    out = check_new_model_folder(out_dir, source)
    # mkdir, not mkdtemp: the folder keeps the umask's permissions like any new folder.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model_cpu = model.cpu()
        with quiet_transformers():
            if extra_state:
                state = {key: value.detach().contiguous() for key, value in model_cpu.state_dict().items()}
                state.update(extra_state)
                model_cpu.save_pretrained(staging, state_dict=state)
            else:
                model_cpu.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        for name, payload in (meta or {}).items():
            if os.path.basename(name) != name:
                raise ValueError(f"meta file names must be plain names, got {name!r}")
            write_json(staging / name, payload)
        for name, text in (extra_files or {}).items():
            if os.path.basename(name) != name:
                raise ValueError(f"extra file names must be plain names, got {name!r}")
            (staging / name).write_text(text, encoding="utf-8")
        try:
            if out.exists():
                out.rmdir()  # empty, checked above
            os.rename(staging, out)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another process filled ``out`` meanwhile (two runs converting the same GGUF): keep theirs.
            raise OutputExistsError(f"{out} was written by another process meanwhile; nothing overwritten") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out



@contextlib.contextmanager
def quiet_transformers():
    """Silence 'newly initialised head' notices: heads are expected to be new here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


