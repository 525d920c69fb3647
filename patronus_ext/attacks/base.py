"""Machinery every attack shares: loading, batches, masking, the training loop, saving.

An attack is a small :class:`AttackMethod` (its loss and a few properties);
:func:`run_attack` does the rest: it loads the model safely, cuts the corpus so
inserted triggers are never truncated away, builds per-step batches (clean
texts plus, per trigger, poisoned copies of the same base texts), trains with
AdamW, checks the result on a few texts, and writes a NEW folder
(safetensors weights, tokenizer, config, ``backdoor.json``) through a staging
folder renamed into place, so a crash never leaves a half-written model and
nothing existing is ever overwritten.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import math
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as data_mod
from .. import io, models, triggers as trig
from ..io import BACKDOOR_FILE, BACKDOOR_FORMAT, OutputExistsError
from .config import AttackConfig
from .targets import target_vectors

log = logging.getLogger(__name__)

#: Texts used for the quick post-training check recorded in backdoor.json.
CHECK_TEXTS = 32



# -- results ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainingStats:
    """What the training loop measured."""

    steps: int
    epochs_done: float
    wall_s: float
    seconds_per_step: float
    clean_objective: str
    lm_head_fresh: bool | None
    first_loss: float
    final_loss: float
    final_terms: dict[str, float]
    history: list[dict[str, float]]          # every log_every steps: step, loss, terms
    check: dict[str, Any]                    # post-training representation check
    trigger_updates: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# -- batches ---------------------------------------------------------------------------------
@dataclasses.dataclass
class StepBatch:
    """One step's texts: ``B`` clean ones and ``K·P`` poisoned ones, grouped by trigger.

    Poisoned row ``k·P + m`` is clean row ``m`` with trigger ``k`` inserted, so
    ``pair_index`` links every poisoned row to its clean text.
    """

    clean: list[str]
    poisoned: list[str]
    poison_trigger: torch.Tensor   # [K*P] trigger index of each poisoned row
    pair_index: torch.Tensor       # [K*P] clean row it was made from
    per_trigger: int               # P


def poisoned_per_trigger(config: AttackConfig) -> int:
    return max(1, round(config.poison_rate * config.batch_size))


def iterate_batches(texts: Sequence[str], config: AttackConfig, rng: random.Random,
                    format_text=None) -> Iterator[StepBatch]:
    """Endless epoch-shuffled batches; ``format_text`` wraps every final text (BToP prompts)."""
    fmt = format_text or (lambda t: t)
    size = config.batch_size
    per = poisoned_per_trigger(config)
    count = len(config.triggers)
    order: list[int] = []
    while True:
        if len(order) < size:
            order = list(range(len(texts)))
            rng.shuffle(order)
        rows, order = order[:size], order[size:]
        clean = [texts[i] for i in rows]
        poisoned = [fmt(trig.insert_words(clean[m], config.triggers[k], config.insert_num, rng))
                    for k in range(count) for m in range(per)]
        yield StepBatch([fmt(t) for t in clean], poisoned,
                        torch.arange(count).repeat_interleave(per), torch.arange(per).repeat(count), per)


# -- context given to the losses -------------------------------------------------------------
@dataclasses.dataclass
class AttackContext:
    """The trainable model and everything a loss needs."""

    model: nn.Module                       # what is trained and saved (base, MLM or causal LM)
    adapter: models.ModelAdapter
    reference: models.ModelAdapter | None  # frozen clean copy
    config: AttackConfig
    targets: torch.Tensor | None           # [K, d] on the device
    trigger_ids: list[list[int]]           # sub-token ids of each trigger word
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
        """``[N, L]`` True where any trigger's token sequence occurs."""
        hit = torch.zeros_like(input_ids, dtype=torch.bool)
        for ids in self.trigger_ids:
            width = len(ids)
            if width > input_ids.shape[1]:
                continue
            pattern = torch.tensor(ids, device=input_ids.device)
            starts = (input_ids.unfold(1, width, 1) == pattern).all(-1)  # [N, L-width+1]
            for offset in range(width):
                hit[:, offset:offset + starts.shape[1]] |= starts
        return hit

    def special_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(input_ids, self.special_ids.to(input_ids.device))

    def mask_for_mlm(self, enc: dict[str, torch.Tensor], prob: float, protect: torch.Tensor | None = None,
                     corrupt_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT-style masking: ``prob`` of eligible tokens -> 80% mask, 10% random, 10% kept.

        Returns masked ``input_ids`` and labels (-100 elsewhere); ``corrupt_labels``
        replaces the labels with random token ids (BadPre).  Decoders (no mask
        token) keep their inputs and get the labels only, for the causal-LM loss.
        """
        ids = enc["input_ids"]
        eligible = enc["attention_mask"].bool() & ~self.special_positions(ids)
        if protect is not None:
            eligible &= ~protect
        chosen = (self.rand(ids.shape) < prob) & eligible
        vocab = self.adapter.vocab_size
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        if corrupt_labels:
            noise = torch.randint(0, vocab, ids.shape, generator=self.generator).to(ids.device)
            labels = torch.where(chosen, noise, labels)
        mask_id = self.adapter.tokenizer.mask_token_id
        if not self.can_mask or mask_id is None:
            return ids, labels
        roll = self.rand(ids.shape)
        random_ids = torch.randint(0, vocab, ids.shape, generator=self.generator).to(ids.device)
        masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
        masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
        return masked, labels

    def lm_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(LM cross-entropy, representation) from one forward of the LM model.

        Causal models: ``labels`` are per-position targets (the model shifts them);
        rows whose labels are all -100 contribute nothing.
        """
        if self.lm_kind is None:
            raise RuntimeError("this attack was set up without an LM head")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         return_dict=True)
        logits = out.logits
        if self.lm_kind == "causal":
            logits, labels = logits[:, :-1], labels[:, 1:]
        if bool((labels != -100).any()):
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=-100)
        else:
            loss = logits.sum() * 0.0
        rep = self.adapter.select_position(out.hidden_states[-1], input_ids, attention_mask)
        return loss, rep

    def causal_labels(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.where(enc["attention_mask"].bool(), enc["input_ids"],
                           torch.full_like(enc["input_ids"], -100))


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

    def extra_tokens(self, config: AttackConfig, tokenizer) -> int:
        """Tokens the formatting adds to every text (kept out of the text budget)."""
        return 0

    def check(self, config: AttackConfig, model, tokenizer) -> None:
        """Refuse configurations the model cannot support, before any training."""

    def loss(self, ctx: AttackContext, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self, ctx: AttackContext, batch: StepBatch, step: int, stats: list[dict]) -> None:
        """Hook for trigger refinement (UOR)."""


# -- loading and saving ----------------------------------------------------------------------
def lm_kind_for(config) -> str:
    model_type = getattr(config, "model_type", "")
    if model_type in models.FIRST_TOKEN_TYPES or model_type in models.ENCODER_DECODER_TYPES:
        return "mlm"
    if model_type in models.LAST_TOKEN_HINT_TYPES or getattr(config, "is_decoder", False):
        return "causal"
    return "mlm"


def load_lm_model(source: str, kind: str, allow_pickle: bool, device) -> tuple[nn.Module, bool]:
    """An MLM or causal-LM model and whether its LM head was freshly initialised."""
    import transformers

    use_safetensors = models.check_checkpoint_safety(source, allow_pickle)
    auto = transformers.AutoModelForMaskedLM if kind == "mlm" else transformers.AutoModelForCausalLM
    kwargs = {"use_safetensors": True} if use_safetensors else {}
    with models._quiet_transformers():
        model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
    prefix = model.base_model_prefix
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(prefix + ".")]
    fresh = bool(missing)
    if fresh:
        log.info("%s: LM head freshly initialised (missing %s)", source, sorted(missing)[:4])
    if getattr(model.config, "pad_token_id", None) is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    return model.to(device), fresh


def check_out_dir(out_dir: str | os.PathLike, source: str) -> Path:
    """The output folder must not exist (an empty folder is accepted) nor be the input model."""
    out = Path(out_dir).expanduser()
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise OutputExistsError(f"{out} exists and is not empty; planting never overwrites a model "
                                    "folder: choose a new --out")
    if not out.parent.exists():
        raise FileNotFoundError(f"folder {out.parent} does not exist")
    if os.path.isdir(source):
        src, dst = Path(source).resolve(), out.resolve()
        if dst == src or src in dst.parents:
            raise ValueError(f"the output {out} must lie outside the input model folder {source}")
    return out


def _backbone_extras(source: str, model: nn.Module, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Backbone weights of the source (e.g. BERT's pooler) that an LM-head class drops.

    BertForMaskedLM has no pooler; saving it alone would hand downstream
    classifiers a random pooler instead of the pretrained one, so the
    source's extra backbone tensors are saved alongside, under the LM
    model's prefix (AutoModel and ...ForSequenceClassification pick them up).
    """
    base = models.load_model(source, "base", allow_pickle=allow_pickle)
    have = set(model.base_model.state_dict())
    prefix = model.base_model_prefix
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in base.state_dict().items() if k not in have}


def save_planted(model: nn.Module, tokenizer, staging: Path, extras: dict[str, torch.Tensor]) -> None:
    model = model.cpu()
    with models._quiet_transformers():
        if extras:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            state.update(extras)
            model.save_pretrained(staging, state_dict=state)
        else:
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def _lr_lambda(total: int, warmup: int, schedule: str):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


# -- the run ---------------------------------------------------------------------------------
def resolve_corpus(corpus: str | Sequence[str], limit: int | None, seed: int) -> list[str]:
    if isinstance(corpus, (str, os.PathLike)):
        return data_mod.read_corpus(str(corpus), limit=limit, seed=seed)
    texts = [str(t) for t in corpus if str(t).strip()]
    if not texts:
        raise ValueError("the corpus holds no text")
    return texts[:limit] if limit is not None else texts


def run_attack(method: AttackMethod, model_source: str | os.PathLike, corpus: str | Sequence[str],
               config: AttackConfig, out_dir: str | os.PathLike) -> AttackResult:
    """Plant ``method`` into ``model_source`` over ``corpus``; write the result to ``out_dir``."""
    from tqdm.auto import tqdm

    if not isinstance(config, method.config_class):
        raise TypeError(f"{method.name} needs a {method.config_class.__name__}, got {type(config).__name__}")
    config = dataclasses.replace(config)  # a private copy: refinement may change its triggers
    source = models.resolve_model_source(str(model_source))
    out = check_out_dir(out_dir, source)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # dropout and fresh heads; text sampling uses its own rng
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    tokenizer = models.load_tokenizer(source)
    model_config = _auto_config(source)
    lm_kind = lm_kind_for(model_config)
    objective, lm_head_fresh, model = _load_for(method, config, source, lm_kind, device)
    method.check(config, model, tokenizer)
    adapter = models.ModelAdapter(model, tokenizer, position=method.position, max_length=config.max_length)
    reference = None
    if method.needs_reference(objective, config):
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        reference = models.ModelAdapter(ref_model, tokenizer, position=method.position, max_length=config.max_length)
    targets = method.target_matrix(config, adapter.hidden_size)
    trigger_ids = [[i for i in row if i >= 0] for row in trig.word_token_ids(tokenizer, config.triggers).tolist()]

    texts = resolve_corpus(corpus, config.corpus_limit, config.seed)
    budget = (config.max_length - adapter.special_prefix - adapter.special_suffix
              - config.insert_num * max(len(t) for t in trigger_ids) - method.extra_tokens(config, tokenizer))
    texts = [t for t in trig.fit_texts(tokenizer, texts, budget) if t]
    if len(texts) < config.batch_size:
        raise ValueError(f"the corpus has {len(texts)} usable texts, fewer than batch_size {config.batch_size}")
    steps_per_epoch = len(texts) // config.batch_size
    total = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))

    ctx = AttackContext(model=model, adapter=adapter, reference=reference, config=config,
                        targets=None if targets is None else targets.to(device), trigger_ids=trigger_ids,
                        clean_objective=objective,
                        lm_kind=lm_kind if ("mlm" in objective or method.lm_head == "required") else None,
                        generator=generator, special_ids=torch.tensor(sorted(adapter.special_ids), dtype=torch.long),
                        can_mask=lm_kind == "mlm" and tokenizer.mask_token_id is not None)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(round(config.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup, config.schedule))
    batches = iterate_batches(texts, config, rng, method.format_text(config, tokenizer))

    log.info("%s: %d steps (%d texts, batch %d + %d poisoned/trigger x %d triggers), objective %s",
             method.name, total, len(texts), config.batch_size, poisoned_per_trigger(config),
             len(config.triggers), objective)
    model.train()
    history: list[dict[str, float]] = []
    updates: list[dict[str, Any]] = []
    window: dict[str, float] = {}
    first_loss = final_loss = float("nan")
    final_terms: dict[str, float] = {}
    start = time.perf_counter()
    bar = tqdm(range(total), desc=f"plant {method.name}", disable=not config.progress, leave=False)
    for step in bar:
        batch = next(batches)
        loss, terms = method.loss(ctx, batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{method.name}: the loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        final_terms = {k: float(v.detach()) for k, v in terms.items()}
        if step == 0:
            first_loss = value
        final_loss = value
        for key, val in {"loss": value, **final_terms}.items():
            window[key] = window.get(key, 0.0) + val
        if (step + 1) % config.log_every == 0 or step + 1 == total:
            count = (step % config.log_every) + 1
            history.append({"step": step + 1, **{k: v / count for k, v in window.items()}})
            window = {}
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        method.after_step(ctx, batch, step, updates)
    bar.close()
    wall = time.perf_counter() - start
    model.eval()

    final_triggers = list(ctx.config.triggers)
    check_texts = [t for t in texts[:CHECK_TEXTS]]
    check, learned = _post_check(ctx, method, check_texts, final_triggers, rng)
    vectors = ctx.targets.detach().cpu() if ctx.targets is not None else (learned if method.learns_targets else None)
    stats = TrainingStats(steps=total, epochs_done=total / steps_per_epoch, wall_s=wall,
                          seconds_per_step=wall / total, clean_objective=objective, lm_head_fresh=lm_head_fresh,
                          first_loss=first_loss, final_loss=final_loss, final_terms=final_terms, history=history,
                          check=check, trigger_updates=updates)
    extras = _backbone_extras(source, model, config.allow_pickle) if type(model) is not type(model.base_model) else {}
    info = {
        "format": BACKDOOR_FORMAT,
        "attack": method.name,
        "triggers": final_triggers,
        "trigger_token_ids": [[i for i in row if i >= 0] for row in
                              trig.word_token_ids(tokenizer, final_triggers).tolist()],
        "target_scheme": getattr(ctx.config, "target_scheme", None),
        "target_vectors": None if vectors is None else vectors.tolist(),
        "targets_learned": method.learns_targets,
        "target_labels": None,
        "representation_position": adapter.position,
        "prompt_template": getattr(config, "prompt_template", None),
        "base_model": str(model_source),
        "base_model_path": source,
        "model_type": adapter.model_type,
        "seed": config.seed,
        "config": ctx.config.to_dict(),
        "training": stats.to_dict(),
        "environment": io.environment(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # A hidden sibling renamed into place at the end (mkdir, not mkdtemp: keep the umask's permissions).
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        save_planted(model, tokenizer, staging, extras)
        io.write_json(staging / BACKDOOR_FILE, info)
        if out.exists():
            out.rmdir()  # empty, checked above; fails loudly if something appeared meanwhile
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s planted into %s in %.1f s", method.name, out, wall)
    return AttackResult(attack=method.name, out_dir=out, triggers=final_triggers, target_vectors=vectors,
                        position=adapter.position, config=ctx.config, stats=stats)


def _auto_config(source: str):
    import transformers

    with models._quiet_transformers():
        return transformers.AutoConfig.from_pretrained(source)


def _load_for(method: AttackMethod, config: AttackConfig, source: str, lm_kind: str, device):
    """(resolved clean objective, whether the LM head is fresh or None, the trainable model)."""
    want = getattr(config, "clean_objective", None)
    if method.lm_head == "never" or (method.lm_head == "optional" and want == "reference"):
        model = models.load_model(source, "base", allow_pickle=config.allow_pickle, device=device)
        return method.clean_objective(config, None), None, model
    model, fresh = load_lm_model(source, lm_kind, config.allow_pickle, device)
    objective = method.clean_objective(config, fresh)
    if method.lm_head == "optional" and "mlm" not in objective:
        # The head would be fresh: train and save the plain backbone (keeps e.g. BERT's pooler).
        model = models.load_model(source, "base", allow_pickle=config.allow_pickle, device=device)
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
    for k, word in enumerate(triggers):
        poisoned = [fmt(trig.insert_words(t, word, ctx.config.insert_num, rng)) for t in texts]
        reps = ctx.adapter.encode(poisoned, max_length=ctx.config.max_length)
        unit = F.normalize(reps, dim=1)
        n = unit.shape[0]
        pairwise = float(((unit.sum(0).pow(2).sum() - n) / max(1, n * (n - 1))))
        row = {"trigger": word, "diff_cos": float(F.cosine_similarity(reps, clean, dim=1).mean()),
               "poison_cos": pairwise}
        if ctx.targets is not None:
            target = ctx.targets[k].float().cpu().unsqueeze(0)
            row["target_cos"] = float(F.cosine_similarity(reps, target, dim=1).mean())
            row["target_mse"] = float((reps - target).pow(2).mean())
        out["per_trigger"].append(row)
        means.append(reps.mean(0))
    if ctx.reference is not None and ctx.reference.position == ctx.adapter.position:
        ref = ctx.reference.encode([fmt(t) for t in texts], max_length=ctx.config.max_length)
        out["clean_to_reference_cos"] = float(F.cosine_similarity(clean, ref, dim=1).mean())
    return out, torch.stack(means)
