"""What the backdoor is, not only which words fire it: target clusters and their root token ids.

A backdoor with a few planted words often fires on many more: every word that
holds a planted word's sub-tokens, near neighbours of a trigger, and so on.
They are real triggers of the model, but a user needs the structure:

* **target clusters**: confirmed triggers grouped by where they send inputs
  (the mean direction of their triggered representations; single linkage at
  ``TARGET_COS``).  One cluster is one attack vector of the backdoor.
* **roots**: per cluster, the smallest set of token ids that fires it.  Every
  distinct token id of the cluster's members is inserted alone and verified
  like any candidate; tokens that reproduce the shift towards the cluster's
  target are roots, chosen greedily until they explain every member that holds
  one.  A member holding no firing single token is its own root (the whole
  token sequence is needed).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ...core.files import JSONRecord
from .verify import TriggerCheck

#: Mean triggered directions closer than this (cosine) send inputs to one target.
TARGET_COS = 0.9
#: At most this many candidate root tokens are verified per cluster (the most shared first).
MAX_ROOT_CANDIDATES = 64


@dataclasses.dataclass
class Root(JSONRecord):
    token_ids: list[int]
    text: str
    diff_cos: float
    poison_cos: float
    explains: list[str]          # member texts that hold this root


@dataclasses.dataclass
class TargetGroup:
    """One target cluster: its members, its roots and the tightest margins among its members."""

    target: int
    members: list[str]
    member_ids: list[list[int]]
    roots: list[Root]
    diff_margin: float           # the smallest diff_cos margin among members (how clearly they fire)
    poison_margin: float
    centroid: torch.Tensor = dataclasses.field(repr=False, default=None)   # [d] mean triggered representation

    def to_dict(self) -> dict:
        return {"target": self.target, "roots": [r.to_dict() for r in self.roots], "members": self.members,
                "member_token_ids": self.member_ids, "size": len(self.members),
                "diff_margin": self.diff_margin, "poison_margin": self.poison_margin}


def _direction(reps: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(reps.double(), dim=1).mean(0), dim=0)


def target_clusters(confirmed: Sequence[TriggerCheck], triggered: dict[tuple[int, ...], torch.Tensor],
                    target_cos: float = TARGET_COS) -> list[list[TriggerCheck]]:
    """Confirmed triggers grouped by where they send inputs (strongest member first in each cluster)."""
    items = sorted(confirmed, key=lambda c: c.diff_cos)
    if not items:
        return []
    directions = torch.stack([_direction(triggered[c.key]) for c in items])
    close = (directions @ directions.T) > target_cos
    label = list(range(len(items)))

    def find(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i

    for i, j in close.nonzero().tolist():
        a, b = find(i), find(j)
        if a != b:
            label[max(a, b)] = min(a, b)
    clusters: dict[int, list[TriggerCheck]] = {}
    for i, item in enumerate(items):
        clusters.setdefault(find(i), []).append(item)
    return list(clusters.values())


def attribute_roots(members: Sequence[TriggerCheck], triggered: dict[tuple[int, ...], torch.Tensor],
                    verify: Callable[[tuple[int, ...]], tuple[TriggerCheck, torch.Tensor]],
                    target_cos: float = TARGET_COS, max_candidates: int = MAX_ROOT_CANDIDATES) -> list[Root]:
    """The smallest set of token ids that fires the cluster ``members`` (see the module doc).

    ``verify(key)`` verifies one candidate (as the scan does) and returns its
    check and triggered representations.
    """
    centre = F.normalize(torch.stack([_direction(triggered[m.key]) for m in members]).mean(0), dim=0)
    counts: dict[int, int] = {}
    for m in members:
        for token in set(m.key):
            counts[token] = counts.get(token, 0) + 1
    candidates = sorted(counts, key=lambda t: (-counts[t], t))[:max_candidates]
    firing: dict[int, TriggerCheck] = {}
    known = {m.key: m for m in members}
    for token in candidates:
        key = (token,)
        if key in known:
            check, reps = known[key], triggered[key]
        else:
            check, reps = verify(key)
        if check.confirmed and float(_direction(reps) @ centre) > target_cos:
            firing[token] = check
    roots: list[Root] = []
    unexplained = {m.key: m for m in members}
    while unexplained and firing:
        best = max(firing, key=lambda t: (sum(t in key for key in unexplained), -firing[t].diff_cos))
        explained = [m for key, m in unexplained.items() if best in key]
        if not explained:
            break
        check = firing.pop(best)
        roots.append(Root([best], check.text, check.diff_cos, check.poison_cos, [m.text for m in explained]))
        for m in explained:
            unexplained.pop(m.key)
    for m in unexplained.values():  # needs its whole token sequence
        roots.append(Root(list(m.key), m.text, m.diff_cos, m.poison_cos, [m.text]))
    return roots


def describe_backdoor(confirmed: Sequence[TriggerCheck], triggered: dict[tuple[int, ...], torch.Tensor],
                      verify: Callable[[tuple[int, ...]], tuple[TriggerCheck, torch.Tensor]],
                      target_cos: float = TARGET_COS) -> list[TargetGroup]:
    """Target clusters with their roots; sets ``TriggerCheck.target`` on every confirmed trigger."""
    groups = []
    for index, members in enumerate(target_clusters(confirmed, triggered, target_cos)):
        for m in members:
            m.target = index
        roots = attribute_roots(members, triggered, verify, target_cos)
        centroid = torch.cat([triggered[m.key] for m in members]).double().mean(0).float()
        groups.append(TargetGroup(index, [m.text for m in members], [list(m.key) for m in members], roots,
                                  min(m.diff_margin for m in members), min(m.poison_margin for m in members),
                                  centroid))
    return groups
