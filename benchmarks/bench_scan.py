"""Scan speed on the real all-MiniLM-L6-v2: batched candidate scoring and kernel backends.

Two faces, same cases:

* ``python benchmarks/bench_scan.py [--rounds 3] [--threads 2]`` times the variants of each
  case round-robin in one process and prints medians and ratios (JSON under
  ``benchmarks/results/``).
* ``python -m pytest benchmarks/bench_scan.py`` is the pytest-benchmark suite
  (``benchmarks/conftest.py`` prints the ratios against ``ext``).

Cases (the ``fast`` scan profile: K=8 triggers, dev batch of 8 texts, 4 candidates per slot,
beam 2, max 32 tokens):

* one beam-search round of candidate scoring, from a cold representation cache:
  ``ext`` = batched scoring (each candidate token's dev representations computed once, many
  tokens per forward, every beam step one batched ``ops.supcon_loss`` call) on the compiled
  kernels; ``reference`` = the same on the PyTorch reference ops; ``one_by_one`` = the
  authors' way (fresh forwards of the whole dev set, clean and triggered, for every candidate
  set, one loss each); ``one_by_one_cached`` = the fair one-by-one baseline (the clean dev
  representations from the cache, one triggered forward and one loss per set).
  Target: batched >= 5x faster than the authors' one-by-one; the ratio to the fair baseline is
  reported beside it.
* one gradient step (clean batch + poisoned copies, SupCon, backward to the input
  embeddings, masked reduction) followed by the HotFlip candidate top-k over the searchable
  vocabulary: ``ext`` vs ``reference`` ops.  The model's forward/backward dominates both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

try:
    from patronus_ext import lm
    from patronus_ext.data import corpora as data
except ImportError:  # pragma: no cover - run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from patronus_ext import lm
    from patronus_ext.data import corpora as data
from patronus_ext.detect import ScanConfig
from patronus_ext.detect.patronus.search import TriggerSearch
from patronus_ext.detect.patronus.vocabulary import token_vocabulary

from _common import machine_facts, medians, results_path, time_round_robin


class ScanBench:
    """The packaged MiniLM, a fast-profile search state and one round's fixed candidates."""

    def __init__(self, seed: int = 0):
        self.config = ScanConfig.profile("fast", seed=seed)
        self.model = lm.load_model(lm.DEFAULT_MODEL)
        self.tokenizer = lm.load_tokenizer(lm.DEFAULT_MODEL)
        self.adapter = lm.ModelAdapter(self.model, self.tokenizer, max_length=self.config.max_length)
        corpus = data.read_corpus("wikitext2", limit=400, max_words=self.config.max_words, seed=seed)
        self.dev, self.search_texts = corpus[:self.config.batch_size], corpus[self.config.batch_size:]
        self.vocab = token_vocabulary(self.tokenizer, self.config.zipf_threshold)
        search = self.search("ext")
        self.current = torch.randperm(len(self.vocab), generator=torch.Generator().manual_seed(seed))[
            :self.config.num_triggers].tolist()
        grads, _ = search.trigger_gradients(self.vocab.rows[self.current])
        self.candidates = search.candidates(grads, self.vocab, self.current)

    def search(self, backend: str, batched: bool = True, cached_clean: bool = False) -> TriggerSearch:
        config = self.config.replace(batched_scoring=batched)
        return TriggerSearch(self.adapter, config, self.search_texts, self.dev,
                             torch.Generator().manual_seed(config.seed), backend=backend,
                             cached_clean_baseline=cached_clean)

    def scoring_round(self, variant: str):
        """One beam-search round from a cold cache; returns the chosen set."""
        search = self.search("reference" if variant == "reference" else "ext",
                             batched=not variant.startswith("one_by_one"), cached_clean=variant == "one_by_one_cached")
        with torch.no_grad():
            return search.beam_search(self.vocab, self.current, self.candidates)

    def gradient_step(self, backend: str):
        search = self.search(backend)
        grads, _ = search.trigger_gradients(self.vocab.rows[self.current])
        return search.candidates(grads, self.vocab, self.current)


SCORING_VARIANTS = ("ext", "reference", "one_by_one", "one_by_one_cached")
GRADIENT_VARIANTS = ("ext", "reference")


@pytest.fixture(scope="module")
def bench_state():
    torch.manual_seed(0)
    return ScanBench()


@pytest.mark.parametrize("variant", SCORING_VARIANTS)
def test_candidate_scoring_round(benchmark, bench_state, variant):
    rounds = 1 if variant.startswith("one_by_one") else 3
    chosen, scored = benchmark.pedantic(bench_state.scoring_round, args=(variant,), rounds=rounds, iterations=1)
    benchmark.extra_info["candidate_sets_scored"] = scored
    assert len(chosen) == bench_state.config.num_triggers


@pytest.mark.parametrize("variant", GRADIENT_VARIANTS)
def test_gradient_step_and_candidates(benchmark, bench_state, variant):
    cands = benchmark.pedantic(bench_state.gradient_step, args=(variant,), rounds=3, iterations=1)
    assert len(cands) == bench_state.config.num_triggers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    state = ScanBench()
    state.scoring_round("ext")  # warm-up: allocator, kernels, tokenizer caches
    sets_scored = state.scoring_round("ext")[1]
    # Both cases' variants in one round-robin, so background load hits every variant alike.
    cases = {("candidate_scoring_round", v): (lambda v=v: state.scoring_round(v)) for v in SCORING_VARIANTS}
    cases.update({("gradient_step", v): (lambda v=v: state.gradient_step(v)) for v in GRADIENT_VARIANTS})
    samples = time_round_robin(cases, args.rounds, warmup=0)
    times: dict[str, dict[str, list[float]]] = {"candidate_scoring_round": {}, "gradient_step": {}}
    for (case, variant), seconds in samples.items():
        times[case][variant] = seconds
    medians_s = {case: medians(variants) for case, variants in times.items()}
    print(f"all-MiniLM-L6-v2, fast profile, {args.threads} threads, {args.rounds} rounds, "
          f"{sets_scored} candidate sets per scoring round")
    for case, per_variant in medians_s.items():
        for variant, median in per_variant.items():
            ratio = median / per_variant["ext"]
            print(f"{case:26} {variant:11} median {median:8.3f} s   {ratio:6.2f}x the ext time")
    path = results_path("bench_scan")
    path.write_text(json.dumps({"machine": machine_facts(), "threads": args.threads, "rounds": args.rounds,
                                "candidate_sets_per_round": sets_scored, "times_s": times, "medians_s": medians_s,
                                "config": state.config.to_dict()}, indent=2, default=str))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
