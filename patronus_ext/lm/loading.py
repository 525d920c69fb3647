"""Safe loading: safetensors by default, pickle checkpoints only on explicit opt-in (each opened with
``torch.load(weights_only=True)`` before anything else reads it), clear errors naming the file and the cause."""

from __future__ import annotations

import glob
import logging
import os

import torch
from torch import nn

from .adapter import ENCODER_DECODER_TYPES, FIRST_TOKEN_TYPES, LAST_TOKEN_HINT_TYPES, ModelAdapter
from .folders import quiet_transformers
from .sources import ModelLoadError, describe_cause, resolve_model_source

log = logging.getLogger(__name__)

HEADS = ("base", "mlm", "cls", "causal")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that can only be loaded by unpickling, without the caller's opt-in."""



PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def pickled_files(folder: str) -> list[str]:
    return sorted(p for pattern in PICKLE_PATTERNS for p in glob.glob(os.path.join(folder, pattern)))


def check_pickles_load_safely(folder: str) -> None:
    """Open every pickle checkpoint of ``folder`` with ``torch.load(weights_only=True)`` ourselves.

    Done before transformers sees the folder, so refusing arbitrary code never
    depends on a library default: a pickle that needs more than tensors and
    plain containers raises here and nothing of it runs.
    """
    import pickle

    for path in pickled_files(folder):
        try:
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsafeCheckpointError(f"{path}: refused by torch.load(weights_only=True), it holds more than "
                                        f"tensors ({first})") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise ModelLoadError(f"{path}: not a readable checkpoint ({exc})") from exc


#: Endings of the files a model or tokenizer loader may read from a model folder.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".bin", ".pt", ".pth", ".ckpt")


def _kind_of(mode: int) -> str:
    import stat

    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def check_model_files(folder: str, *, weights: bool = True) -> None:
    """Every file a loader may read from ``folder`` is a regular file (after links), and, with ``weights``,
    every safetensors file is whole: :class:`ModelLoadError` naming the file otherwise.

    A link to ``/dev/zero`` would be read forever, a named pipe would block the reader, and loaders report a
    link to a device, a dangling link or a folder in a file's place as "no file named ..."; a truncated or
    garbled safetensors file surfaces as a bare header error.  Costs a ``stat`` per file and the safetensors
    headers (the tensors themselves are not read).
    """
    import stat

    if not os.path.isdir(folder):
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.endswith(MODEL_FILE_SUFFIXES):
            continue
        path = os.path.join(folder, entry.name)
        link = f" (a link to {os.readlink(path)})" if entry.is_symlink() else ""
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ModelLoadError(f"{path} is a link to {os.readlink(path)}, which does not exist") from None
        except OSError as exc:
            raise ModelLoadError(f"{path}{link}: cannot be read ({exc.strerror or exc})") from None
        if stat.S_ISDIR(mode):
            raise ModelLoadError(f"{path}{link} is a folder, not a file: a model folder holds its weights, config "
                                 "and tokenizer as regular files")
        if not stat.S_ISREG(mode):
            kind = _kind_of(mode)
            kind = "" if kind == "not a regular file" else f" but {kind}"
            raise ModelLoadError(f"{path}{link} is not a regular file{kind}: a model folder holds its weights, "
                                 "config and tokenizer as regular files")
        if weights and entry.name.endswith(".safetensors"):
            check_safetensors_file(path)


def check_safetensors_file(path: str) -> None:
    """``path`` opens as a safetensors file (its header is whole and covers the file): else
    :class:`ModelLoadError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # noqa: BLE001 - the reader raises its own error type for every corruption
        size = os.path.getsize(path)
        raise ModelLoadError(f"{path}: cannot load the model: not a valid safetensors file ({size} bytes, "
                             f"truncated or garbled: {describe_cause(exc)})") from exc


def _shape_disagreement(source: str, auto, kwargs: dict) -> str | None:
    """Why ``source``'s config.json and weights disagree (the first tensor whose shape differs from the one
    the config builds, and the config fields of that size), or None when they agree or cannot be compared."""
    import json

    import transformers
    from safetensors import safe_open

    if not os.path.isdir(source):
        return None
    shapes: dict[str, tuple[str, list[int]]] = {}
    for name in sorted(glob.glob(os.path.join(source, "*.safetensors"))):
        with safe_open(name, framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = (os.path.basename(name), list(handle.get_slice(key).get_shape()))
    if not shapes:
        return None
    with open(os.path.join(source, "config.json"), encoding="utf-8") as handle:
        raw = json.load(handle)
    config = transformers.AutoConfig.from_pretrained(source)
    if "num_labels" in kwargs:
        config.num_labels = kwargs["num_labels"]
    with torch.device("meta"):
        model = auto.from_config(config)
    prefix = model.base_model_prefix
    embedding = model.get_input_embeddings()
    embedding_key = next((k for k, v in model.named_parameters() if embedding is not None
                          and v is getattr(embedding, "weight", None)), None)
    expected = {key: list(value.shape) for key, value in model.state_dict().items()}
    order = sorted(expected, key=lambda key: key != embedding_key)
    for key in order:
        found = shapes.get(key) or shapes.get(f"{prefix}.{key}") or (
            shapes.get(key[len(prefix) + 1:]) if key.startswith(prefix + ".") else None)
        if found is None or found[1] == expected[key]:
            continue
        file, shape = found
        wanted = {want for size, want in zip(shape, expected[key]) if size != want} or set(expected[key])
        fields = [f"{field} {value}" for field, value in sorted(raw.items())
                  if isinstance(value, int) and not isinstance(value, bool) and value in wanted]
        says = f"config.json says {', '.join(fields)}" if fields else "config.json"
        return (f"{says} but {key} in {file} is {shape} (the config makes it {expected[key]}): the config does "
                "not belong to these weights")
    return None


def _from_pretrained_takes(name: str) -> bool:
    import inspect

    import transformers

    return name in inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters


def check_checkpoint_safety(folder: str, allow_pickle: bool) -> bool:
    """Whether to force safetensors; refuses pickle-only folders unless opted in."""
    if not os.path.isdir(folder):
        return not allow_pickle  # hub id: ask transformers for safetensors unless opted in
    has_safe = bool(glob.glob(os.path.join(folder, "*.safetensors")))
    pickled = pickled_files(folder)
    if not has_safe and pickled and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{folder} holds only pickle checkpoints ({', '.join(os.path.basename(p) for p in pickled)}); "
            "unpickling can run arbitrary code. Convert to safetensors, or pass allow_pickle=True "
            "(--allow-pickle) to load it with torch.load(weights_only=True).")
    return has_safe or not allow_pickle


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    source = resolve_model_source(name_or_path)
    check_model_files(source, weights=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{source}: cannot load the tokenizer ({describe_cause(exc)})") from exc
    if tokenizer is None or isinstance(tokenizer, bool):
        raise ModelLoadError(f"{source}: cannot load the tokenizer (no tokenizer files)")
    plain = set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens)
    if not plain:
        # transformers builds an empty tokenizer when the vocabulary files are missing: every text
        # would become [UNK], a silent wrong answer.
        raise ModelLoadError(f"{source}: cannot load the tokenizer (no vocabulary: tokenizer files missing)")
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have no pad token
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def default_device() -> str:
    """The device every command uses unless told otherwise: CUDA when one is visible, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> :func:`default_device`; a CUDA device where none exists is a clear error, not a crash later."""
    if device is None or device == "":
        return torch.device(default_device())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA device")
    return resolved


def load_model(name_or_path: str, head: str = "base", *, num_labels: int | None = None,
               allow_pickle: bool = False, device: str | torch.device | None = "cpu",
               dtype: torch.dtype | None = None, with_missing_keys: bool = False):
    """Load a model from a local folder, the packaged default or a hub id, safetensors by default.

    ``head``: ``"base"`` (AutoModel), ``"mlm"``, ``"cls"`` (sequence classification,
    with ``num_labels``) or ``"causal"``.  Pickle checkpoints are refused unless
    ``allow_pickle``; even then transformers loads them with ``weights_only=True``.
    ``device=None`` picks :func:`default_device`.  ``with_missing_keys`` also
    returns the weights the checkpoint lacked (a freshly initialised head).
    """
    import transformers

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    source = resolve_model_source(name_or_path)
    check_model_files(source)
    use_safetensors = check_checkpoint_safety(source, allow_pickle)
    auto = {"base": transformers.AutoModel, "mlm": transformers.AutoModelForMaskedLM,
            "cls": transformers.AutoModelForSequenceClassification,
            "causal": transformers.AutoModelForCausalLM}[head]
    kwargs = {"use_safetensors": True} if use_safetensors else {}
    if not use_safetensors:
        if os.path.isdir(source):
            check_pickles_load_safely(source)
        if _from_pretrained_takes("weights_only"):
            kwargs["weights_only"] = True  # explicit, whatever the library's default
    if head == "cls" and num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files surface as many types; name source and cause
        try:
            why = _shape_disagreement(source, auto, kwargs)
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the load's own cause is reported then
            why = None
        if why:
            raise ModelLoadError(f"{source}: {why}") from exc
        raise ModelLoadError(f"{source}: cannot load the model ({describe_cause(exc)})") from exc
    if getattr(model.config, "pad_token_id", None) is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    model = model.to(resolve_device(device)).eval()
    if with_missing_keys:
        return model, list(info.get("missing_keys", ()))
    return model


def load_adapter(name_or_path: str, head: str = "base", *, position: str = "auto", max_length: int = 128,
                 num_labels: int | None = None, allow_pickle: bool = False,
                 device: str | torch.device | None = None) -> "ModelAdapter":
    """Model + tokenizer + adapter in one call, loaded safely (see :func:`load_model`); ``device=None``: the default."""
    model = load_model(name_or_path, head, num_labels=num_labels, allow_pickle=allow_pickle, device=device)
    adapter = ModelAdapter(model, load_tokenizer(name_or_path), position=position, max_length=max_length)
    adapter.source = resolve_model_source(name_or_path)
    return adapter


def load_config(name_or_path: str):
    """The ``transformers`` config of a folder, the packaged default or a hub id."""
    import transformers

    source = resolve_model_source(name_or_path)
    check_model_files(source, weights=False)
    with quiet_transformers():
        return transformers.AutoConfig.from_pretrained(source)


def lm_head_kind(config) -> str:
    """``"mlm"`` for encoders and encoder-decoders, ``"causal"`` for decoders: the LM objective a family trains with."""
    model_type = getattr(config, "model_type", "")
    if model_type in FIRST_TOKEN_TYPES or model_type in ENCODER_DECODER_TYPES:
        return "mlm"
    if model_type in LAST_TOKEN_HINT_TYPES or getattr(config, "is_decoder", False):
        return "causal"
    return "mlm"


def load_lm_model(name_or_path: str, kind: str, *, allow_pickle: bool = False,
                  device: str | torch.device | None = "cpu") -> tuple[nn.Module, bool]:
    """An MLM (``kind="mlm"``) or causal-LM model, and whether its LM head was freshly initialised."""
    model, missing = load_model(name_or_path, kind, allow_pickle=allow_pickle, device=device, with_missing_keys=True)
    prefix = model.base_model_prefix
    head_missing = sorted(key for key in missing if not key.startswith(prefix + "."))
    if head_missing:
        log.info("%s: LM head freshly initialised (missing %s)", name_or_path, head_missing[:4])
    return model, bool(head_missing)


def backbone_extras(name_or_path: str, model: nn.Module, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Backbone weights of the source (e.g. BERT's pooler) that ``model``'s class drops.

    BertForMaskedLM has no pooler; saving it alone would hand downstream
    classifiers a random pooler instead of the pretrained one, so the
    source's extra backbone tensors are saved alongside, under the model's
    prefix (AutoModel and ...ForSequenceClassification pick them up).
    """
    if type(model) is type(model.base_model):
        return {}
    base = load_model(name_or_path, "base", allow_pickle=allow_pickle, device="cpu")
    have = set(model.base_model.state_dict())
    prefix = model.base_model_prefix
    return {f"{prefix}.{key}": value.detach().cpu().clone() for key, value in base.state_dict().items()
            if key not in have}


