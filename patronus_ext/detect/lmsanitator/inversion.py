"""LMSanitator (arXiv 2308.13904, docs/METHODS.md §3): invert the *attack vector* of a task-agnostic backdoor.

A trainable soft trigger ``T [t, d]`` (input embeddings, ``t = 7``) is inserted into every
clean text after ``m`` content tokens, ``m`` uniform in ``[1, min(32, n)]``; the model is
frozen and Adam minimises

    -MSE(o, c) - Ent(o) [- 0.5 MSE(o, p*)]

with ``o [B, d]`` the representations of the triggered batch, ``c`` the clean ones,
``Ent`` the mean over hidden units of the entropy of the softmax over the batch axis
(``ln B`` when every output is the same) and ``p*`` the stored vector nearest to ``o``.
A backdoored model has a region of input space that sends every text to one predefined
vector (PV), which this objective finds: outputs far from clean and all alike.

Per seed: ``T[i] = E[(10 t s + 10 i) mod V]``, lr x ``lr_boost`` until the trigger's largest
gradient first exceeds ``converge_grad``; a seed is abandoned when the triggered outputs are
not the distance threshold away from the clean ones by the end of epoch ``give_up_epoch``
(``distance_threshold``, or calibrated on the model: ``distance_relative``).
After the last epoch the PV is the mean representation over *all* texts with the final
trigger (one batched pass without gradients; the authors kept the last batch only), and it
is accepted iff it appeared, its batch entropy is at least ``ln B - slack`` (see
:mod:`.lms_config`: the slack may be capped relative to the clean outputs' spread), it is
at least the distance threshold (MSE) from every stored PV and ``T`` lies within
``range_factor`` x the embedding range.  Detection mode: backdoored iff a PV is accepted
(stop at the first); exhaustive mode collects every PV.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import torch

from ...formats.bank import AttackBank
from ...formats.scan_report import scan_record
from ...lm.adapter import ModelAdapter
from ...lm.sanity import check_model_sanity, model_name, require_finite
from ..texts import prepare_texts
from .config import LMSanitatorConfig

log = logging.getLogger(__name__)

METHOD = "lmsanitator"


# -- building blocks (pure tensors, tested on their own) ------------------------------------------
def batch_entropy(outputs: torch.Tensor) -> torch.Tensor:
    """``Ent(o)``: mean over hidden units of the entropy of ``softmax`` over the batch axis of ``o [B, d]``."""
    logp = torch.log_softmax(outputs.float(), dim=0)
    return -(logp.exp() * logp).sum(0).mean()


def sample_insert_positions(attention_mask: torch.Tensor, prefix: int, suffix: int, max_insert: int,
                            generator: torch.Generator | None = None,
                            limit: torch.Tensor | None = None) -> torch.Tensor:
    """Token index ``[B]`` before which the trigger goes: after ``offset`` content tokens,
    ``offset ~ U[1, min(max_insert, n)]``.

    ``n`` = content tokens of the (right-padded) row, or ``limit - prefix`` when
    ``limit [B]`` caps the insertion (e.g. the mask token's index); ``offset = 0`` for
    a row without content.
    """
    lengths = attention_mask.sum(1).to(torch.long)
    n = (lengths - prefix - suffix).clamp_min(0)
    if limit is not None:
        n = torch.minimum(n, (limit.to(torch.long) - prefix).clamp_min(0))
    top = n.clamp(max=max_insert)
    u = torch.rand(attention_mask.shape[0], generator=generator).to(attention_mask.device)
    offset = 1 + (u * top).floor().to(torch.long)
    offset = torch.minimum(offset, top)  # u < 1 keeps offset <= top; top = 0 gives offset = 0
    return prefix + offset


def insert_soft_trigger(embeds: torch.Tensor, attention_mask: torch.Tensor, trigger: torch.Tensor,
                        positions: torch.Tensor, input_ids: torch.Tensor | None = None, fill_id: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Insert ``trigger [t, d]`` into every row of ``embeds [B, L, d]`` before token ``positions[b]``.

    Returns ``(embeds [B, L+t, d], attention_mask [B, L+t], input_ids [B, L+t] or None)``:
    the tokens from ``positions[b]`` on shift right by ``t``, the trigger rows are
    attended (mask 1) and carry ``fill_id`` in the ids (which are only used to
    locate special tokens such as the mask).  One gather, no loop over rows;
    gradients flow to ``trigger`` (and ``embeds``).
    """
    batch, length, _ = embeds.shape
    t = trigger.shape[0]
    j = torch.arange(length + t, device=embeds.device).unsqueeze(0)          # [1, L+t]
    pos = positions.to(embeds.device, torch.long).unsqueeze(1)               # [B, 1]
    in_trigger = (j >= pos) & (j < pos + t)                                  # [B, L+t]
    source = torch.where(j < pos, j, j - t).clamp(0, length - 1)             # [B, L+t]
    slot = (j - pos).clamp(0, t - 1)                                         # [B, L+t]
    gathered = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[2]))
    out = torch.where(in_trigger.unsqueeze(-1), trigger.to(embeds.dtype)[slot], gathered)
    mask = torch.where(in_trigger, torch.ones_like(attention_mask[:, :1]), attention_mask.gather(1, source))
    ids = None
    if input_ids is not None:
        ids = torch.where(in_trigger, torch.full_like(input_ids[:, :1], fill_id), input_ids.gather(1, source))
    return out, mask, ids


def trigger_range_ratio(trigger: torch.Tensor, embedding: torch.Tensor) -> float:
    """How far ``trigger`` reaches relative to the embedding range: ``max(max T / max E, min T / min E)``.

    At most 1 for values inside ``[min E, max E]``; the authors accept up to 1.2.
    """
    hi, lo = float(embedding.max()), float(embedding.min())
    ratios = []
    if hi > 0:
        ratios.append(float(trigger.max()) / hi)
    if lo < 0:
        ratios.append(float(trigger.min()) / lo)
    return max(ratios) if ratios else math.inf


def nearest_mse(outputs: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """MSE between ``outputs [B, d]`` and each bank vector ``[K, d]``, ``[K]`` (one broadcast, no loop)."""
    return ((outputs.unsqueeze(0) - bank.unsqueeze(1)) ** 2).mean((1, 2))


# -- results ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class PVCandidate:
    """One seed's outcome."""

    seed: int
    accepted: bool
    reason: str                     # why accepted or rejected
    appeared: bool                  # the triggered outputs left the clean ones (MSE > distance_threshold)
    epochs_run: int
    distance: float | None = None   # mean MSE(o, c) over all texts with the final trigger (None: abandoned)
    entropy: float | None = None    # mean Ent(o) over full batches of the final pass
    entropy_bound: float | None = None
    min_distance: float | None = None   # MSE to the nearest PV stored before this one (None: none stored)
    trigger_norm_ratio: float | None = None  # trigger_range_ratio; accepted iff <= range_factor
    converged_step: int | None = None   # step at which max |grad| first exceeded converge_grad
    epoch_distance: list[float] = dataclasses.field(default_factory=list)
    epoch_entropy: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    vector: torch.Tensor | None = dataclasses.field(default=None, repr=False)   # the PV [d]
    trigger: torch.Tensor | None = dataclasses.field(default=None, repr=False)  # the final T [t, d]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("vector", "trigger")}
        if self.vector is not None:
            out["vector_norm"] = float(self.vector.norm())
        return out


@dataclasses.dataclass
class LMSanitatorReport:
    """What an LMSanitator run found; the same top-level shape as :class:`~.scan.ScanReport`."""

    verdict: str
    vectors: list[PVCandidate]      # every seed tried, accepted or not
    config: dict
    model: dict
    timings: dict
    environment: dict = dataclasses.field(default_factory=dict)
    method: str = METHOD

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @property
    def accepted(self) -> list[PVCandidate]:
        return [v for v in self.vectors if v.accepted]

    @property
    def triggers(self) -> list:
        """No trigger words: LMSanitator inverts vectors (kept for code that reads ``report.triggers``)."""
        return []

    def attack_bank(self, model_name: str = "") -> AttackBank:
        """The accepted PVs as the package's attack-vector bank (method ``lmsanitator``)."""
        found = self.accepted
        if not found:
            raise ValueError("LMSanitator accepted no vector: there is no attack vector to put in a bank")
        return AttackBank(torch.stack([v.vector for v in found]).float(), model_name or self.model.get("source", ""),
                          self.model.get("position", ""), METHOD, [f"seed-{v.seed}" for v in found],
                          {"seeds": [v.seed for v in found], "entropy": [v.entropy for v in found],
                           "distance": [v.distance for v in found]})

    def to_dict(self) -> dict:
        return scan_record(self.method, self.verdict, vectors=[v.to_dict() for v in self.vectors], config=self.config,
                           model=self.model, timings=self.timings, environment=self.environment)

    def summary(self, name: str) -> str:
        """Readable lines: verdict, accepted vectors, or the closest rejected seed."""
        lines = [f"{name}: {self.verdict.upper()}  (lmsanitator, {self.timings.get('total', 0.0):.1f} s, "
                 f"{len(self.vectors)} seeds tried)"]
        bound = self.model.get("entropy_bound", self.config.get("entropy_bound"))
        for v in self.accepted:
            lines.append(f"  vector seed={v.seed}  distance={v.distance:.3f}  entropy={v.entropy:.4f} (bound "
                         f"{bound:.4f})  trigger range x{v.trigger_norm_ratio:.2f}")
        if not self.accepted:
            tried = [v for v in self.vectors if v.entropy is not None]
            if tried:
                best = max(tried, key=lambda v: v.entropy)
                lines.append(f"  closest seed {best.seed}: entropy={best.entropy:.4f} (bound {bound:.4f}), "
                             f"distance={best.distance:.3f}: {best.reason}")
            else:
                lines.append("  no seed made the triggered outputs leave the clean ones")
        return "\n".join(lines)


# -- the detector ----------------------------------------------------------------------------------
class _Inversion:
    """Tokenised texts, clean representations and insertion positions, shared by every seed."""

    def __init__(self, adapter: ModelAdapter, texts: list[str], config: LMSanitatorConfig,
                 generator: torch.Generator):
        self.adapter = adapter
        self.config = config
        self.generator = generator
        enc = adapter.tokenize(texts, config.max_length - config.trigger_len)
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]
        limit = None
        if adapter.position == "mask":
            is_mask = self.ids == adapter.tokenizer.mask_token_id
            if not bool(is_mask.any(1).all()):
                raise ValueError("position='mask': a text lost its mask token to truncation")
            limit = is_mask.to(torch.long).argmax(1)  # the trigger goes into the text, before the mask
        self.positions = sample_insert_positions(self.mask, adapter.special_prefix, adapter.special_suffix,
                                                 config.max_insert, generator, limit)
        self.fill_id = int(adapter.tokenizer.unk_token_id if adapter.tokenizer.unk_token_id is not None
                           else adapter.tokenizer.pad_token_id or 0)
        with torch.no_grad():
            self.clean = torch.cat([adapter.represent(**self._rows(idx)).float()
                                    for idx in self._chunks(torch.arange(len(texts)))])
        self.embedding = adapter.embedding_matrix().detach()
        batches = self._chunks(torch.arange(len(texts)), full_only=True)
        #: Ent of the clean outputs (full batches): how spread a model's representations are without a trigger.
        self.clean_entropy = (sum(float(batch_entropy(self.clean[idx])) for idx in batches) / len(batches)
                              if batches else float("nan"))
        #: Mean MSE to the clean outputs of each random real-token trigger (the calibration), and the threshold.
        self.random_distances: list[float] = []
        self.distance_threshold = config.distance_threshold
        if config.distance_relative is not None:
            self.random_distances = self.random_token_distances(config.distance_draws)
            self.distance_threshold = config.distance_relative * max(self.random_distances)
        # NaN fails every comparison (no vector ever "appears"), so it would read as clean: an error instead.
        require_finite(model_name(adapter.model), {"the clean representations": self.clean,
                                                   "the clean entropy": self.clean_entropy,
                                                   "the distance threshold": self.distance_threshold,
                                                   **{f"random-token distance {i}": d
                                                      for i, d in enumerate(self.random_distances)}},
                       "the inversion's setup")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def _chunks(self, order: torch.Tensor, full_only: bool = False):
        step = self.config.batch_size
        stop = len(order) - (len(order) % step if full_only else 0)
        return [order[i:i + step] for i in range(0, stop, step)]

    def _rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        width = int(self.mask[idx].sum(1).max())
        return {"input_ids": self.ids[idx, :width], "attention_mask": self.mask[idx, :width]}

    def triggered(self, trigger: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Representations ``[b, d]`` of texts ``idx`` with ``trigger`` inserted (differentiable in ``trigger``)."""
        rows = self._rows(idx)
        embeds = self.adapter.embed(rows["input_ids"])
        embeds, mask, ids = insert_soft_trigger(embeds, rows["attention_mask"], trigger, self.positions[idx],
                                                rows["input_ids"], self.fill_id)
        hidden = self.adapter.hidden_states(inputs_embeds=embeds, attention_mask=mask)
        return self.adapter.select_position(hidden, ids, mask).float()

    def init_trigger(self, seed: int) -> torch.Tensor:
        t = self.config.trigger_len
        vocab = self.embedding.shape[0]
        rows = (seed * t * 10 + torch.arange(t) * 10) % vocab
        return self.embedding[rows.to(self.embedding.device)].clone().float()

    @torch.no_grad()
    def random_token_distances(self, draws: int) -> list[float]:
        """Mean MSE to clean of ``draws`` triggers made of real, random, non-special vocabulary tokens."""
        special = set(self.adapter.tokenizer.all_special_ids or [])
        allowed = torch.tensor([i for i in range(self.embedding.shape[0]) if i not in special])
        out = []
        for _ in range(draws):
            rows = allowed[torch.randint(len(allowed), (self.config.trigger_len,), generator=self.generator)]
            out.append(self.final_pass(self.embedding[rows.to(self.embedding.device)].float())[1])
        return out

    @torch.no_grad()
    def final_pass(self, trigger: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """PV (mean representation over all texts), mean MSE to clean, mean Ent over full batches."""
        order = torch.arange(len(self))
        total = None
        sq, entropies = 0.0, []
        for idx in self._chunks(order):
            o = self.triggered(trigger, idx).double()
            total = o.sum(0) if total is None else total + o.sum(0)
            sq += float(((o - self.clean[idx].double()) ** 2).mean(1).sum())
            if len(idx) == self.config.batch_size:
                entropies.append(float(batch_entropy(o)))
        if not entropies:
            raise ValueError(f"{len(self)} texts: fewer than one batch of {self.config.batch_size}")
        n = len(self)
        return (total / n).float(), sq / n, sum(entropies) / len(entropies)


def _run_seed(inv: _Inversion, seed: int, stored: list[torch.Tensor], config: LMSanitatorConfig,
              progress) -> PVCandidate:
    started = time.perf_counter()
    threshold = inv.distance_threshold
    trigger = torch.nn.Parameter(inv.init_trigger(seed))
    optimizer = torch.optim.Adam([trigger], lr=config.lr * config.lr_boost)
    boosted, converged_step, step = True, None, 0
    bank = torch.stack(stored) if stored else None
    appeared, epoch_distance, epoch_entropy = False, [], []
    epochs_run = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(inv), generator=inv.generator)
        dist_sum, ent_sum, batches = 0.0, 0.0, 0
        for idx in inv._chunks(order, full_only=True):
            o = inv.triggered(trigger, idx)
            distance = torch.nn.functional.mse_loss(o, inv.clean[idx])
            entropy = batch_entropy(o)
            loss = -distance - config.diversity_weight * entropy
            if bank is not None and config.repel_weight > 0:
                with torch.no_grad():
                    nearest = int(nearest_mse(o, bank).argmin())
                loss = loss - config.repel_weight * torch.nn.functional.mse_loss(o, bank[nearest].expand_as(o))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if boosted and float(trigger.grad.abs().max()) > config.converge_grad:
                boosted, converged_step = False, step
                for group in optimizer.param_groups:
                    group["lr"] = config.lr
            optimizer.step()
            step += 1
            dist_sum += float(distance.detach())
            ent_sum += float(entropy.detach())
            batches += 1
            if progress is not None:
                progress.update(1)
        epochs_run = epoch + 1
        epoch_distance.append(dist_sum / batches)
        epoch_entropy.append(ent_sum / batches)
        require_finite(model_name(inv.adapter.model), {"the mean distance to the clean outputs": epoch_distance[-1],
                                                       "the mean batch entropy": epoch_entropy[-1]},
                       f"seed {seed}, epoch {epoch}")
        if not appeared and epoch_distance[-1] > threshold:
            appeared = True
        if not appeared and epoch >= config.give_up_epoch:
            break
    record = PVCandidate(seed=seed, accepted=False, reason="", appeared=appeared, epochs_run=epochs_run,
                         entropy_bound=config.entropy_bound(clean_entropy=inv.clean_entropy), converged_step=converged_step,
                         epoch_distance=epoch_distance, epoch_entropy=epoch_entropy)
    if progress is not None and epochs_run < config.epochs:
        progress.update((config.epochs - epochs_run) * (len(inv) // config.batch_size))
    if not appeared:
        record.reason = (f"abandoned: outputs within MSE {threshold:.4g} of clean after epoch "
                         f"{epochs_run - 1}")
        record.seconds = time.perf_counter() - started
        return record
    final = trigger.detach()
    vector, distance, entropy = inv.final_pass(final)
    require_finite(model_name(inv.adapter.model), {"the final distance": distance, "the final entropy": entropy,
                                                   "the attack vector": vector}, f"seed {seed}, final pass")
    record.vector, record.trigger = vector.cpu(), final.cpu()
    record.distance, record.entropy = distance, entropy
    record.trigger_norm_ratio = trigger_range_ratio(final, inv.embedding)
    if stored:
        record.min_distance = float(((torch.stack(stored) - vector.to(stored[0].device)) ** 2).mean(1).min())
    reasons = []
    if distance <= threshold:
        reasons.append(f"final distance {distance:.3f} <= {threshold:.4g}")
    if entropy < record.entropy_bound:
        reasons.append(f"entropy {entropy:.4f} < bound {record.entropy_bound:.4f}")
    if record.min_distance is not None and record.min_distance < threshold:
        reasons.append(f"MSE {record.min_distance:.3f} to a stored PV < {threshold:.4g}")
    if record.trigger_norm_ratio > config.range_factor:
        reasons.append(f"trigger x{record.trigger_norm_ratio:.2f} outside the embedding range x{config.range_factor}")
    record.accepted = not reasons
    record.reason = "accepted" if record.accepted else "; ".join(reasons)
    record.seconds = time.perf_counter() - started
    return record


def lmsanitator(model: torch.nn.Module, tokenizer, corpus: Sequence[str], config: LMSanitatorConfig | None = None,
                *, position: str = "auto", prompt_template: str | None = None, progress: bool = True
                ) -> LMSanitatorReport:
    """Run LMSanitator on ``model`` over clean ``corpus`` texts.

    ``config``: :class:`LMSanitatorConfig` (default: the ``fast`` profile).
    ``position``: where the representation is read (``auto`` by family; ``mask``
    for prompt/BToP backdoors, texts wrapped in ``prompt_template``, default
    ``"{text} {mask}"``, the trigger inserted before the mask).
    """
    from tqdm.auto import tqdm

    from ...core.files import environment

    config = config or LMSanitatorConfig.profile("fast")
    check_model_sanity(model, tokenizer)  # a broken model gets an error, never a verdict
    started = time.perf_counter()
    timings: dict[str, float] = {}
    adapter = ModelAdapter(model, tokenizer, position=position, max_length=config.max_length - config.trigger_len)
    model.eval()
    generator = torch.Generator().manual_seed(config.seed)
    texts = prepare_texts(corpus, adapter, config, prompt_template)
    if len(texts) < config.batch_size:
        raise ValueError(f"the corpus has {len(texts)} usable texts; LMSanitator needs at least one batch "
                         f"({config.batch_size})")
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        phase = time.perf_counter()
        inv = _Inversion(adapter, texts, config, generator)
        timings["setup"] = time.perf_counter() - phase
        steps = config.epochs * (len(inv) // config.batch_size)
        stored: list[torch.Tensor] = []
        records: list[PVCandidate] = []
        bar = tqdm(total=config.seeds * steps, desc="lmsanitator", unit="step", disable=not progress)
        with torch.enable_grad():
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                record = _run_seed(inv, seed, stored, config, bar)
                records.append(record)
                log.info("seed %d: %s", seed, record.reason)
                if record.accepted:
                    stored.append(record.vector.to(inv.clean.device))
                    if config.mode == "detection":
                        break
        bar.close()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    timings["inversion"] = sum(r.seconds for r in records)
    timings["total"] = time.perf_counter() - started
    return LMSanitatorReport(
        verdict="backdoored" if stored else "clean",
        vectors=records,
        config=config.to_dict(),
        model={"type": adapter.model_type, "position": adapter.position, "family": adapter.family,
               "vocab_size": adapter.vocab_size, "hidden_size": adapter.hidden_size, "texts": len(texts),
               "clean_entropy": inv.clean_entropy,
               "entropy_bound": config.entropy_bound(clean_entropy=inv.clean_entropy),
               "distance": {"threshold": inv.distance_threshold,
                            "calibrated": config.distance_relative is not None,
                            "random_token_distances": inv.random_distances}},
        timings=timings,
        environment=environment(),
    )
