"""BAIT's inner loop timed against the generate()-per-candidate way, on a slice of the vocabulary.

Two faces, same case:

* ``python benchmarks/bench_bait.py [--model SmolLM2-135M-Instruct] [--candidates 32] [--prompts 8]
  [--steps 16] [--rounds 3] [--threads 2]`` times both variants round-robin in one process and prints
  medians, the ratio and the forward token positions each spent (JSON under ``benchmarks/results/``).
* ``python -m pytest benchmarks/bench_bait.py`` is the pytest-benchmark suite on a tiny chat LLaMA.

The case: ``C`` first tokens (the first ``C`` word-like tokens of the vocabulary, the scan's own candidates),
each extended greedily by ``steps`` tokens after ``P`` benign prompts.

* ``ext`` = the scan's way (:class:`~patronus_ext.detect.bait.scoring.PrefixScorer.extend`): the prompts'
  key-value cache computed once and shared by every candidate, candidates x prompts in large batches, one
  position per row and step on the cache; the next token is chosen on the distribution averaged over the
  prompts (BAIT's rule).
* ``generate_per_candidate`` = one ``model.generate()`` call per candidate over its ``P`` prompts (greedy,
  ``max_new_tokens=steps``): every call re-reads the prompts.  It decodes each prompt on its own (no
  averaging), so it is a cost baseline, not the same answer.

Positions counted: ``ext`` from the scorer's own counter (the shared prefix once, then every row's
positions); ``generate_per_candidate`` = per candidate, every prompt's length + 1 (the prefill) + ``steps - 1``
decoded positions per prompt.
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
except ImportError:  # pragma: no cover - run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from patronus_ext import lm
from patronus_ext.detect import BaitConfig
from patronus_ext.detect.bait.inversion import benign_prompts, word_like_tokens
from patronus_ext.detect.bait.scoring import PrefixScorer
from patronus_ext.lm.prompting import left_pad

from _common import machine_facts, medians, results_path, time_round_robin

VARIANTS = ("ext", "generate_per_candidate")


class BaitBench:
    """A causal LM, ``prompts`` benign prompts and the first ``candidates`` word-like first tokens."""

    def __init__(self, model: str, candidates: int = 32, prompts: int = 8, steps: int = 16):
        self.config = BaitConfig.profile("fast")
        self.tokenizer = lm.load_tokenizer(model)
        self.model = lm.load_model(model, "causal").eval()
        self.prompts = benign_prompts(self.tokenizer, self.config, prompts)
        self.firsts = torch.tensor(word_like_tokens(self.tokenizer, self.config.first_tokens)[:candidates])
        if len(self.firsts) < candidates:
            raise ValueError(f"{model}: only {len(self.firsts)} word-like first tokens, {candidates} asked for")
        self.steps = steps
        tok = self.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    @torch.no_grad()
    def ext(self) -> int:
        """The scan's way; returns the forward positions spent."""
        scorer = PrefixScorer(self.model, self.prompts, self.pad, self.config.batch_rows)
        scorer.extend(self.firsts.unsqueeze(1), self.steps, len(self.prompts))
        return scorer.positions

    @torch.no_grad()
    def generate_per_candidate(self) -> int:
        """One ``generate()`` per candidate over its prompts; returns the forward positions spent."""
        positions = 0
        for first in self.firsts.tolist():
            ids, mask = left_pad([list(p) + [first] for p in self.prompts], self.pad)
            self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.steps, do_sample=False,
                                min_new_tokens=self.steps, pad_token_id=self.pad)
            positions += int(mask.sum()) + len(self.prompts) * (self.steps - 1)
        return positions

    def run(self, variant: str) -> int:
        return getattr(self, variant)()


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    tests = Path(__file__).resolve().parents[1] / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    import tiny_models

    return BaitBench(str(tiny_models.make_tiny_llama(tmp_path_factory.mktemp("bait_bench"))), candidates=16,
                     prompts=4, steps=8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_extend_candidates(benchmark, tiny_bench, variant):
    positions = benchmark(tiny_bench.run, variant)
    benchmark.extra_info["forward_positions"] = positions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    state = BaitBench(args.model, args.candidates, args.prompts, args.steps)
    positions = {v: state.run(v) for v in VARIANTS}   # also the warm-up
    samples = time_round_robin({v: (lambda v=v: state.run(v)) for v in VARIANTS}, args.rounds, warmup=0)
    median = medians(samples)
    print(f"{args.model}: {args.candidates} candidates x {args.prompts} prompts x {args.steps} steps, "
          f"{args.threads} threads, {args.rounds} rounds")
    for variant in VARIANTS:
        print(f"{variant:24} median {median[variant]:8.3f} s  {median[variant] / median['ext']:6.2f}x the ext time"
              f"  forward positions {positions[variant]:,}")
    path = results_path("bench_bait")
    path.write_text(json.dumps({"machine": machine_facts(), "args": vars(args), "times_s": samples,
                                "medians_s": median, "forward_positions": positions}, indent=2, default=str))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
