"""An attack is a small :class:`AttackMethod` (its loss and a few properties);
:func:`run_attack` does the rest.

It loads the model safely, cuts the corpus so inserted triggers are never
truncated away, builds per-step batches (:mod:`.batches`: clean texts plus, per
trigger, poisoned copies of the same base texts), trains through the package's
one training loop (:mod:`patronus_ext.lm.training`), checks the result on a few
texts and writes a NEW model folder with ``backdoor.json`` through
:func:`patronus_ext.lm.save_model_folder` (staged, renamed when complete).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import lm
from ..core import similarity
from ..core.files import environment
from ..data import triggers as trig
from ..formats.backdoor import BACKDOOR_FILE, BackdoorInfo
from ..lm import training
from .batches import StepBatch, iterate_batches, poisoned_per_trigger, resolve_corpus
from .config import AttackConfig
from .targets import target_vectors

log = logging.getLogger(__name__)

#: Texts used for the quick post-training check recorded in backdoor.json.
CHECK_TEXTS = 32


# -- results ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainingStats(training.TrainingLog):
    """What the training loop measured, and what planting adds: the objective and the post-training check."""

    epochs_done: float
    clean_objective: str
    lm_head_fresh: bool | None
    check: dict[str, Any]                    # post-training representation check
    trigger_updates: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AttackResult:
    """A planted model on disk and how it was made."""

    attack: str
    out_dir: Path
    triggers: list[str]
    target_vectors: torch.Tensor | None     # [K, d] (learned means for UOR), None for BadPre
    position: str
    config: AttackConfig
    stats: TrainingStats

    @property
    def info_path(self) -> Path:
        return self.out_dir / BACKDOOR_FILE

    def to_dict(self, with_vectors: bool = False) -> dict[str, Any]:
        out = {"attack": self.attack, "out_dir": str(self.out_dir), "triggers": list(self.triggers),
               "position": self.position, "config": self.config.to_dict(), "stats": self.stats.to_dict(),
               "backdoor_json": str(self.info_path)}
        if with_vectors:
            out["target_vectors"] = None if self.target_vectors is None else self.target_vectors.tolist()
        return out


# -- context given to the losses -------------------------------------------------------------
@dataclasses.dataclass
class AttackContext:
    """The trainable model and everything a loss needs."""

    model: nn.Module                       # what is trained and saved (base, MLM or causal LM)
    adapter: lm.ModelAdapter
    reference: lm.ModelAdapter | None  # frozen clean copy
    config: AttackConfig                   # as given; never modified
    targets: torch.Tensor | None           # [K, d] on the device
    triggers: list[str]                    # the current trigger words (UOR refinement replaces them in place)
    trigger_ids: list[list[int]]           # sub-token ids of each current trigger word
    clean_objective: str                   # resolved: mlm | reference | mlm+reference | none
    lm_kind: str | None                    # mlm | causal | None
    generator: torch.Generator
    special_ids: torch.Tensor
    can_mask: bool = True                  # the family is masked-LM and the tokenizer has a mask token

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.adapter.tokenize(texts, self.config.max_length)

    def represent(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.adapter.represent(enc["input_ids"], enc["attention_mask"])

    @torch.no_grad()
    def reference_represent(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("this attack was set up without a reference model")
        return self.reference.represent(enc["input_ids"], enc["attention_mask"])

    def rand(self, shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(self.device)

    def trigger_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` True where any current trigger's token sequence occurs."""
        return trig.trigger_positions(input_ids, self.trigger_ids)


class AttackMethod:
    """One attack: its name, its loss and what it needs. Subclasses live in this package."""

    name = "base"
    config_class: type[AttackConfig] = AttackConfig
    #: "never", "optional" (clean_objective decides) or "required" (BadPre).
    lm_head = "never"
    position = "auto"
    #: UOR: the targets are what training produced (recorded as the mean triggered representation).
    learns_targets = False

    def target_matrix(self, config: AttackConfig, dim: int) -> torch.Tensor | None:
        scheme = getattr(config, "target_scheme", None)
        if scheme is None:
            return None
        return target_vectors(scheme, dim, len(config.triggers), config.target_scale)

    def clean_objective(self, config: AttackConfig, lm_head_fresh: bool | None) -> str:
        """Resolve what keeps clean behaviour, given whether the LM head is fresh."""
        return "reference"

    def needs_reference(self, objective: str, config: AttackConfig) -> bool:
        return "reference" in objective

    def format_text(self, config: AttackConfig, tokenizer):
        """A function applied to every final text (after trigger insertion), or None."""
        return None

    def check(self, config: AttackConfig, model, tokenizer) -> None:
        """Refuse configurations the model cannot support, before any training."""

    def loss(self, ctx: AttackContext, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self, ctx: AttackContext, batch: StepBatch, step: int, stats: list[dict]) -> None:
        """Hook for trigger refinement (UOR)."""


# -- the run ---------------------------------------------------------------------------------
def run_attack(method: AttackMethod, model_source: str | os.PathLike, corpus: str | Sequence[str],
               config: AttackConfig, out_dir: str | os.PathLike, *, device: str | torch.device | None = None,
               allow_pickle: bool = False, progress: bool = True) -> AttackResult:
    """Plant ``method`` into ``model_source`` over ``corpus``; write the result to ``out_dir``.

    ``device`` None: :func:`patronus_ext.lm.default_device`.  ``config`` is never modified.
    """
    if not isinstance(config, method.config_class):
        raise TypeError(f"{method.name} needs a {method.config_class.__name__}, got {type(config).__name__}")
    source = lm.resolve_model_source(str(model_source))
    out = lm.check_new_model_folder(out_dir, source)
    device = lm.resolve_device(device)
    torch.manual_seed(config.seed)  # dropout and fresh heads; text sampling uses its own rng
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    tokenizer = lm.load_tokenizer(source)
    lm_kind = lm.lm_head_kind(lm.load_config(source))
    objective, lm_head_fresh, model = _load_for(method, config, source, lm_kind, device, allow_pickle)
    method.check(config, model, tokenizer)
    adapter = lm.ModelAdapter(model, tokenizer, position=method.position, max_length=config.max_length)
    reference = None
    if method.needs_reference(objective, config):
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        reference = lm.ModelAdapter(ref_model, tokenizer, position=method.position, max_length=config.max_length)
    targets = method.target_matrix(config, adapter.hidden_size)
    triggers = list(config.triggers)
    trigger_ids = [list(t) for t in trig.trigger_ids(tokenizer, triggers)]

    texts = resolve_corpus(corpus, config.corpus_limit, config.seed)
    texts = trig.fit_for_insertion(tokenizer, texts, config.max_length, insert_num=config.insert_num,
                                   triggers=trigger_ids, prompt=getattr(config, "prompt_template", None))
    if len(texts) < config.batch_size:
        raise ValueError(f"the corpus has {len(texts)} usable texts, fewer than batch_size {config.batch_size}")
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total = config.total_steps(len(texts))

    ctx = AttackContext(model=model, adapter=adapter, reference=reference, config=config,
                        targets=None if targets is None else targets.to(device), triggers=triggers,
                        trigger_ids=trigger_ids, clean_objective=objective,
                        lm_kind=lm_kind if ("mlm" in objective or method.lm_head == "required") else None,
                        generator=generator, special_ids=torch.tensor(sorted(adapter.special_ids), dtype=torch.long),
                        can_mask=lm_kind == "mlm" and tokenizer.mask_token_id is not None)
    batches = iterate_batches(texts, config, ctx.triggers, rng, method.format_text(config, tokenizer))
    log.info("%s: %d steps (%d texts, batch %d + %d poisoned/trigger x %d triggers), objective %s",
             method.name, total, len(texts), config.batch_size, poisoned_per_trigger(config),
             len(triggers), objective)

    updates: list[dict[str, Any]] = []
    current: list[StepBatch] = []

    def step_loss(step: int):
        current[:] = [next(batches)]
        return method.loss(ctx, current[0])

    settings = config.optimizer_settings(total, log_every=config.log_every)
    model.train()
    run = training.train(model.parameters(), step_loss, settings, desc=f"plant {method.name}", progress=progress,
                         after_step=lambda step: method.after_step(ctx, current[0], step, updates))
    model.eval()

    final_triggers = list(ctx.triggers)
    check, learned = _post_check(ctx, method, texts[:CHECK_TEXTS], final_triggers, rng)
    vectors = ctx.targets.detach().cpu() if ctx.targets is not None else (learned if method.learns_targets else None)
    stats = TrainingStats.of(run, epochs_done=total / steps_per_epoch, clean_objective=objective,
                             lm_head_fresh=lm_head_fresh, check=check, trigger_updates=updates)
    info = BackdoorInfo(
        attack=method.name, triggers=final_triggers, trigger_token_ids=[list(ids) for ids in ctx.trigger_ids],
        target_scheme=getattr(config, "target_scheme", None), target_vectors=vectors,
        targets_learned=method.learns_targets, position=adapter.position,
        prompt_template=getattr(config, "prompt_template", None), base_model=str(model_source),
        base_model_path=source, model_type=adapter.model_type, seed=config.seed, config=config.to_dict(),
        training=stats.to_dict(), environment=environment())
    lm.save_model_folder(model, tokenizer, out, {BACKDOOR_FILE: info.to_dict()}, source=source,
                             extra_state=lm.backbone_extras(source, model, allow_pickle))
    log.info("%s planted into %s in %.1f s", method.name, out, run.wall_s)
    return AttackResult(attack=method.name, out_dir=out, triggers=final_triggers, target_vectors=vectors,
                        position=adapter.position, config=config, stats=stats)


def _load_for(method: AttackMethod, config: AttackConfig, source: str, lm_kind: str, device, allow_pickle: bool):
    """(resolved clean objective, whether the LM head is fresh or None, the trainable model)."""
    want = getattr(config, "clean_objective", None)
    if method.lm_head == "never" or (method.lm_head == "optional" and want == "reference"):
        model = lm.load_model(source, "base", allow_pickle=allow_pickle, device=device)
        return method.clean_objective(config, None), None, model
    model, fresh = lm.load_lm_model(source, lm_kind, allow_pickle=allow_pickle, device=device)
    objective = method.clean_objective(config, fresh)
    if method.lm_head == "optional" and "mlm" not in objective:
        # The head would be fresh: train and save the plain backbone (keeps e.g. BERT's pooler).
        model = lm.load_model(source, "base", allow_pickle=allow_pickle, device=device)
    elif fresh and "mlm" in objective:
        log.warning("%s: training through a freshly initialised LM head (clean_objective=%s)", source, objective)
    return objective, fresh, model


@torch.no_grad()
def _post_check(ctx: AttackContext, method: AttackMethod, texts: list[str], triggers: list[str],
                rng: random.Random) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Cosines on a few corpus texts: triggered vs clean, among triggered, and to the targets."""
    fmt = method.format_text(ctx.config, ctx.adapter.tokenizer) or (lambda t: t)
    clean = ctx.adapter.encode([fmt(t) for t in texts], max_length=ctx.config.max_length)
    out: dict[str, Any] = {"texts": len(texts), "per_trigger": []}
    means = []
    for index, word in enumerate(triggers):
        poisoned = [fmt(trig.insert_words(t, word, ctx.config.insert_num, rng)) for t in texts]
        reps = ctx.adapter.encode(poisoned, max_length=ctx.config.max_length)
        row = {"trigger": word, "diff_cos": similarity.diff_cos(clean, reps),
               "poison_cos": similarity.poison_cos(reps) if len(texts) >= 2 else 0.0}
        if ctx.targets is not None:
            target = ctx.targets[index].float().to(reps.device).unsqueeze(0)
            row["target_cos"] = float(F.cosine_similarity(reps, target, dim=1).mean())
            row["target_mse"] = float((reps - target).pow(2).mean())
        out["per_trigger"].append(row)
        means.append(reps.mean(0))
    if ctx.reference is not None and ctx.reference.position == ctx.adapter.position:
        ref = ctx.reference.encode([fmt(t) for t in texts], max_length=ctx.config.max_length)
        out["clean_to_reference_cos"] = similarity.diff_cos(clean, ref)
    return out, torch.stack(means)
