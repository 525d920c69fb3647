"""Model sanity before any verdict: a model that loads is not yet a model that can be judged or served.

NaN compares false with every threshold, so a scan of a model with NaN weights measures NaN cosines and finds
"no trigger": a confident wrong answer.  An embedding table with fewer rows than the tokenizer has ids fails
only on the first input holding a token past its end, long after a scan that never drew one said "clean".
:func:`check_model_sanity` refuses such models before any work, with one line naming the model and the cause;
every verb that judges or serves a model (scan with either method, calibrate, monitor, serve, purify, audit)
calls it.  :func:`require_finite` is the same refusal for a detector's own measurements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .adapter import ModelAdapter
from .loading import load_adapter
from .sources import ModelLoadError

#: Short texts the probe forward reads: plain words, digits and punctuation, accents and a non-Latin script.
PROBE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "a", "Numbers 1, 22 and 333; symbols: %, $, #, ?!",
               "Café naïve über, 東京 and Москва.")
#: Config fields that may declare the width of the input embedding (families name it differently).
EMBEDDING_WIDTH_FIELDS = ("hidden_size", "embedding_size", "word_embed_proj_dim", "d_model", "n_embd")


class BrokenModelError(ModelLoadError, ValueError):
    """A model that loads but cannot be judged or served (non-finite weights or representations, an embedding
    that does not cover its tokenizer, a config that disagrees with its weights): no verdict is given."""


def model_name(model: nn.Module) -> str:
    """The folder or hub id a model was loaded from, for messages (its class name when unknown)."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else type(model).__name__


def tokenizer_id_bound(tokenizer) -> int:
    """One more than the largest id ``tokenizer`` can produce: its vocabulary, added and special tokens."""
    ids = list(tokenizer.get_vocab().values())
    ids += [int(i) for i in (tokenizer.all_special_ids or []) if i is not None]
    return max(ids) + 1 if ids else 0


def check_embedding_covers_tokenizer(model: nn.Module, tokenizer, name: str) -> None:
    rows = int(model.get_input_embeddings().weight.shape[0])
    bound = tokenizer_id_bound(tokenizer)
    if bound > rows:
        raise BrokenModelError(
            f"{name}: the embedding table has {rows} rows but the tokenizer produces ids up to {bound - 1} "
            f"({len(tokenizer)} tokens with its added and special tokens): an input holding any of the "
            f"{bound - rows} ids past the table would fail; the weights do not belong to this tokenizer")


def check_config_matches_weights(model: nn.Module, name: str) -> None:
    config = model.config
    rows, width = (int(n) for n in model.get_input_embeddings().weight.shape)
    vocab_size = getattr(config, "vocab_size", None)
    if isinstance(vocab_size, int) and vocab_size != rows:
        raise BrokenModelError(f"{name}: config.json says vocab_size {vocab_size} but the embedding table has "
                               f"{rows} rows")
    declared = {field: getattr(config, field, None) for field in EMBEDDING_WIDTH_FIELDS}
    declared = {field: value for field, value in declared.items() if isinstance(value, int)}
    if declared and width not in declared.values():
        fields = ", ".join(f"{field} {value}" for field, value in declared.items())
        raise BrokenModelError(f"{name}: config.json says {fields} but the embedding table is {width} wide")


def check_weights_finite(model: nn.Module, name: str) -> None:
    for parameter_name, parameter in model.named_parameters():
        if not parameter.is_floating_point() or parameter.is_meta:
            continue
        # A float32 sum per tensor is the fast test (no temporary the size of the tensor): a NaN or Inf anywhere
        # makes it non-finite.  Only then are the values counted, which also clears a sum that merely overflowed.
        if math.isfinite(float(parameter.detach().sum(dtype=torch.float32))):
            continue
        values = parameter.detach()
        nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
        if not nan and not inf:
            continue
        found = " and ".join(f"{count} {label}" for count, label in ((nan, "NaN"), (inf, "Inf")) if count)
        raise BrokenModelError(f"{name}: weight {parameter_name} holds {found} of {values.numel()} values: "
                               "the weights are corrupt")


@torch.no_grad()
def check_probe_finite(model: nn.Module, tokenizer, name: str, texts: Iterable[str] = PROBE_TEXTS) -> None:
    texts = list(texts)
    adapter = ModelAdapter(model, tokenizer, max_length=32)
    was_training = model.training
    model.eval()  # no dropout: the probe draws nothing from the random stream a scan is seeded with
    try:
        batch = adapter.tokenize(texts)
        hidden = adapter.hidden_states(**batch)
    finally:
        model.train(was_training)
    real = hidden[batch["attention_mask"].bool()].float()
    if not bool(torch.isfinite(real).all()):
        nan, inf = int(torch.isnan(real).sum()), int(torch.isinf(real).sum())
        found = " and ".join(f"{count} {label}" for count, label in ((nan, "NaN"), (inf, "Inf")) if count)
        raise BrokenModelError(f"{name}: a forward pass on {len(texts)} short probe texts gives non-finite "
                               f"representations ({found} of {real.numel()} values)")


def check_model_sanity(model: nn.Module, tokenizer, name: str | None = None) -> None:
    """Refuse a model that cannot be judged or served, with :class:`BrokenModelError` naming it and the cause.

    In order: the embedding rows cover every id the tokenizer can produce; the
    config agrees with the weights (``vocab_size``, the embedding width); every
    weight is finite; a probe forward on :data:`PROBE_TEXTS` gives finite
    representations.  The model, its mode and the random stream are left as
    they were.  Cost: one reduction per weight tensor and one forward of four
    short texts.
    """
    name = name or model_name(model)
    check_embedding_covers_tokenizer(model, tokenizer, name)
    check_config_matches_weights(model, name)
    check_weights_finite(model, name)
    check_probe_finite(model, tokenizer, name)


def check_model_source(name_or_path: str, *, allow_pickle: bool = False, device: str | torch.device | None = None
                       ) -> None:
    """Load ``name_or_path`` (backbone and tokenizer), :func:`check_model_sanity` it, and let it go: for verbs
    that load the model in several ways later (purify), so a broken one is refused before any of them."""
    adapter = load_adapter(name_or_path, allow_pickle=allow_pickle, device=device)
    check_model_sanity(adapter.model, adapter.tokenizer, str(name_or_path))


def require_finite(name: str, measurements: Mapping[str, float | torch.Tensor], during: str) -> None:
    """Refuse a detector's non-finite measurements: ``BrokenModelError`` naming the first one, never a verdict
    (NaN fails every threshold comparison, so it would read as "no backdoor")."""
    for label, value in measurements.items():
        finite = bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else math.isfinite(float(value))
        if not finite:
            shown = "non-finite values" if isinstance(value, torch.Tensor) else f"{float(value)}"
            raise BrokenModelError(f"{name}: {during}: {label} is not finite ({shown}); the model's representations "
                                   "overflow or hold NaN, so no verdict can be given")
