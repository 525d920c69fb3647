"""Fine-mixing and E-PUR (docs/METHODS.md §4, arXiv 2210.09545), for a classifier fine-tuned on possibly poisoned
data when the clean pre-trained weights are at hand.

* :func:`mix_weights`: ``θ = θ_pre + m ⊙ (θ_ft − θ_pre)`` over the backbone, keeping a fraction ρ of the
  deltas (random, or the largest ``|δ|`` for the "Sel" variant); the task head is never touched.
* :func:`suspicious_rows` / :func:`reset_rows`: E-PUR, the embedding rows ranked by
  ``‖E_ft[w] − E_pre[w]‖ / log(max(f_w, min_freq))`` reset to the pre-trained rows.
* :func:`fine_mix` / :func:`e_pur`: the full defenses, each ending in clean fine-tuning on a small set,
  ρ chosen by clean accuracy only (never by ASR).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any, Sequence

import torch
from torch import nn

from ..core.files import JSONRecord
from ..data.corpora import LabeledData
from ..data.instructions import InstructionExample, fit_inputs
from ..evaluate import metrics
from ..lm.finetune import finetune_classifier, predict_labels
from ..lm.instruction_tuning import TuneLog, instruction_tune
from .config import EPurConfig, FineMixConfig, FineMixLMConfig

log = logging.getLogger(__name__)


def backbone(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def matched_parameters(model: nn.Module, pretrained: nn.Module) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    """``(name, parameter of model's backbone, pre-trained tensor)`` for every backbone parameter the
    pre-trained model has with the same name and shape.  ``ValueError`` when they do not fit."""
    pre_state = backbone(pretrained).state_dict()
    params = list(backbone(model).named_parameters())
    pairs = [(name, p, pre_state[name]) for name, p in params
             if name in pre_state and tuple(pre_state[name].shape) == tuple(p.shape)]
    if not pairs or len(pairs) < 0.9 * len(params):
        raise ValueError(f"the pre-trained weights do not fit this model: {len(pairs)} of {len(params)} backbone "
                         "tensors match by name and shape (another architecture or vocabulary?)")
    return pairs


@dataclasses.dataclass
class MixStats(JSONRecord):
    rho: float
    variant: str
    tensors: int
    elements: int
    kept: int


@torch.no_grad()
def mix_weights(model: nn.Module, pretrained: nn.Module, rho: float, variant: str = "random",
                generator: torch.Generator | None = None) -> MixStats:
    """In place: every backbone tensor becomes ``θ_pre + m ⊙ (θ_ft − θ_pre)``, ``m`` keeping
    ``round(ρ·numel)`` deltas of that tensor (``random``, or the largest ``|δ|`` for ``sel``)."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho!r}")
    if variant not in ("random", "sel"):
        raise ValueError(f"variant must be random or sel, got {variant!r}")
    generator = generator or torch.Generator().manual_seed(0)
    elements = kept = 0
    pairs = matched_parameters(model, pretrained)
    for _, param, pre in pairs:
        pre = pre.to(device=param.device, dtype=param.dtype)
        delta = (param - pre).flatten()
        count = delta.numel()
        keep = int(round(rho * count))
        mask = torch.zeros(count, dtype=torch.bool, device=param.device)
        if keep >= count:
            mask[:] = True
        elif keep > 0:
            if variant == "random":
                idx = torch.randperm(count, generator=generator)[:keep].to(param.device)
            else:
                idx = delta.abs().float().topk(keep, sorted=False).indices
            mask[idx] = True
        param.copy_((pre.flatten() + torch.where(mask, delta, torch.zeros_like(delta))).view_as(param))
        elements += count
        kept += keep
    return MixStats(rho=float(rho), variant=variant, tensors=len(pairs), elements=elements, kept=kept)


# -- E-PUR -------------------------------------------------------------------------------------
def token_frequencies(tokenizer, texts: Sequence[str], vocab_size: int, max_length: int = 512) -> torch.Tensor:
    """How often each token id occurs in ``texts`` (no special tokens), ``[V]`` int64."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    texts = list(texts)
    for start in range(0, len(texts), 2048):
        ids = tokenizer(texts[start:start + 2048], add_special_tokens=False, truncation=True,
                        max_length=max_length)["input_ids"]
        flat = torch.tensor([i for row in ids for i in row if 0 <= i < vocab_size], dtype=torch.long)
        if flat.numel():
            counts += torch.bincount(flat, minlength=vocab_size)[:vocab_size]
    return counts


@dataclasses.dataclass
class SuspiciousTokens:
    ids: list[int]
    tokens: list[str]
    scores: list[float]

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        return {"count": len(self.ids), "top": [{"token": t, "id": i, "score": s} for t, i, s in
                                                zip(self.tokens[:limit], self.ids[:limit], self.scores[:limit])]}


@torch.no_grad()
def suspicious_rows(embeddings: torch.Tensor, pretrained_embeddings: torch.Tensor, frequencies: torch.Tensor,
                    top_n: int = 200, min_freq: int = 20, exclude: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """E-PUR ranking: the ``top_n`` rows by ``‖E[w] − E_pre[w]‖ / log(max(f_w, min_freq))`` (``exclude``: never).

    Returns ``(indices, scores)``, highest score first."""
    if embeddings.shape != pretrained_embeddings.shape:
        raise ValueError(f"embedding shapes differ: {tuple(embeddings.shape)} vs {tuple(pretrained_embeddings.shape)}"
                         " (another vocabulary: the pre-trained weights do not fit this model)")
    if frequencies.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{frequencies.shape[0]} frequencies for {embeddings.shape[0]} embedding rows")
    moved = (embeddings.float() - pretrained_embeddings.to(embeddings.device).float()).norm(dim=1).cpu()
    scores = moved / torch.log(frequencies.double().clamp_min(min_freq)).float()
    if len(exclude):
        scores[torch.tensor(list(exclude), dtype=torch.long)] = -math.inf
    top = scores.topk(min(top_n, scores.numel()))
    return top.indices, top.values


@torch.no_grad()
def reset_rows(model: nn.Module, pretrained: nn.Module, rows: torch.Tensor) -> None:
    """In place: input-embedding ``rows`` of ``model`` set to ``pretrained``'s."""
    target = model.get_input_embeddings().weight
    source = pretrained.get_input_embeddings().weight
    if target.shape != source.shape:
        raise ValueError("the pre-trained weights do not fit this model (embedding shapes differ: "
                         f"{tuple(target.shape)} vs {tuple(source.shape)})")
    rows = rows.to(target.device)
    target[rows] = source.to(device=target.device, dtype=target.dtype)[rows]


def rank_suspicious(model: nn.Module, pretrained: nn.Module, tokenizer, frequencies: torch.Tensor, top_n: int,
                    min_freq: int) -> SuspiciousTokens:
    emb = model.get_input_embeddings().weight
    idx, scores = suspicious_rows(emb, pretrained.get_input_embeddings().weight, frequencies, top_n, min_freq,
                                  exclude=sorted(set(tokenizer.all_special_ids)))
    ids = [int(i) for i in idx]
    return SuspiciousTokens(ids, tokenizer.convert_ids_to_tokens(ids), [float(s) for s in scores])


# -- the defenses --------------------------------------------------------------------------------
@dataclasses.dataclass
class Candidate(JSONRecord):
    rho: float
    select_accuracy: float
    mix: MixStats
    finetune_s: float


@dataclasses.dataclass
class FineMixResult:
    rho: float | None                    # the chosen keep fraction
    variant: str
    reference_accuracy: float            # the input model on the selection set
    threshold: float                     # a ρ qualifies at or above this selection accuracy
    candidates: list[Candidate]
    reason: str
    e_pur: SuspiciousTokens | None
    clean_examples: int
    select_examples: int
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["e_pur"] = None if self.e_pur is None else self.e_pur.to_dict()
        return out


def _accuracy(model, tokenizer, data: LabeledData, max_length: int) -> float:
    return metrics.accuracy(predict_labels(model, tokenizer, data.texts, 64, max_length), data.labels)


def fine_mix(model: nn.Module, tokenizer, pretrained: nn.Module, clean: LabeledData, select: LabeledData,
             config: FineMixConfig | None = None, *, frequencies: torch.Tensor | None = None,
             progress: bool = True) -> tuple[nn.Module, FineMixResult]:
    """Fine-mixing of classifier ``model`` toward ``pretrained`` (its clean backbone).

    For each ρ in ``config.rhos`` (ascending): mix, optionally reset the E-PUR
    rows (``config.e_pur_top_n``, needs ``frequencies``), fine-tune on ``clean``,
    measure accuracy on ``select``; the first ρ reaching the input model's
    selection accuracy minus ``acc_tolerance`` is taken (later ρ are not tried),
    else the most accurate.  Returns a new model; ``model`` is not modified.
    """
    import time

    config = config or FineMixConfig()
    start = time.perf_counter()
    matched_parameters(model, pretrained)  # fail before any work
    reference_acc = _accuracy(model, tokenizer, select, config.max_length)
    threshold = reference_acc - config.acc_tolerance
    suspects = None
    if config.e_pur_top_n:
        if frequencies is None:
            raise ValueError("e_pur_top_n needs token frequencies")
        suspects = rank_suspicious(model, pretrained, tokenizer, frequencies, config.e_pur_top_n, config.min_freq)
    generator = torch.Generator().manual_seed(config.seed)
    candidates: list[Candidate] = []
    best_model, best_acc, chosen, reason = None, -1.0, None, ""
    for rho in config.rhos:
        work = copy.deepcopy(model)
        stats = mix_weights(work, pretrained, rho, config.variant, generator)
        if suspects is not None:
            reset_rows(work, pretrained, torch.tensor(suspects.ids, dtype=torch.long))
        tuned_s = 0.0
        if config.trains:
            tuned = finetune_classifier(work, clean, config, tokenizer, progress=progress)
            tuned_s = tuned.stats.wall_s
        acc = _accuracy(work, tokenizer, select, config.max_length)
        candidates.append(Candidate(rho, acc, stats, tuned_s))
        log.info("fine-mix: rho %.2f -> selection accuracy %.4f (threshold %.4f)", rho, acc, threshold)
        if acc > best_acc:
            best_model, best_acc = work, acc
        if acc >= threshold:
            best_model, chosen = work, rho
            reason = (f"smallest rho with selection accuracy {acc:.4f} >= input model's {reference_acc:.4f} "
                      f"- tolerance {config.acc_tolerance}")
            break
    if chosen is None:
        chosen = max(candidates, key=lambda c: c.select_accuracy).rho
        reason = f"no rho reached {threshold:.4f}; the most accurate one"
    result = FineMixResult(rho=chosen, variant=config.variant, reference_accuracy=reference_acc, threshold=threshold,
                           candidates=candidates, reason=reason, e_pur=suspects, clean_examples=len(clean),
                           select_examples=len(select), wall_s=time.perf_counter() - start)
    return best_model.eval(), result


@dataclasses.dataclass
class EPurResult:
    suspects: SuspiciousTokens
    clean_examples: int
    finetune_s: float
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["suspects"] = self.suspects.to_dict()
        return out


def e_pur(model: nn.Module, tokenizer, pretrained: nn.Module, frequencies: torch.Tensor,
          clean: LabeledData | None, config: EPurConfig | None = None, *, progress: bool = True
          ) -> tuple[nn.Module, EPurResult]:
    """E-PUR: reset the ``top_n`` most suspicious embedding rows to ``pretrained``'s, then fine-tune on ``clean``
    (skipped when ``config`` trains for zero epochs or ``clean`` is None).  Returns a new model."""
    config = config or EPurConfig()
    start = time.perf_counter()
    suspects = rank_suspicious(model, pretrained, tokenizer, frequencies, config.top_n, config.min_freq)
    work = copy.deepcopy(model)
    reset_rows(work, pretrained, torch.tensor(suspects.ids, dtype=torch.long))
    tuned_s = 0.0
    if config.trains and clean is not None and len(clean):
        tuned_s = finetune_classifier(work, clean, config, tokenizer, progress=progress).stats.wall_s
    return work.eval(), EPurResult(suspects, 0 if clean is None else len(clean), tuned_s, time.perf_counter() - start)


# -- Fine-mixing for causal LMs ------------------------------------------------------------------
@dataclasses.dataclass
class FineMixLMResult:
    mix: MixStats
    clean_samples: int
    training: TuneLog | None
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"mix": self.mix.to_dict(), "rho": self.mix.rho, "clean_samples": self.clean_samples,
                "training": None if self.training is None else self.training.to_dict(), "wall_s": self.wall_s}


def fine_mix_lm(model: nn.Module, tokenizer, pretrained: nn.Module, clean: Sequence[InstructionExample],
                config: FineMixLMConfig | None = None, *, progress: bool = True) -> tuple[nn.Module, FineMixLMResult]:
    """Fine-mixing of the instruction-tuned causal LM ``model`` toward ``pretrained`` (the clean instruct weights):
    keep a fraction ρ of the backbone deltas, then tune on ``config.clean_samples`` clean examples.  Returns a new
    model; ``model`` is not modified."""
    config = config or FineMixLMConfig()
    start = time.perf_counter()
    clean = list(clean)[:config.clean_samples]
    if len(clean) < config.clean_samples:
        raise ValueError(f"fine-mixing needs {config.clean_samples} clean samples, got {len(clean)}")
    work = copy.deepcopy(model)
    stats = mix_weights(work, pretrained, config.rho, config.variant, torch.Generator().manual_seed(config.seed))
    tuned = None
    if config.trains:
        fmt = config.prompt_format()
        clean = fit_inputs(tokenizer, clean, fmt.max_input_tokens)
        tuned = instruction_tune(work, tokenizer, clean, fmt, config,
                                          desc=f"fine-mix ρ={config.rho:g}", progress=progress)
    return work.eval(), FineMixLMResult(stats, len(clean), tuned, time.perf_counter() - start)
