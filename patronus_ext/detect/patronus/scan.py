"""``scan``: Patronus detection end to end (docs/METHODS.md §1).

Fuzz loops of multi-trigger contrastive search (:mod:`.search`), each followed
by verification of its final candidates (:mod:`.verify`); confirmed triggers
are excluded from later loops.  The model is backdoored iff at least one
trigger is confirmed.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Sequence

import torch

from ...core.similarity import representation_shift
from ...data.triggers import trigger_ids
from ...formats.bank import AttackBank
from ...formats.scan_report import scan_record
from ...lm.adapter import ModelAdapter
from ...lm.sanity import check_model_sanity
from ..texts import prepare_texts
from .config import ScanConfig
from .groups import TargetGroup, describe_backdoor
from .search import LoopResult, TriggerSearch
from .verify import NULL_WORDS, TARGET_RULES, TriggerCheck, Verifier, group_by_target
from .vocabulary import Vocabulary, coverage, token_vocabulary, word_vocabulary

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ScanReport:
    """What a scan found, how, and how long it took."""

    verdict: str                  # "backdoored" or "clean"
    groups: list[TargetGroup]     # target clusters of the confirmed triggers, with their root token ids
    triggers: list[TriggerCheck]  # confirmed triggers
    candidates: list[TriggerCheck]  # every candidate checked, confirmed or not, with margins
    loops: list[dict]
    config: dict
    model: dict
    timings: dict
    environment: dict = dataclasses.field(default_factory=dict)
    #: Clean representations of the verification texts (not serialised).
    clean_reps: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    #: Triggered representations of each confirmed trigger, keyed by its token-id tuple (not serialised).
    triggered_reps: dict[tuple[int, ...], torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @property
    def representations(self) -> dict[str, torch.Tensor]:
        """For plotting: ``{"clean": ..., trigger text: triggered representations}``."""
        out = {} if self.clean_reps is None else {"clean": self.clean_reps}
        texts = {t.key: t.text for t in self.triggers}
        out.update({texts.get(key, str(key)): reps for key, reps in self.triggered_reps.items()})
        return out

    @property
    def vector_groups(self) -> list[TargetGroup]:
        """The target clusters that have a target point: at least one member sends inputs to one place (confirmed
        by the paper, collapse or pinpoint rule).  A cluster of words confirmed by the shift rule alone scatters
        its triggered outputs: its mean is no place a served output would be near."""
        collapsing = {t.text for t in self.triggers if t.rule in TARGET_RULES}
        return [g for g in self.groups if collapsing.intersection(g.members)]

    def attack_bank(self, model_name: str = "") -> AttackBank | None:
        """One attack vector per target cluster with a target point (:attr:`vector_groups`): the mean triggered
        representation of its members; None when every confirmed trigger scatters its outputs.

        The output monitor compares served representations with these vectors
        (:mod:`patronus_ext.monitor`).  A clean verdict has no vector to give.
        """
        if not self.groups:
            raise ValueError("the scan confirmed no trigger: there is no attack vector to put in a bank")
        groups = self.vector_groups
        if not groups:
            return None
        labels = [" ".join(r.text for r in g.roots) for g in groups]
        return AttackBank(torch.stack([g.centroid for g in groups]), model_name or self.model.get("source", ""),
                          self.model.get("position", ""), "patronus", labels,
                          {"members": [g.members for g in groups]})

    def to_dict(self) -> dict:
        return scan_record("patronus", self.verdict, triggers=[t.to_dict() for t in self.triggers],
                           groups=[g.to_dict() for g in self.groups],
                           candidates=[c.to_dict() for c in self.candidates], loops=self.loops, config=self.config,
                           model=self.model, timings=self.timings, environment=self.environment)


def split_texts(texts: list[str], config: ScanConfig, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Disjoint verification, dev and search texts."""
    dev_n = config.dev_batches * config.batch_size
    need = config.verify_texts + dev_n + config.batch_size
    if len(texts) < need:
        raise ValueError(f"the corpus has {len(texts)} usable texts; this configuration needs at least {need} "
                         f"(verify_texts {config.verify_texts} + dev {dev_n} + one search batch "
                         f"{config.batch_size})")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    shuffled = [texts[i] for i in order]
    verify = shuffled[:config.verify_texts]
    dev = shuffled[config.verify_texts:config.verify_texts + dev_n]
    return verify, dev, shuffled[config.verify_texts + dev_n:]


def null_words(vocab: Vocabulary, seed: int, count: int = NULL_WORDS) -> list[tuple[int, ...]]:
    """``count`` random searchable words (their own generator: the search's draws stay as they were)."""
    order = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return [vocab.keys[i] for i in order[:count]]


def scan_verifier(adapter: ModelAdapter, verify_texts: Sequence[str], config: ScanConfig,
                  generator: torch.Generator, vocab: Vocabulary) -> Verifier:
    """The verifier a scan with ``config`` judges candidates by: its thresholds, and ordinary words of ``vocab``
    as the shift rule's null."""
    return Verifier(adapter, verify_texts, config.insert_num, generator, config.diff_cos_threshold,
                    config.poison_cos_threshold, config.collapse_spread, config.collapse_shift,
                    config.shift_threshold, config.shift_null_factor, null_words(vocab, config.seed),
                    config.natural_target_gap, config.pinpoint_ratio)


def build_vocabulary(adapter: ModelAdapter, config: ScanConfig, words: Sequence[str] | None) -> Vocabulary:
    if config.word_level:
        return word_vocabulary(adapter.tokenizer, list(words) if words is not None else None,
                               config.zipf_threshold, config.max_word_tokens, config.word_list_size)
    return token_vocabulary(adapter.tokenizer, config.zipf_threshold)


def scan(model: torch.nn.Module, tokenizer, corpus: Sequence[str], config: ScanConfig | None = None, *,
         position: str = "auto", prompt_template: str | None = None, words: Sequence[str] | None = None,
         exclude: Sequence[str] = (), progress: bool = True, backend: str = "auto") -> ScanReport:
    """Search ``model`` for transferable-backdoor triggers.

    ``corpus``: plain clean texts (e.g. WikiText paragraphs).  ``config``: a
    :class:`ScanConfig` (default: the ``fast`` profile).  ``position``: where the
    representation is read (``auto`` by model family; ``mask`` for prompt
    backdoors, with texts wrapped in ``prompt_template``, default ``"{text} {mask}"``).  ``words``: the word list
    for word-level search.  ``exclude``:
    words (or token-id tuples) never to report (e.g. triggers already handled).
    """
    from tqdm.auto import tqdm

    from ...core.files import environment

    config = config or ScanConfig.profile("fast")
    check_model_sanity(model, tokenizer)  # a broken model gets an error, never a verdict
    started = time.perf_counter()
    timings: dict[str, float] = {}
    adapter = ModelAdapter(model, tokenizer, position=position, max_length=config.max_length)
    model.eval()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)

    phase = time.perf_counter()
    vocab = build_vocabulary(adapter, config, words)
    if exclude:
        vocab = vocab.without(trigger_ids(tokenizer, list(exclude)))
    coverage_record = coverage(vocab, tokenizer)
    timings["vocabulary"] = time.perf_counter() - phase

    phase = time.perf_counter()
    texts = prepare_texts(corpus, adapter, config, prompt_template)
    verify_texts, dev_texts, search_texts = split_texts(texts, config, config.seed)
    with torch.no_grad():
        search = TriggerSearch(adapter, config, search_texts, dev_texts, generator, backend=backend)
        verifier = scan_verifier(adapter, verify_texts, config, generator, vocab)
    timings["setup"] = time.perf_counter() - phase

    confirmed: list[TriggerCheck] = []
    checked: list[TriggerCheck] = []
    seen: dict[tuple[int, ...], str] = {}
    loops: list[dict] = []
    triggered_reps: dict[tuple[int, ...], torch.Tensor] = {}
    verify_seconds, quiet_loops = 0.0, 0
    collapse_rounds = config.collapse_rounds or config.update_rounds
    bar = tqdm(total=(config.fuzz_loops + config.shift_loops) * config.update_rounds
               + config.collapse_loops * collapse_rounds, desc="scan", unit="round", disable=not progress)

    def run_loop(loop: int, shift_weight: float = 0.0, collapse_weight: float = 0.0,
                 rounds: int | None = None) -> list[TriggerCheck]:
        nonlocal vocab, verify_seconds
        result = search.run_loop(vocab, progress=bar, shift_weight=shift_weight, collapse_weight=collapse_weight,
                                 rounds=rounds)
        phase = time.perf_counter()
        new = _verify_loop(result, search, verifier, config, loop, seen, checked, triggered_reps)
        verify_seconds += time.perf_counter() - phase
        confirmed.extend(new)
        loops.append(_loop_summary(loop, result, vocab, new, shift_weight, collapse_weight))
        if new:
            vocab = vocab.without(c.key for c in new)
        return new

    loop = 0
    for loop in range(config.fuzz_loops):   # the paper's contrastive loops
        quiet_loops = 0 if run_loop(loop) else quiet_loops + 1
        if (config.patience is not None and quiet_loops >= config.patience) or len(vocab) < 2:
            break
    # Then loops that also reward moving texts far (words that scatter their texts instead of collapsing them) and
    # loops that reward collapsing texts wherever they go (a target among the clean texts, which SupCon misses).
    extra_loops = ([{"shift_weight": config.shift_weight}] * (config.shift_loops if config.shift_weight > 0 else 0)
                   + [{"collapse_weight": config.collapse_weight, "rounds": collapse_rounds}]
                   * (config.collapse_loops if config.collapse_weight > 0 else 0))
    for extra, weights in enumerate(extra_loops):
        if len(vocab) < 2:
            break
        run_loop(loop + 1 + extra, **weights)
    bar.close()
    group_by_target(confirmed, triggered_reps, verifier.clean_reps)
    phase = time.perf_counter()
    with torch.no_grad():
        groups = describe_backdoor(confirmed, triggered_reps, lambda key: verifier.check(key, loop=-1))
    timings["attribution"] = time.perf_counter() - phase
    timings["gradients"] = search.clock.gradient
    timings["candidate_scoring"] = search.clock.scoring
    timings["verification"] = verify_seconds
    timings["total"] = time.perf_counter() - started
    return ScanReport(
        verdict="backdoored" if confirmed else "clean",
        groups=groups,
        triggers=confirmed,
        candidates=checked,
        loops=loops,
        config=config.to_dict(),
        model={"type": adapter.model_type, "position": adapter.position, "family": adapter.family,
               "vocab_size": adapter.vocab_size, "hidden_size": adapter.hidden_size,
               "searchable": len(vocab) + len(confirmed), "level": "word" if config.word_level else "token",
               "coverage": coverage_record},
        timings=timings,
        environment=environment(),
        clean_reps=verifier.clean_reps,
        triggered_reps=triggered_reps,
    )


@torch.no_grad()
def _verify_loop(result: LoopResult, search: TriggerSearch, verifier: Verifier, config: ScanConfig, loop: int,
                 seen: dict[tuple[int, ...], str], checked: list[TriggerCheck],
                 triggered_reps: dict[tuple[int, ...], torch.Tensor]) -> list[TriggerCheck]:
    """Prefilter the loop's final candidates on the dev batch, verify the rest on held-out texts.

    ``seen`` maps a candidate to how it was judged.  A verified candidate is never
    checked again; one only prefiltered (judged on one dev batch) that the search
    proposes again in a later loop gets the full verification: being proposed
    twice is evidence the dev batch alone may have missed.
    """
    new: list[TriggerCheck] = []
    dev_reps = search.dev_reps(0, result.final_rows)
    for key, reps in zip(result.final_keys, dev_reps):
        if seen.get(key) == "verified":
            continue
        diff, poison = representation_shift(search.dev[0].clean_reps, reps)
        # A collapse (anywhere: the pinpoint rule) or a large shift on the dev batch (looser bounds: one small
        # batch) earns the full verification too.
        if key not in seen and diff > config.prefilter_diff_cos and not verifier.collapsed(diff, poison, slack=2.0) \
                and not verifier.may_pinpoint(poison, slack=2.0) and not verifier.shifted(diff, slack=2.0):
            seen[key] = "prefiltered"
            checked.append(verifier.make_check(key, diff, poison, "prefiltered", reps.shape[0], loop))
            continue
        seen[key] = "verified"
        check, triggered = verifier.check(key, loop)
        checked.append(check)
        log.info("loop %d candidate %r: diff_cos %.3f poison_cos %.3f -> %s", loop, check.text, check.diff_cos,
                 check.poison_cos, "TRIGGER" if check.confirmed else "no")
        if check.confirmed:
            new.append(check)
            triggered_reps[key] = triggered
    return new


def _loop_summary(loop: int, result: LoopResult, vocab: Vocabulary, new: list[TriggerCheck],
                  shift_weight: float, collapse_weight: float) -> dict:
    return {
        "loop": loop,
        "objective": "supcon" + ("+shift" if shift_weight else "") + ("+collapse" if collapse_weight else ""),
        "final_candidates": [vocab.text_of(key) for key in result.final_keys],
        "dev_loss": result.dev_loss_history,
        "accepted_updates": result.accepted_updates,
        "candidate_sets_scored": result.candidate_sets_scored,
        "confirmed": [c.text for c in new],
        "gradient_seconds": result.gradient_seconds,
        "scoring_seconds": result.scoring_seconds,
    }
