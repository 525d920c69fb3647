"""Multi-trigger contrastive trigger search (Patronus, docs/METHODS.md §1 steps 1-5).

K candidate triggers are searched in parallel.  A gradient step feeds a clean
batch (label 0) and poisoned copies (each sample a random trigger i, label i + 1)
through the model, takes the SupCon loss of their representations and
back-propagates to the input embeddings; the gradient at trigger i's
positions, summed in one masked reduction, gives HotFlip scores for every
searchable token (:func:`patronus_ext.ops.hotflip.hotflip_candidates`).  Candidates are then chosen by a beam
search over trigger slots, scored on a fixed dev batch.

Candidate scoring is batched: the representation of "dev batch with trigger t
at fixed positions" depends only on t, so each token's dev representations are
computed once (many tokens per forward) and cached; every candidate set is
then a SupCon problem assembled from the cache, and all sets of one beam step
are scored with a single batched ``ops.supcon_loss`` call.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from ... import ops
from ...core.similarity import batched_pairwise_cos
from ...core.similarity import poison_cos as mean_pairwise_cos
from ...data.triggers import TriggeredBatch, insert_token_triggers, sample_gaps
from ...lm.adapter import ModelAdapter
from ...ops.hotflip import hotflip_candidates
from .config import ScanConfig
from .vocabulary import Vocabulary

log = logging.getLogger(__name__)

#: Sequences per forward when filling the representation cache.
FORWARD_CHUNK = 256
#: The shift term counts a move of at most this many clean spreads (see :meth:`TriggerSearch.shift_term`).
SHIFT_CAP = 10.0
#: The collapse term counts a triggered spread of at most this many clean spreads (an ordinary word's rows are
#: about as spread as clean texts; see :meth:`TriggerSearch.collapse_term`).
COLLAPSE_CAP = 2.0


def row_key(row: torch.Tensor) -> tuple[int, ...]:
    """A trigger's identity: its sub-token ids without padding."""
    return tuple(int(t) for t in row.tolist() if t >= 0)


@dataclasses.dataclass
class DevBatch:
    """A fixed batch of clean texts with fixed insertion gaps, for comparable scores."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    gaps: torch.Tensor
    clean_reps: torch.Tensor  # [B, d]

    @functools.cached_property
    def spread(self) -> float:
        """:func:`clean_spread` of the batch, measured when a shift loop first needs it."""
        return clean_spread(self.clean_reps)


@dataclasses.dataclass
class LoopResult:
    """The outcome of one fuzz loop: the final trigger set and how the search went."""

    final_rows: torch.Tensor  # [K, T]
    dev_loss_history: list[float]
    accepted_updates: int
    gradient_seconds: float
    scoring_seconds: float
    candidate_sets_scored: int

    @property
    def final_keys(self) -> list[tuple[int, ...]]:
        """The final triggers' identities: their token-id tuples."""
        return [row_key(r) for r in self.final_rows]


@dataclasses.dataclass
class GradientBatch:
    """One gradient step's inputs: clean rows first, then the poisoned copies."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor        # 0 clean, i + 1 for trigger i
    trigger_slot: torch.Tensor  # [poisoned rows, L]: sub-token index of the trigger there, -1 elsewhere
    which: torch.Tensor         # [poisoned rows]: trigger index of each poisoned row
    clean_rows: int


def reduce_trigger_gradients(grad: torch.Tensor, trigger_slot: torch.Tensor, which: torch.Tensor, count: int,
                             width: int) -> torch.Tensor:
    """``g[i, t] = sum of grad over positions holding sub-token t of trigger i`` (``count`` triggers), one masked
    reduction.

    ``grad [R, L, d]`` (poisoned rows), ``trigger_slot [R, L]``, ``which [R]`` -> ``[K, T, d]``.
    """
    held = trigger_slot >= 0
    target = which.unsqueeze(1).expand_as(trigger_slot)[held] * width + trigger_slot[held]
    g = torch.zeros(count * width, grad.shape[-1], dtype=torch.float32, device=grad.device)
    g.index_add_(0, target, grad[held].float())
    return g.view(count, width, -1)


def mean_shift(triggered: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``1 - cos(h(x + t), h(x))`` averaged over the last-but-one axis: ``triggered [..., B, d]`` against its
    paired ``clean [B, d]`` -> ``[...]``."""
    return 1.0 - F.cosine_similarity(triggered, clean.expand_as(triggered), dim=-1).mean(-1)


def group_spread(rows: torch.Tensor) -> torch.Tensor:
    """``1 - mean pairwise cosine`` over the last-but-one axis: ``rows [..., B, d]`` (B >= 2) -> ``[...]``."""
    return 1.0 - batched_pairwise_cos(rows)


def clean_spread(clean: torch.Tensor) -> float:
    """``1 - mean pairwise cosine`` of clean representations ``[B, d]`` (B >= 2): the scale a shift is measured in
    (the verifier's too)."""
    return max(1.0 - mean_pairwise_cos(clean), 1e-6)


@dataclasses.dataclass
class PhaseClock:
    gradient: float = 0.0
    scoring: float = 0.0


class TriggerSearch:
    """State shared by the fuzz loops of one scan: batches, fixed dev data and the representation cache."""

    def __init__(self, adapter: ModelAdapter, config: ScanConfig, search_texts: Sequence[str],
                 dev_texts: Sequence[str], generator: torch.Generator, backend: str = "auto",
                 cached_clean_baseline: bool = False):
        if len(search_texts) < config.batch_size:
            raise ValueError(f"need at least batch_size={config.batch_size} search texts, got {len(search_texts)}")
        self.adapter = adapter
        self.cfg = config
        self.gen = generator
        self.backend = backend
        #: One-by-one scoring only: reuse the cached clean dev representations (the fair baseline for
        #: benchmarks) instead of recomputing them for every candidate set (the authors' way).
        self.cached_clean_baseline = cached_clean_baseline
        self.table = adapter.embedding_matrix().detach()
        self.pad_id = int(adapter.tokenizer.pad_token_id)
        self.search_texts = list(search_texts)
        self._order = self._batches_forever()
        self.dev = [self._make_dev_batch(dev_texts[i:i + config.batch_size])
                    for i in range(0, config.dev_batches * config.batch_size, config.batch_size)]
        self._cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        self.clock = PhaseClock()
        #: The weights of the shift and collapse terms in the objective of the loop now running (0: SupCon alone).
        self.shift_weight = 0.0
        self.collapse_weight = 0.0

    # -- data ------------------------------------------------------------------------------
    def _batches_forever(self):
        """Shuffled search batches, reshuffled every epoch (not the same batch every step)."""
        size = self.cfg.batch_size
        for _ in itertools.count():
            order = torch.randperm(len(self.search_texts), generator=self.gen).tolist()
            for start in range(0, len(order) - size + 1, size):
                yield self.adapter.tokenize([self.search_texts[i] for i in order[start:start + size]])

    def _insert(self, input_ids, attention_mask, trigger_rows, gaps=None) -> TriggeredBatch:
        return insert_token_triggers(input_ids, attention_mask, trigger_rows, self.cfg.insert_num,
                                     prefix=self.adapter.special_prefix, suffix=self.adapter.special_suffix,
                                     pad_id=self.pad_id, gaps=gaps, generator=self.gen)

    @torch.no_grad()
    def _make_dev_batch(self, texts: Sequence[str]) -> DevBatch:
        batch = self.adapter.tokenize(texts)
        gaps = sample_gaps(batch["attention_mask"], self.cfg.insert_num, self.adapter.special_prefix,
                           self.adapter.special_suffix, self.gen)
        reps = self.adapter.represent(**batch).float()
        return DevBatch(batch["input_ids"], batch["attention_mask"], gaps, reps)

    # -- representations -------------------------------------------------------------------
    @torch.no_grad()
    def dev_reps(self, batch_index: int, rows: torch.Tensor) -> torch.Tensor:
        """``[len(rows), B, d]``: dev batch ``batch_index`` with each trigger row inserted."""
        dev = self.dev[batch_index]
        keys = [row_key(r) for r in rows]
        missing = list(dict.fromkeys(key for key in keys if (batch_index, key) not in self._cache))
        size = dev.input_ids.shape[0]
        per_chunk = max(1, FORWARD_CHUNK // size)
        width = rows.shape[1]
        for start in range(0, len(missing), per_chunk):
            chunk = missing[start:start + per_chunk]
            trig = torch.full((len(chunk), width), -1, dtype=torch.long)
            for i, key in enumerate(chunk):
                trig[i, :len(key)] = torch.tensor(key)
            n = len(chunk)
            tb = self._insert(dev.input_ids.repeat(n, 1), dev.attention_mask.repeat(n, 1),
                              trig.repeat_interleave(size, 0), gaps=dev.gaps.repeat(n, 1))
            reps = self.adapter.represent(tb.input_ids, tb.attention_mask).float().view(n, size, -1)
            for i, key in enumerate(chunk):
                self._cache[(batch_index, key)] = reps[i]
        return torch.stack([self._cache[(batch_index, key)] for key in keys])

    # -- objective -------------------------------------------------------------------------
    def shift_term(self, triggered: torch.Tensor, clean: torch.Tensor, spread: float) -> torch.Tensor:
        """``-shift_weight x`` the triggered rows' mean shift from their clean texts, in clean spreads: what
        the objective adds so that a trigger which moves texts far without sending them to one place (an
        attack that scatters its outputs) still lowers the loss.  Capped at ``SHIFT_CAP`` spreads: a model whose
        clean outputs all but coincide (a random tiny one) would otherwise let the term drown SupCon."""
        return -self.shift_weight * (mean_shift(triggered, clean) / spread).clamp(max=SHIFT_CAP)

    def collapse_term(self, spreads: torch.Tensor, spread: float) -> torch.Tensor:
        """``collapse_weight x`` the mean over triggers of their rows' spreads (``spreads [..., K]``, see
        :func:`group_spread`) in clean spreads -> ``[...]``: lower where a trigger sends every text to one place,
        wherever that place is.  SupCon barely rewards a word whose place lies among the clean texts (a backdoor
        aimed at a point on the clean data); this term does.  Capped at ``COLLAPSE_CAP`` spreads."""
        return self.collapse_weight * (spreads / spread).clamp(max=COLLAPSE_CAP).mean(-1)

    def extra_terms(self, triggered: torch.Tensor, clean: torch.Tensor, spread: float) -> torch.Tensor | float:
        """The loop's terms beyond SupCon for ``triggered [..., K, B, d]`` against ``clean [B, d]``: ``[...]``."""
        total = 0.0
        if self.shift_weight:
            total = total + self.shift_term(triggered, clean, spread).mean(-1)
        if self.collapse_weight:
            total = total + self.collapse_term(group_spread(triggered), spread)
        return total

    def score_sets(self, sets: Sequence[torch.Tensor], batches: Sequence[int]) -> torch.Tensor:
        """Mean dev loss of each trigger set (``[K, T]`` rows): SupCon, plus the loop's shift or collapse term."""
        start = time.perf_counter()
        score = self._score_batched if self.cfg.batched_scoring else self._score_one_by_one
        total = torch.zeros(len(sets))
        for b in batches:
            total += score(sets, b)
        self.clock.scoring += time.perf_counter() - start
        return total / len(batches)

    def _score_batched(self, sets: Sequence[torch.Tensor], b: int) -> torch.Tensor:
        """All sets from cached per-trigger representations, in one batched SupCon call."""
        count = sets[0].shape[0]
        reps = self.dev_reps(b, torch.cat(list(sets)))  # [C*K, B, d]
        size, dim = reps.shape[1], reps.shape[2]
        clean = self.dev[b].clean_reps.expand(len(sets), 1, size, dim)
        features = torch.cat([clean, reps.view(len(sets), count, size, dim)], 1).reshape(len(sets), -1, dim)
        labels = torch.arange(count + 1, device=features.device).repeat_interleave(size)
        loss = ops.supcon_loss(features, labels, self.cfg.temperature, backend=self.backend).float()
        if self.shift_weight or self.collapse_weight:
            dev = self.dev[b]
            loss = loss + self.extra_terms(reps.view(len(sets), count, size, dim), dev.clean_reps, dev.spread)
        return loss.cpu()

    @torch.no_grad()
    def _score_one_by_one(self, sets: Sequence[torch.Tensor], b: int) -> torch.Tensor:
        """The authors' way, kept as the benchmark baseline: fresh forwards and one loss per set
        (with ``cached_clean_baseline`` the clean half comes from the cache: only the triggered forward
        is per set, the fair one-by-one baseline)."""
        dev = self.dev[b]
        size = dev.input_ids.shape[0]
        losses = []
        for rows in sets:
            count = rows.shape[0]
            tb = self._insert(dev.input_ids.repeat(count, 1), dev.attention_mask.repeat(count, 1),
                              rows.repeat_interleave(size, 0), gaps=dev.gaps.repeat(count, 1))
            clean = (dev.clean_reps if self.cached_clean_baseline
                     else self.adapter.represent(dev.input_ids, dev.attention_mask).float())
            triggered = self.adapter.represent(tb.input_ids, tb.attention_mask).float()
            labels = torch.arange(count + 1, device=clean.device).repeat_interleave(size)
            loss = ops.supcon_loss(torch.cat([clean, triggered]), labels, self.cfg.temperature,
                                   backend=self.backend).float()
            if self.shift_weight or self.collapse_weight:
                loss = loss + self.extra_terms(triggered.view(count, size, -1), clean, dev.spread)
            losses.append(loss.cpu())
        return torch.stack(losses)

    def gradient_batch(self, rows: torch.Tensor) -> "GradientBatch":
        """A clean batch (label 0) plus poisoned copies, each row with a random trigger i (label i+1)."""
        cfg = self.cfg
        clean = next(self._order)
        ids, mask = clean["input_ids"], clean["attention_mask"]
        size = ids.shape[0]
        which = torch.randint(rows.shape[0], (cfg.poison_copies * size,), generator=self.gen)
        poisoned = self._insert(ids.repeat(cfg.poison_copies, 1), mask.repeat(cfg.poison_copies, 1), rows[which])
        extra = poisoned.input_ids.shape[1] - ids.shape[1]
        return GradientBatch(
            input_ids=torch.cat([F.pad(ids, (0, extra), value=self.pad_id), poisoned.input_ids]),
            attention_mask=torch.cat([F.pad(mask, (0, extra), value=0), poisoned.attention_mask]),
            labels=torch.cat([torch.zeros(size, dtype=torch.long), which + 1]).to(ids.device),
            trigger_slot=poisoned.trigger_slot, which=which.to(ids.device), clean_rows=size)

    def trigger_gradients(self, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Sum of dL/d(embedding) at each trigger's positions: ``[K, T, d]``, and the loss."""
        start = time.perf_counter()
        adapter = self.adapter
        batch = self.gradient_batch(rows)
        embeds = adapter.embed(batch.input_ids).detach().requires_grad_(True)
        hidden = adapter.hidden_states(inputs_embeds=embeds, attention_mask=batch.attention_mask)
        reps = adapter.select_position(hidden, batch.input_ids, batch.attention_mask).float()
        loss = ops.supcon_loss(reps, batch.labels, self.cfg.temperature, backend=self.backend)
        if self.shift_weight or self.collapse_weight:
            size = batch.clean_rows
            clean = reps[:size].detach()
            spread = clean_spread(clean)
            if self.shift_weight:   # poisoned copy c of clean row r: c * size + r
                loss = loss + self.shift_term(reps[size:].view(-1, size, reps.shape[-1]), clean, spread).mean()
            if self.collapse_weight:   # each poisoned row carries a random trigger: group the rows by trigger
                groups = [reps[size:][batch.which == k] for k in range(rows.shape[0])]
                spreads = [group_spread(g) for g in groups if g.shape[0] >= 2]
                if spreads:
                    loss = loss + self.collapse_term(torch.stack(spreads), spread)
        (grad,) = torch.autograd.grad(loss, embeds)
        g = reduce_trigger_gradients(grad[batch.clean_rows:], batch.trigger_slot, batch.which, rows.shape[0],
                                     rows.shape[1])
        self.clock.gradient += time.perf_counter() - start
        return g, float(loss.detach())

    # -- candidates ------------------------------------------------------------------------
    def candidates(self, grads: torch.Tensor, vocab: Vocabulary, current: list[int]) -> list[list[int]]:
        """Top HotFlip candidates (vocabulary indices) per slot, excluding the slot's current one."""
        return hotflip_candidates(grads, self.table, self.cfg.num_candidates, rows=vocab.rows,
                                  exclude=[(c,) for c in current], backend=self.backend)

    def beam_search(self, vocab: Vocabulary, current: list[int], cands: list[list[int]]) -> tuple[list[int], int]:
        """Slot-by-slot beam search; returns the best set and how many sets were scored."""
        rows = vocab.rows
        if self.cfg.batched_scoring:
            # Every token a proposal can hold is known now: one batched forward fills the cache.
            start = time.perf_counter()
            self.dev_reps(0, rows[sorted(set(current) | {c for slot in cands for c in slot})])
            self.clock.scoring += time.perf_counter() - start
        start_loss = float(self.score_sets([rows[current]], [0])[0])
        beams: list[tuple[float, list[int]]] = [(start_loss, list(current))]
        scored = 1
        for slot, slot_cands in enumerate(cands):
            proposals = []
            for _, members in beams:
                for cand in slot_cands:
                    if cand in members:
                        continue  # one token may not fill two slots
                    new = list(members)
                    new[slot] = cand
                    proposals.append(new)
            if not proposals:
                continue
            losses = self.score_sets([rows[p] for p in proposals], [0]).tolist()
            scored += len(proposals)
            pool = {tuple(m): (loss, m) for loss, m in beams + list(zip(losses, proposals))}
            beams = sorted(pool.values(), key=lambda item: item[0])[:self.cfg.beam_size]
        return beams[0][1], scored

    # -- one fuzz loop ---------------------------------------------------------------------
    def run_loop(self, vocab: Vocabulary, progress=None, shift_weight: float = 0.0,
                 collapse_weight: float = 0.0, rounds: int | None = None) -> LoopResult:
        """One fuzz loop of ``rounds`` candidate updates (None: ``update_rounds``); ``shift_weight`` /
        ``collapse_weight`` > 0 add the shift / collapse term to its objective (:meth:`shift_term`,
        :meth:`collapse_term`)."""
        cfg = self.cfg
        self.shift_weight, self.collapse_weight = shift_weight, collapse_weight
        trigger_count = min(cfg.num_triggers, len(vocab))
        if trigger_count < 2:
            raise ValueError(f"the searchable vocabulary has {len(vocab)} entries; need at least 2")
        gradient_before, scoring_before = self.clock.gradient, self.clock.scoring
        pool = vocab.start_pool(trigger_count)  # rare entries first when the vocabulary holds common ones too
        if pool is None:
            current = torch.randperm(len(vocab), generator=self.gen)[:trigger_count].tolist()
        else:
            current = [pool[i] for i in torch.randperm(len(pool), generator=self.gen)[:trigger_count].tolist()]
        dev_batches = range(len(self.dev))
        best = float(self.score_sets([vocab.rows[current]], dev_batches)[0])
        history, accepted, scored = [best], 0, 0
        for round_index in range(cfg.update_rounds if rounds is None else rounds):
            # Summed on the model's device: the HotFlip scoring runs there against the embedding table.
            grads = torch.zeros(trigger_count, vocab.rows.shape[1], self.table.shape[1], device=self.table.device)
            for _ in range(cfg.grad_accum):
                g, _ = self.trigger_gradients(vocab.rows[current])
                grads += g
            cands = self.candidates(grads, vocab, current)
            proposal, count = self.beam_search(vocab, current, cands)
            scored += count
            if proposal != current:
                loss = float(self.score_sets([vocab.rows[proposal]], dev_batches)[0])
                if loss < best:  # accept only what lowers the dev loss
                    best, current = loss, proposal
                    accepted += 1
            history.append(best)
            log.info("round %d: dev loss %.4f, triggers %s", round_index, best,
                     [vocab.texts[i] for i in current])
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{best:.3f}")
        return LoopResult(vocab.rows[current].clone(), history, accepted, self.clock.gradient - gradient_before,
                          self.clock.scoring - scoring_before, scored)
