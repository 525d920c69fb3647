"""Averaged next-token distributions of many candidate continuations over one set of prompts, fast.

The prompts (rendered up to where the answer begins) go through the model once; their key-value cache is
then expanded over every batch of candidates, so a candidate costs only its own tokens, never the
prompt's again.  Rows are candidate-major: row ``c * p + j`` is candidate ``c`` after prompt ``j``.

:class:`PrefixScorer` counts the token positions it runs through the model (``positions``) and the ones
the same schedule would cost when every call re-reads its prompt, as a ``generate()`` call per candidate
does (``naive_positions``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...lm.adapter import accepts_argument, position_ids
from ...lm.prompting import left_pad


def _layers_of(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer ``(keys, values)`` ``[B, heads, L, d]`` of a transformers cache (any recent version)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def _make_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=list(layers))
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(layers))


def averaged_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of ``probs [C, V]``."""
    p = probs.clamp_min(1e-12)
    return -(probs * p.log()).sum(-1)


class PrefixScorer:
    """Next-token distributions after ``prompts`` + candidate tokens, averaged over prompts.

    ``prompts``: token ids of each prompt (up to where the answer begins).  ``batch_rows``: candidate x
    prompt rows per forward.
    """

    def __init__(self, model: nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, batch_rows: int = 512):
        if not prompts:
            raise ValueError("no prompt to score candidates after")
        self.model = model
        self.device = next(model.parameters()).device
        self.batch_rows = int(batch_rows)
        self.takes_keep = accepts_argument(model, "logits_to_keep")
        self.cache_name = "cache" if accepts_argument(model, "cache") else "past_key_values"
        ids, mask = left_pad([list(p) for p in prompts], pad_id)
        self.mask = mask.to(self.device)
        self.lengths = [len(p) for p in prompts]
        self.last_position = position_ids(self.mask)[:, -1]
        self.positions = 0
        self.naive_positions = 0
        with torch.no_grad():
            out = model(input_ids=ids.to(self.device), attention_mask=self.mask,
                        position_ids=position_ids(self.mask), use_cache=True, **self._keep(1))
        self.positions += int(self.mask.sum())
        self.layers = [(k.detach(), v.detach()) for k, v in _layers_of(self._cache_of(out))]

    @property
    def count(self) -> int:
        return int(self.mask.shape[0])

    def _keep(self, n: int) -> dict:
        return {"logits_to_keep": int(n)} if self.takes_keep else {}

    def _cache_of(self, out):
        cache = getattr(out, self.cache_name, None)
        return cache if cache is not None else getattr(out, "past_key_values")

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return torch.softmax(logits.to(dtype), dim=-1)

    def _forward(self, seqs: torch.Tensor, prompts: int, keep: int):
        """Logits ``[c * prompts, keep, V]`` after each of ``seqs [c, t]`` (whole) and the cache it leaves."""
        c, t = seqs.shape
        rows = c * prompts
        cache = _make_cache([(k[:prompts].repeat(c, 1, 1, 1), v[:prompts].repeat(c, 1, 1, 1))
                             for k, v in self.layers])
        mask = torch.cat([self.mask[:prompts].repeat(c, 1),
                          torch.ones((rows, t), dtype=self.mask.dtype, device=self.device)], 1)
        steps = torch.arange(1, t + 1, device=self.device)
        positions = (self.last_position[:prompts].repeat(c).unsqueeze(1) + steps.unsqueeze(0))
        ids = seqs.to(self.device).repeat_interleave(prompts, 0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_name: cache}, **self._keep(keep))
        self.positions += rows * t
        self.naive_positions += sum(self.lengths[:prompts]) * c + rows * t
        return out.logits[:, -keep:], self._cache_of(out), mask, positions

    def chunks(self, count: int, prompts: int):
        per = max(1, self.batch_rows // prompts)
        return [(start, min(count, start + per)) for start in range(0, count, per)]

    @torch.no_grad()
    def next_probs(self, seqs: torch.Tensor, prompts: int | None = None) -> torch.Tensor:
        """``[C, V]``: the next-token distribution after each of ``seqs [C, t]``, averaged over the first
        ``prompts`` prompts."""
        prompts = min(self.count, prompts or self.count)
        out = []
        for start, stop in self.chunks(seqs.shape[0], prompts):
            logits, _, _, _ = self._forward(seqs[start:stop], prompts, 1)
            out.append(self._probs(logits[:, -1]).view(stop - start, prompts, -1).mean(1))
        return torch.cat(out, 0)

    @torch.no_grad()
    def next_stats(self, seqs: torch.Tensor, prompts: int | None = None, topk: int = 1, progress=None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`next_probs` tells, without keeping ``[C, V]``: the top ``topk`` averaged probabilities
        and tokens ``[C, topk]`` and the averaged distribution's entropy ``[C]``."""
        prompts = min(self.count, prompts or self.count)
        values, indices, entropies = [], [], []
        for start, stop in self.chunks(seqs.shape[0], prompts):
            logits, _, _, _ = self._forward(seqs[start:stop], prompts, 1)
            avg = self._probs(logits[:, -1]).view(stop - start, prompts, -1).mean(1)
            v, i = avg.topk(topk, -1)
            values.append(v)
            indices.append(i)
            entropies.append(averaged_entropy(avg))
            if progress is not None:
                progress.update(stop - start)
        return torch.cat(values, 0), torch.cat(indices, 0), torch.cat(entropies, 0)

    @torch.no_grad()
    def forced_probs(self, seqs: torch.Tensor, prompts: int | None = None) -> torch.Tensor:
        """``[C, t-1]``: the averaged probability of each token of ``seqs [C, t]`` after the ones before it
        (teacher forcing: the reference's score of an inverted sequence)."""
        prompts = min(self.count, prompts or self.count)
        t = seqs.shape[1]
        out = []
        for start, stop in self.chunks(seqs.shape[0], prompts):
            chunk = seqs[start:stop].to(self.device)
            logits, _, _, _ = self._forward(chunk, prompts, t)
            probs = self._probs(logits[:, :-1]).view(stop - start, prompts, t - 1, -1).mean(1)
            out.append(probs.gather(2, chunk[:, 1:].unsqueeze(2)).squeeze(2))
        return torch.cat(out, 0)

    @torch.no_grad()
    def extend(self, seqs: torch.Tensor, steps: int, prompts: int | None = None, progress=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy extension of ``seqs [C, t]`` by ``steps`` tokens on the averaged distribution.

        Returns ``tokens [C, t - 1 + steps]`` (everything after the first token: the given ones, then the
        greedy ones) and ``probs`` of the same shape (each token's averaged probability).  The candidates'
        own tokens are fed once; each greedy token is one more position per row on the cache.
        """
        prompts = min(self.count, prompts or self.count)
        c, t = seqs.shape
        tokens_out, probs_out = [], []
        for start, stop in self.chunks(c, prompts):
            chunk = seqs[start:stop].to(self.device)
            n = stop - start
            logits, cache, mask, positions = self._forward(chunk, prompts, t)
            probs = self._probs(logits).view(n, prompts, t, -1).mean(1)     # [n, t, V]
            given = probs[:, :-1].gather(2, chunk[:, 1:].unsqueeze(2)).squeeze(2) if t > 1 else \
                probs.new_zeros((n, 0))
            chosen_p, chosen = probs[:, -1].max(-1)
            toks, ps = [chunk[:, 1:], chosen.unsqueeze(1)], [given, chosen_p.unsqueeze(1)]
            position = positions[:, -1:]
            for _ in range(steps - 1):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                position = position + 1
                out = self.model(input_ids=chosen.repeat_interleave(prompts).unsqueeze(1), attention_mask=mask,
                                 position_ids=position, use_cache=True, **{self.cache_name: cache},
                                 **self._keep(1))
                self.positions += n * prompts
                self.naive_positions += n * prompts * mask.shape[1]
                cache = self._cache_of(out)
                chosen_p, chosen = self._probs(out.logits[:, -1]).view(n, prompts, -1).mean(1).max(-1)
                toks.append(chosen.unsqueeze(1))
                ps.append(chosen_p.unsqueeze(1))
            tokens_out.append(torch.cat(toks, 1))
            probs_out.append(torch.cat(ps, 1))
            if progress is not None:
                progress.update(n)
        return torch.cat(tokens_out, 0), torch.cat(probs_out, 0)


@torch.no_grad()
def plain_next_probs(model: nn.Module, prompts: Sequence[Sequence[int]], seqs: torch.Tensor, pad_id: int
                     ) -> torch.Tensor:
    """:meth:`PrefixScorer.next_probs` the plain way: every prompt + candidate through the whole model, one
    left-padded batch, no cache (the reference the tests compare with)."""
    device = next(model.parameters()).device
    rows = [list(p) + seqs[c].tolist() for c in range(seqs.shape[0]) for p in prompts]
    ids, mask = left_pad(rows, pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=position_ids(mask.to(device)), use_cache=False).logits[:, -1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.softmax(logits.to(dtype), -1).view(seqs.shape[0], len(prompts), -1).mean(1)
