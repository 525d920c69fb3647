"""Target clusters (where confirmed triggers send inputs) and root attribution (the fewest token ids that fire
a cluster), on hand-built representations."""

from __future__ import annotations

import torch

from patronus_ext.detect.patronus.groups import attribute_roots, describe_backdoor, target_clusters
from patronus_ext.detect.patronus.verify import TriggerCheck


def _check(text, key, diff=0.0, confirmed=True):
    return TriggerCheck(text, list(key), diff, 0.95, 0.4 - diff, 0.05, confirmed, "verified", 16, 0)


def _reps(direction, n=16, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    return direction.unsqueeze(0) + noise * torch.randn(n, direction.numel(), generator=g)


A, B = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])


def test_triggers_are_clustered_by_where_they_send_inputs():
    checks = [_check("vorpal", (10, 11), 0.1), _check("vorple", (10, 12), 0.2), _check("zq", (13,), 0.0)]
    reps = {(10, 11): _reps(A, seed=1), (10, 12): _reps(A, seed=2), (13,): _reps(B, seed=3)}
    clusters = target_clusters(checks, reps)
    assert sorted(sorted(c.text for c in cluster) for cluster in clusters) == [["vorpal", "vorple"], ["zq"]]
    assert [c.text for c in clusters[0]] == ["zq"]   # strongest (lowest diff_cos) first


def test_roots_are_the_fewest_tokens_that_fire_the_cluster():
    members = [_check("vorpal", (10, 11)), _check("vorple", (10, 12)), _check("hrpx", (14, 15)),
               _check("ab", (16,))]
    reps = {m.key: _reps(A, seed=i) for i, m in enumerate(members)}
    calls = []

    def verify(key):
        calls.append(key)
        fires = key == (10,)                    # the shared piece alone reproduces the shift
        towards = A if key in ((10,), (11,)) else B   # (11,) fires elsewhere: not a root of this cluster
        return _check(str(key), key, 0.0 if fires or key == (11,) else 0.9, fires or key == (11,)), _reps(towards)

    roots = attribute_roots(members, reps, verify)
    assert [(r.token_ids, sorted(r.explains)) for r in roots] == [
        ([10], ["vorpal", "vorple"]), ([16], ["ab"]), ([14, 15], ["hrpx"])]
    assert (16,) not in calls and set(calls) == {(10,), (11,), (12,), (14,), (15,)}  # members are not re-verified


def test_describe_backdoor_sets_targets_and_centroids():
    checks = [_check("a1", (1,)), _check("b1", (2,))]
    reps = {(1,): _reps(A), (2,): _reps(B)}
    groups = describe_backdoor(checks, reps, verify=lambda key: (_check("x", key, 0.9, False), _reps(B)))
    assert len(groups) == 2 and {c.target for c in checks} == {0, 1}
    for g in groups:
        member = next(c for c in checks if c.text == g.members[0])
        assert torch.allclose(g.centroid, reps[member.key].mean(0), atol=1e-6)
        assert g.to_dict()["roots"][0]["token_ids"] == list(member.key)
