"""MB-Defense (docs/METHODS.md §5, arXiv 2601.04448) and the Fine-mixing baseline, for instruction-tuned causal LMs.

MB-Defense defends the *instruction tuning* of a model on data that may be
poisoned (the defender tunes; the attacker only contributed data):

1. **Defensive poisoning** (:func:`defensive_poisoning`): ``T`` defender
   triggers (random rare pseudo-words), each replacing ``defender_rate`` of
   the data by triggered copies answered with that trigger's fixed response
   (random words), then instruction tuning on the whole set.  The attacker's
   and the defender's backdoors merge into one shared backdoor feature.
2. **Weight recovery** (:func:`weight_recovery`): on ``clean_samples`` clean
   examples × the ``T`` triggers, minimise
   ``CE(x, y) − λ·log σ(log π(y|x_d) − log π(y_d|x_d))`` (``x_d``: ``x`` with a
   defender trigger, ``y_d`` its fixed response; ``log π`` sums the response
   tokens' log-probabilities): triggered inputs learn to be answered normally,
   which breaks the merged feature and with it the attacker's backdoor.

λ is chosen on clean data only (:func:`mb_defense`): per candidate, accuracy on
held-out clean prompts and the share of those prompts that, with one of the
DEFENDER's triggers inserted, still get the defender's response; the attacker's
trigger is never looked at.

**Fine-mixing** (:func:`fine_mix_lm`, the paper's main baseline): the backbone
weights of the tuned model are mixed with the clean instruct weights
(``mix_weights``, keep fraction ρ) and the result is tuned on a small clean set.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from typing import Any, Sequence

import torch
from torch import nn

from ..core.files import JSONRecord
from ..data.instructions import InstructionExample, fit_inputs, insert_trigger, poison_examples
from ..evaluate.generation import GenerationEvalConfig, generation_metrics
from ..lm import training
from ..lm.instruction_tuning import TuneLog, instruction_tune, tune_selected
from ..lm.prompting import collate, encode_examples, response_logprobs
from .config import MBConfig

log = logging.getLogger(__name__)

_CONSONANTS = "bcdfghjklmnpqrstvwxz"


@dataclasses.dataclass
class DefenderTriggers:
    """The defender's trigger words and the fixed response of each."""

    words: list[str]
    responses: list[str]

    def as_responses(self) -> dict[str, str]:
        return dict(zip(self.words, self.responses))

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "responses": self.responses}


def make_defender_triggers(count: int, response_words: int, seed: int = 0) -> DefenderTriggers:
    """``count`` random pseudo-words absent from English (``wordfreq`` frequency 0), each with a fixed response of
    ``response_words`` random common English words; reproducible from ``seed``."""
    import wordfreq

    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(_CONSONANTS) for _ in range(3))
        if word not in words and wordfreq.zipf_frequency(word, "en") == 0.0:
            words.append(word)
    pool = [w for w in wordfreq.top_n_list("en", 3000) if w.isalpha() and len(w) >= 3]
    responses = [" ".join(rng.sample(pool, response_words)) for _ in range(count)]
    return DefenderTriggers(words, responses)


@dataclasses.dataclass
class DefensivePoisoning:
    triggers: DefenderTriggers
    replaced: int                # examples replaced by defender-triggered copies (all triggers)
    examples: int
    training: TuneLog

    def to_dict(self) -> dict[str, Any]:
        return {"triggers": self.triggers.to_dict(), "replaced": self.replaced, "examples": self.examples,
                "training": self.training.to_dict()}


def add_defender_triggers(examples: Sequence[InstructionExample], triggers: DefenderTriggers, rate: float,
                          insert_num: int, seed: int) -> tuple[list[InstructionExample], int]:
    """Each defender trigger replaces ``max(1, round(rate·N))`` examples (disjoint across triggers) by triggered
    copies answered with its response; returns the data and how many were replaced."""
    rng = random.Random(seed)
    out, used = list(examples), set()
    per_trigger = max(1, round(rate * len(examples)))
    for word, response in zip(triggers.words, triggers.responses):
        out, chosen = poison_examples(out, word, response, per_trigger, rng, insert_num=insert_num,
                                               exclude=used)
        used.update(chosen)
    return out, len(used)


def defensive_poisoning(model: nn.Module, tokenizer, examples: Sequence[InstructionExample], config: MBConfig, *,
                        progress: bool = True) -> DefensivePoisoning:
    """Stage (i), in place: add the defender triggers to ``examples`` (fitted inputs) and instruction-tune."""
    triggers = make_defender_triggers(config.defender_triggers, config.response_words, config.seed)
    data, replaced = add_defender_triggers(examples, triggers, config.defender_rate, config.insert_num,
                                           config.seed + 1)
    run = instruction_tune(model, tokenizer, data, config.prompt_format(), config,
                                    desc="MB (i) defensive poisoning", progress=progress)
    return DefensivePoisoning(triggers, replaced, len(data), run)


@dataclasses.dataclass
class RecoveryLog(training.TrainingLog):
    """Weight recovery's training log, with its λ and the (clean example, defender trigger) pairs it ran over."""

    lam: float
    pairs: int


def recovery_loss(model: nn.Module, batch: dict[str, torch.Tensor], pairs: int, lam: float
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``CE(x, y) − λ·log σ(log π(y|x_d) − log π(y_d|x_d))`` over a batch of ``3·pairs`` rows ordered
    ``[(x, y)…, (x_d, y)…, (x_d, y_d)…]``; CE is the token mean over the clean rows."""
    logp, count = response_logprobs(model, batch)
    clean_logp, normal_logp, defender_logp = logp[:pairs], logp[pairs:2 * pairs], logp[2 * pairs:]
    ce = -clean_logp.sum() / count[:pairs].sum().clamp_min(1)
    preference = -torch.nn.functional.logsigmoid(normal_logp - defender_logp).mean()
    return ce + lam * preference, {"ce": ce, "preference": preference,
                                   "margin": (normal_logp - defender_logp).mean()}


def weight_recovery(model: nn.Module, tokenizer, clean: Sequence[InstructionExample], triggers: DefenderTriggers,
                    lam: float, config: MBConfig, *, progress: bool = True) -> RecoveryLog:
    """Stage (ii), in place: ``recovery_epochs`` (or ``recovery_steps``) over the clean × trigger pairs."""
    fmt = config.prompt_format()
    clean = fit_inputs(tokenizer, clean, fmt.max_input_tokens)
    rng = random.Random(config.seed + 2)
    pairs = [(i, t) for i in range(len(clean)) for t in range(len(triggers.words))]
    triggered = {(i, t): insert_trigger(clean[i], triggers.words[t], config.insert_num, rng)
                 for i, t in pairs}
    normal = encode_examples(tokenizer, clean, fmt)
    keys = list(triggered)
    with_answer = dict(zip(keys, encode_examples(tokenizer, [triggered[p] for p in keys], fmt)))
    with_defender = dict(zip(keys, encode_examples(
        tokenizer, [triggered[(i, t)].replace(output=triggers.responses[t]) for i, t in keys], fmt)))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = training.epoch_batches(len(pairs), config.recovery_batch_size, random.Random(config.seed + 3))

    def step_loss(step: int):
        chosen = [pairs[j] for j in next(order)]
        rows = [normal[i] for i, _ in chosen] + [with_answer[p] for p in chosen] + [with_defender[p] for p in chosen]
        return recovery_loss(model, collate(rows, pad, device), len(chosen), lam)

    steps = config.recovery_total_steps(len(pairs))
    settings = config.optimizer_settings(steps, lr=config.recovery_lr, log_every=min(10, steps))
    run, _ = tune_selected(model, config, step_loss, settings, desc=f"MB (ii) recovery λ={lam:g}", progress=progress)
    return RecoveryLog.of(run, lam=float(lam), pairs=len(pairs))


@dataclasses.dataclass
class LambdaCandidate(JSONRecord):
    lam: float
    select_accuracy: float | None
    defender_rate: float          # held-out clean prompts + a DEFENDER trigger answered with its response
    recovery: RecoveryLog
    measure_s: float


@dataclasses.dataclass
class MBResult:
    poisoning: DefensivePoisoning
    lam: float
    reason: str
    reference_accuracy: float | None     # the stage-(i) model on the selection prompts
    candidates: list[LambdaCandidate]
    clean_samples: int
    select_examples: int
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["poisoning"] = self.poisoning.to_dict()
        out["candidates"] = [c.to_dict() for c in self.candidates]
        return out


def _select_metrics(model, tokenizer, select, fmt, triggers: DefenderTriggers, config: MBConfig
                    ) -> tuple[float | None, float]:
    """Clean accuracy on ``select`` and the share of ``select`` prompts that, with one defender trigger each,
    get that trigger's response (the defender's own backdoor, measured on clean data)."""
    measure = GenerationEvalConfig(dev_limit=None, max_new_tokens=config.select_new_tokens, insert_num=config.insert_num,
                                   seed=config.seed)
    clean = generation_metrics(model, tokenizer, select, fmt, None, measure)
    rng = random.Random(config.seed + 4)
    rates = []
    groups: dict[int, list[InstructionExample]] = {}
    for example in select:
        groups.setdefault(rng.randrange(len(triggers.words)), []).append(example)
    for t, group in sorted(groups.items()):
        got = generation_metrics(model, tokenizer, group, fmt, {triggers.words[t]: triggers.responses[t]}, measure)
        rates.append(got.asr[triggers.words[t]] * len(group))
    return clean.cacc, sum(rates) / len(select)


def mb_defense(model: nn.Module, tokenizer, examples: Sequence[InstructionExample],
               clean: Sequence[InstructionExample], select: Sequence[InstructionExample],
               config: MBConfig | None = None, *, progress: bool = True) -> tuple[nn.Module, MBResult]:
    """MB-Defense of instruction tuning ``model`` on ``examples`` (which may be poisoned).

    ``clean``: the defender's clean samples for weight recovery
    (``config.clean_samples`` are used); ``select``: held-out clean examples on
    which λ is chosen among ``config.lambdas``: the candidates whose selection
    accuracy is at least the stage-(i) model's minus ``acc_tolerance``
    qualify; among them the lowest defender-trigger response rate wins (ties:
    the higher accuracy, then the smaller λ); if none qualifies, the most
    accurate.  ``model`` is tuned in place by stage (i); with several
    candidates each recovers a copy of it (the chosen one is returned), with
    one ``model`` itself is recovered and returned.
    """
    config = config or MBConfig()
    timings: dict[str, float] = {}
    fmt = config.prompt_format()
    examples = fit_inputs(tokenizer, examples, fmt.max_input_tokens)
    clean = list(clean)[:config.clean_samples]
    if len(clean) < config.clean_samples:
        raise ValueError(f"weight recovery needs {config.clean_samples} clean samples, got {len(clean)}")
    select = fit_inputs(tokenizer, list(select)[:config.select_limit], fmt.max_input_tokens)
    t0 = time.perf_counter()
    poisoning = defensive_poisoning(model, tokenizer, examples, config, progress=progress)
    timings["defensive_poisoning"] = time.perf_counter() - t0
    reference = None
    candidates: list[LambdaCandidate] = []
    best_model: nn.Module | None = None
    if len(config.lambdas) > 1:
        t0 = time.perf_counter()
        reference, _ = _select_metrics(model, tokenizer, select, fmt, poisoning.triggers, config)
        timings["select_reference"] = time.perf_counter() - t0
    chosen_key, lam_chosen = None, float(config.lambdas[0])
    for lam in config.lambdas:
        work = copy.deepcopy(model) if len(config.lambdas) > 1 else model
        recovery = weight_recovery(work, tokenizer, clean, poisoning.triggers, lam, config, progress=progress)
        timings[f"recovery_lambda_{lam:g}"] = recovery.wall_s
        accuracy, rate, measure_s = None, 0.0, 0.0
        if len(config.lambdas) > 1:
            t0 = time.perf_counter()
            accuracy, rate = _select_metrics(work, tokenizer, select, fmt, poisoning.triggers, config)
            measure_s = time.perf_counter() - t0
        candidate = LambdaCandidate(float(lam), accuracy, rate, recovery, measure_s)
        candidates.append(candidate)
        log.info("MB: λ %g -> selection accuracy %s, defender-trigger rate %.3f", lam, accuracy, rate)
        key = _candidate_key(candidate, reference, config.acc_tolerance)
        if chosen_key is None or key > chosen_key:
            chosen_key, best_model, lam_chosen = key, work, float(lam)
        else:
            del work
    if len(config.lambdas) == 1:
        reason = "the only candidate"
    elif chosen_key[0]:
        reason = (f"lowest defender-trigger response rate among the λ whose selection accuracy is within "
                  f"{config.acc_tolerance} of the stage-(i) model's {reference}")
    else:
        reason = f"no λ kept the selection accuracy within {config.acc_tolerance} of {reference}; the most accurate"
    result = MBResult(poisoning, lam_chosen, reason, reference, candidates, len(clean), len(select), timings)
    return best_model.eval(), result


def _candidate_key(candidate: LambdaCandidate, reference: float | None, tolerance: float) -> tuple:
    """Sort key: qualifying first, then the lowest defender rate, the higher accuracy, the smaller λ."""
    accuracy = candidate.select_accuracy if candidate.select_accuracy is not None else 0.0
    qualifies = reference is None or accuracy >= reference - tolerance
    if qualifies:
        return (True, -candidate.defender_rate, accuracy, -candidate.lam)
    return (False, accuracy, -candidate.defender_rate, -candidate.lam)
