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
trigger (one batched pass without gradients; the authors kept the last batch only).

Seeds run in groups of ``seed_batch``: their triggers ``[S, t, d]`` are optimised together, one
forward pass over ``S x B`` rows per step, Adam per seed.  The group's PVs are then judged, the most
collapsed (highest entropy) first: accepted iff it appeared, its batch entropy is at least ``ln B - slack`` (see
:mod:`.config`: the slack may be capped relative to the clean outputs' spread), ``T`` lies within
``range_factor`` x the embedding range, and it is neither within the distance threshold (MSE) of
a PV kept before it nor a duplicate of one (signs agree on more than ``dedupe_agreement`` of the
hidden units).  Detection mode: backdoored iff a PV is accepted (stop after the first group that
accepted one); exhaustive mode runs every seed and keeps every distinct PV (the bank).  Once every
group has run, all PVs are judged again together (:func:`rejudge`), so the purest vector of a basin is
kept whichever group found it.
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
    """``Ent(o)``: mean over hidden units of the entropy of ``softmax`` over the batch axis of ``o [B, d]``.

    ``o [S, B, d]`` (one batch per seed) gives ``[S]``.
    """
    logp = torch.log_softmax(outputs.float(), dim=-2)
    return -(logp.exp() * logp).sum(-2).mean(-1)


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
    """Insert ``trigger [t, d]`` (or one per row, ``[B, t, d]``) into every row of ``embeds [B, L, d]`` before
    token ``positions[b]``.

    Returns ``(embeds [B, L+t, d], attention_mask [B, L+t], input_ids [B, L+t] or None)``:
    the tokens from ``positions[b]`` on shift right by ``t``, the trigger rows are
    attended (mask 1) and carry ``fill_id`` in the ids (which are only used to
    locate special tokens such as the mask).  One gather, no loop over rows;
    gradients flow to ``trigger`` (and ``embeds``).
    """
    batch, length, _ = embeds.shape
    t = trigger.shape[-2]
    j = torch.arange(length + t, device=embeds.device).unsqueeze(0)          # [1, L+t]
    pos = positions.to(embeds.device, torch.long).unsqueeze(1)               # [B, 1]
    in_trigger = (j >= pos) & (j < pos + t)                                  # [B, L+t]
    source = torch.where(j < pos, j, j - t).clamp(0, length - 1)             # [B, L+t]
    slot = (j - pos).clamp(0, t - 1)                                         # [B, L+t]
    gathered = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[2]))
    trigger = trigger.to(embeds.dtype)
    if trigger.dim() == 2:
        rows = trigger[slot]
    else:  # one trigger per row: row b takes trigger[b, slot[b, j]]
        rows = trigger.gather(1, slot.unsqueeze(-1).expand(-1, -1, embeds.shape[2]))
    out = torch.where(in_trigger.unsqueeze(-1), rows, gathered)
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
    min_distance: float | None = None   # MSE to the nearest PV kept before this one (None: none kept)
    sign_agreement: float | None = None  # largest share of equal signs with a kept PV (None: none kept)
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
        """Representations of texts ``idx`` with ``trigger`` inserted (differentiable in ``trigger``).

        ``trigger [t, d]`` gives ``[b, d]``; ``S`` triggers ``[S, t, d]`` give ``[S, b, d]`` from one forward
        pass over ``S x b`` rows (every trigger at the same insertion positions).
        """
        rows = self._rows(idx)
        many = trigger.dim() == 3
        triggers = trigger if many else trigger.unsqueeze(0)
        count, b = triggers.shape[0], len(idx)
        embeds = self.adapter.embed(rows["input_ids"]).repeat(count, 1, 1)
        embeds, mask, ids = insert_soft_trigger(embeds, rows["attention_mask"].repeat(count, 1),
                                                triggers.repeat_interleave(b, 0), self.positions[idx].repeat(count),
                                                rows["input_ids"].repeat(count, 1), self.fill_id)
        hidden = self.adapter.hidden_states(inputs_embeds=embeds, attention_mask=mask)
        out = self.adapter.select_position(hidden, ids, mask).float().view(count, b, -1)
        return out if many else out[0]

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The text order of ``epoch``: the same for every seed, so a seed's run does not depend on its batch."""
        return torch.randperm(len(self), generator=torch.Generator().manual_seed(self.config.seed * 7919 + epoch))

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
        rows = allowed[torch.randint(len(allowed), (draws, self.config.trigger_len), generator=self.generator)]
        return self.final_passes(self.embedding[rows.to(self.embedding.device)].float())[1]

    @torch.no_grad()
    def final_pass(self, trigger: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """PV (mean representation over all texts), mean MSE to clean, mean Ent over full batches."""
        vectors, distances, entropies = self.final_passes(trigger.unsqueeze(0))
        return vectors[0], distances[0], entropies[0]

    @torch.no_grad()
    def final_passes(self, triggers: torch.Tensor) -> tuple[torch.Tensor, list[float], list[float]]:
        """:meth:`final_pass` of ``S`` triggers ``[S, t, d]`` at once: PVs ``[S, d]``, distances, entropies."""
        count = triggers.shape[0]
        total = torch.zeros(count, self.clean.shape[1], dtype=torch.float64, device=self.clean.device)
        sq = torch.zeros(count, dtype=torch.float64, device=self.clean.device)
        entropies = []
        for idx in self._chunks(torch.arange(len(self))):
            o = self.triggered(triggers, idx).double()                    # [S, b, d]
            total += o.sum(1)
            sq += ((o - self.clean[idx].double()) ** 2).mean(2).sum(1)
            if len(idx) == self.config.batch_size:
                entropies.append(batch_entropy(o))
        if not entropies:
            raise ValueError(f"{len(self)} texts: fewer than one batch of {self.config.batch_size}")
        n = len(self)
        return (total / n).float(), (sq / n).tolist(), (torch.stack(entropies).mean(0)).tolist()


#: torch.optim.Adam's defaults, which the batched update below reproduces with one learning rate per seed.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def sign_agreement(vector: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Share of hidden units where ``vector [d]`` and each of ``bank [K, d]`` have the same sign: ``[K]``."""
    return (torch.sign(vector).unsqueeze(0) == torch.sign(bank)).float().mean(1)


def _repulsion(o: torch.Tensor, bank: torch.Tensor | None, group: bool) -> torch.Tensor:
    """``MSE(o_a, p*_a)`` per seed ``[A]``, ``p*_a`` the nearest anchor of seed ``a``: the stored PVs, and with
    ``group`` the current mean outputs of the seeds before ``a`` in its group (constants, as stored PVs are),
    so that a later seed of a group is pushed off the basin an earlier one holds.  0 for a seed without one."""
    count = o.shape[0]
    with torch.no_grad():
        parts, allowed = [], []
        if bank is not None:
            parts.append(bank)
            allowed.append(torch.ones(count, bank.shape[0], dtype=torch.bool, device=o.device))
        if group:
            parts.append(o.mean(1))
            allowed.append(torch.ones(count, count, device=o.device).tril(-1).bool())   # seeds before a only
        anchors, allowed = torch.cat(parts), torch.cat(allowed, 1)                 # [N, d], [A, N]
        mse = ((o.unsqueeze(1) - anchors[None, :, None]) ** 2).mean((2, 3))       # [A, N]
        mse = mse.masked_fill(~allowed, math.inf)
        nearest, has = mse.argmin(1), allowed.any(1)
    return ((o - anchors[nearest].unsqueeze(1)) ** 2).mean((1, 2)) * has


def _optimise(inv: _Inversion, seeds: Sequence[int], stored: list[torch.Tensor], config: LMSanitatorConfig,
              progress) -> list[PVCandidate]:
    """Optimise the soft triggers of ``seeds`` together, ``[S, t, d]``: one forward and backward pass per batch
    of texts for all of them, Adam per seed (own lr boost, own give-up); then one final pass for the seeds
    whose outputs appeared.  Returns one record per seed, not yet judged (:func:`_judge`)."""
    started = time.perf_counter()
    count = len(seeds)
    threshold = inv.distance_threshold
    triggers = torch.stack([inv.init_trigger(s) for s in seeds])            # [S, t, d]
    first, second = torch.zeros_like(triggers), torch.zeros_like(triggers)
    lr = torch.full((count,), config.lr * config.lr_boost, device=triggers.device)
    (beta1, beta2), step = ADAM_BETAS, 0
    converged: list[int | None] = [None] * count
    appeared = [False] * count
    epoch_distance: list[list[float]] = [[] for _ in seeds]
    epoch_entropy: list[list[float]] = [[] for _ in seeds]
    epochs_run = [0] * count
    active = list(range(count))
    bank = torch.stack(stored) if stored else None
    per_epoch = len(inv) // config.batch_size
    for epoch in range(config.epochs):
        if not active:
            break
        rows = torch.tensor(active, device=triggers.device)
        sums = torch.zeros(len(active), 2, dtype=torch.float64)
        for idx in inv._chunks(inv.epoch_order(epoch), full_only=True):
            param = triggers[rows].clone().requires_grad_(True)
            o = inv.triggered(param, idx)                                      # [A, b, d]
            distance = ((o - inv.clean[idx].unsqueeze(0)) ** 2).mean((1, 2))  # [A]
            entropy = batch_entropy(o)                                         # [A]
            loss = -distance - config.diversity_weight * entropy
            repel = config.repel_weight > 0 and (config.repel_epochs is None or epoch < config.repel_epochs)
            if repel and (bank is not None or (config.group_repel and len(active) > 1)):
                loss = loss - config.repel_weight * _repulsion(o, bank, config.group_repel)
            (grad,) = torch.autograd.grad(loss.sum(), param)  # seed a's loss depends on its own trigger only
            with torch.no_grad():
                peak = grad.flatten(1).abs().max(1).values
                for a, s in enumerate(active):
                    if converged[s] is None and float(peak[a]) > config.converge_grad:
                        converged[s], lr[s] = step, config.lr
                step += 1
                first[rows] = beta1 * first[rows] + (1 - beta1) * grad
                second[rows] = beta2 * second[rows] + (1 - beta2) * grad * grad
                denom = second[rows].sqrt() / math.sqrt(1 - beta2 ** step) + ADAM_EPS
                triggers[rows] -= (lr[rows] / (1 - beta1 ** step))[:, None, None] * first[rows] / denom
                sums += torch.stack([distance, entropy], 1).double().cpu()
            if progress is not None:
                progress.update(len(active))
        means = sums / per_epoch
        require_finite(model_name(inv.adapter.model), {"the mean distance to the clean outputs": means[:, 0],
                                                       "the mean batch entropy": means[:, 1]},
                       f"seeds {[seeds[s] for s in active]}, epoch {epoch}")
        still = []
        for a, s in enumerate(active):
            epochs_run[s] = epoch + 1
            epoch_distance[s].append(float(means[a, 0]))
            epoch_entropy[s].append(float(means[a, 1]))
            appeared[s] = appeared[s] or epoch_distance[s][-1] > threshold
            if appeared[s] or epoch < config.give_up_epoch:
                still.append(s)
            elif progress is not None:  # abandoned: its remaining steps will not run
                progress.update((config.epochs - epoch - 1) * per_epoch)
        active = still
    bound = config.entropy_bound(clean_entropy=inv.clean_entropy)
    records = [PVCandidate(seed=seed, accepted=False, reason="", appeared=appeared[i], epochs_run=epochs_run[i],
                           entropy_bound=bound, converged_step=converged[i], epoch_distance=epoch_distance[i],
                           epoch_entropy=epoch_entropy[i]) for i, seed in enumerate(seeds)]
    done = [i for i in range(count) if appeared[i]]
    if done:
        final = triggers[done]
        vectors, distances, entropies = inv.final_passes(final)
        require_finite(model_name(inv.adapter.model), {"the final distance": torch.tensor(distances),
                                                       "the final entropy": torch.tensor(entropies),
                                                       "the attack vector": vectors}, "the final pass")
        for j, i in enumerate(done):
            record = records[i]
            record.vector, record.trigger = vectors[j].cpu(), final[j].cpu()
            record.distance, record.entropy = distances[j], entropies[j]
            record.trigger_norm_ratio = trigger_range_ratio(final[j], inv.embedding)
    seconds = (time.perf_counter() - started) / count
    for record in records:
        record.seconds = seconds   # the batch's wall time, shared equally
    return records


def _judge(records: list[PVCandidate], kept: list[PVCandidate], threshold: float, config: LMSanitatorConfig) -> None:
    """Accept or reject each record against the vectors ``kept`` so far (appended to on accept), the highest
    batch entropy first (ties: seed order).

    A PV is accepted iff it appeared, its final distance to clean exceeds ``threshold``, its entropy reaches
    the bound, its trigger stays within ``range_factor`` x the embedding range, it is at least ``threshold``
    (MSE) from every kept PV and it is not a duplicate of one: its signs agree with a kept PV's on at most
    ``dedupe_agreement`` of the hidden units (the output monitor's own rule: a bank holding either flags the
    other's outputs).
    """
    # The most collapsed PV first: a mixture of two attack vectors is more spread than either, so the purest
    # vector of a basin claims it and its mixtures are judged against it (then seed order).
    for record in sorted(records, key=lambda r: (-(r.entropy if r.entropy is not None else -math.inf), r.seed)):
        if not record.appeared:
            record.reason = (f"abandoned: outputs within MSE {threshold:.4g} of clean after epoch "
                             f"{record.epochs_run - 1}")
            continue
        reasons = []
        if record.distance <= threshold:
            reasons.append(f"final distance {record.distance:.3f} <= {threshold:.4g}")
        if record.entropy < record.entropy_bound:
            reasons.append(f"entropy {record.entropy:.4f} < bound {record.entropy_bound:.4f}")
        if record.trigger_norm_ratio > config.range_factor:
            reasons.append(f"trigger x{record.trigger_norm_ratio:.2f} outside the embedding range "
                           f"x{config.range_factor}")
        if kept:
            bank = torch.stack([k.vector for k in kept])
            mse = ((bank - record.vector) ** 2).mean(1)
            agree = sign_agreement(record.vector, bank)
            record.min_distance = float(mse.min())
            record.sign_agreement = float(agree.max())
            if config.dedupe_distance and record.min_distance < threshold:
                reasons.append(f"MSE {record.min_distance:.3f} to the PV of seed {kept[int(mse.argmin())].seed} "
                               f"< {threshold:.4g}")
            if record.sign_agreement > config.dedupe_agreement:
                reasons.append(f"duplicate of seed {kept[int(agree.argmax())].seed} (signs agree on "
                               f"{record.sign_agreement:.2f} > {config.dedupe_agreement})")
        record.accepted = not reasons
        record.reason = "accepted" if record.accepted else "; ".join(reasons)
        if record.accepted:
            kept.append(record)


def run_seeds(inv: _Inversion, seeds: Sequence[int], config: LMSanitatorConfig, progress=None) -> list[PVCandidate]:
    """Every seed of ``seeds`` in groups of ``config.seed_batch`` optimised together, judged group
    by group, most collapsed first (detection mode stops after the first group that accepted a PV)."""
    kept: list[PVCandidate] = []
    records: list[PVCandidate] = []
    seeds = list(seeds)
    for start in range(0, len(seeds), config.seed_batch):
        group = _optimise(inv, seeds[start:start + config.seed_batch],
                          [k.vector.to(inv.clean.device) for k in kept], config, progress)
        _judge(group, kept, inv.distance_threshold, config)
        records.extend(group)
        for record in group:
            log.info("seed %d: %s", record.seed, record.reason)
        if kept and config.mode == "detection":
            break
    if len(records) > config.seed_batch:
        rejudge(records, inv.distance_threshold, config)
    return records


def rejudge(records: list[PVCandidate], threshold: float, config: LMSanitatorConfig) -> list[PVCandidate]:
    """Judge every group's PVs again together, most collapsed first; returns the kept ones.

    Judged group by group, a mixture kept in an early group makes a purer vector of the same basin found by
    a later group its duplicate; judged together the purer one is kept.  The verdict cannot change (a PV that
    passes the per-seed checks is either kept or the duplicate of a kept one), only which PV of a basin
    represents it.
    """
    for record in records:
        record.accepted, record.min_distance, record.sign_agreement = False, None, None
    kept: list[PVCandidate] = []
    _judge(records, kept, threshold, config)
    for record in records:
        log.debug("seed %d judged with every group: %s", record.seed, record.reason)
    return kept


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
        seeds = range(config.first_seed, config.first_seed + config.seeds)
        with tqdm(total=config.seeds * steps, desc="lmsanitator", unit="seed-step", disable=not progress) as bar, \
                torch.enable_grad():
            records = run_seeds(inv, seeds, config, bar)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    timings["inversion"] = sum(r.seconds for r in records)
    timings["total"] = time.perf_counter() - started
    return LMSanitatorReport(
        verdict="backdoored" if any(r.accepted for r in records) else "clean",
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
