"""End-to-end purification runs: triggers from the scan report, the method, before/after metrics, and a NEW
model folder written atomically (``lm.save_model_folder``) with ``purify.json`` inside."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

from .. import lm
from ..core.files import environment
from ..data.corpora import LabeledData
from ..data.instructions import fit_inputs, load_instructions, split_examples
from ..evaluate import load_task
from ..evaluate.generation import GenerationEvalConfig
from ..formats.backdoor import find_backdoor_info
from ..formats.purify_record import PURIFY_FILE, PURIFY_FORMAT
from ..formats.scan_report import ScannedTriggers, triggers_from_report
from ..lm.finetune import finetune_classifier
from ..lm.instruction_tuning import instruction_tune
from .adversarial import adversarial_finetune, adversarial_pretrain
from .config import METHODS, MeasureConfig, make_config
from .mb import mb_defense
from .measure import Measurement, measure_classifier, measure_encoder, measure_generation
from .mixing import e_pur, fine_mix, fine_mix_lm, token_frequencies

log = logging.getLogger(__name__)

#: Methods that need the scan's triggers, and those that need clean pre-trained weights.
NEEDS_TRIGGERS = ("adv-pt", "adv-ft")
NEEDS_PRETRAINED = ("fine-mix", "e-pur", "fine-mix-lm")
#: The purifiers of instruction-tuned causal LMs (SPEC.md §5), measured by greedy generation.
CAUSAL_METHODS = ("mb", "fine-mix-lm")


@dataclasses.dataclass
class PurifyResult:
    method: str
    out_dir: Path
    triggers: list[str]                  # used for purification (from the scan report)
    measured_triggers: list[str]         # inserted to measure T-ASR
    before: Measurement | None
    after: Measurement | None
    report: dict[str, Any]               # what purify.json holds

    @property
    def report_path(self) -> Path:
        return self.out_dir / PURIFY_FILE


# -- the run -------------------------------------------------------------------------------------
def _triggers(report, words, tokenizer, hidden_size: int) -> tuple[ScannedTriggers | None, list[str]]:
    if report is not None:
        scanned = triggers_from_report(report, tokenizer, hidden_size)
        return scanned, list(scanned.words)
    if words:
        if isinstance(words, str):
            words = [w for w in words.split(",") if w.strip()]
        return None, [str(w).strip() for w in words]
    return None, []


def _attack_responses(*places) -> dict[str, str]:
    """The attacker's ``{trigger: response}`` from the first ``backdoor.json`` found beside one of ``places``."""
    for place in places:
        if place is None or not isinstance(place, (str, os.PathLike)) or not os.path.exists(place):
            continue
        info = find_backdoor_info(place)
        if info is not None and info.responses():
            return info.responses()
    return {}


def _run_causal(method: str, model: str, source: str, out: Path, *, pretrained, task, dev_task, data, baseline,
                profile: str, config, measure, measure_triggers, device, allow_pickle: bool,
                progress: bool) -> PurifyResult:
    """``mb`` (instruction-tune ``model`` on ``data`` with MB-Defense) and ``fine-mix-lm`` (mix the tuned causal
    LM ``model`` with the clean ``pretrained`` weights, then tune on clean samples)."""
    started = time.perf_counter()
    if measure is True:
        measure = GenerationEvalConfig.profile(profile)
    if measure is not None and not isinstance(measure, GenerationEvalConfig):
        raise TypeError(f"{method} measures by generation: pass a GenerationEvalConfig")
    run_device = lm.resolve_device(device)
    tokenizer = lm.load_tokenizer(source)
    fmt = config.prompt_format()
    if isinstance(task, LabeledData):
        raise TypeError(f"{method} takes a task name or an instruction file (instructions, not labelled texts)")
    data_source = task if data is None else data
    if measure_triggers:
        responses = dict(measure_triggers) if isinstance(measure_triggers, dict) else {}
        if not responses:
            raise ValueError("for causal LMs, measure_triggers maps each trigger to the attacker's response")
    else:
        responses = _attack_responses(data if isinstance(data, (str, os.PathLike)) else None, baseline, source)
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t0
        return value

    dev = None
    if measure is not None:
        dev = load_instructions(str(dev_task if dev_task is not None else task), "dev", None, 0)
    select_limit = getattr(config, "select_limit", 0)
    pool = load_instructions(str(task), "train", config.clean_samples + select_limit, config.seed + 7)
    clean, select = split_examples(pool, config.clean_samples, select_limit, config.seed + 7)
    before = after = None
    if method == "mb":
        examples = list(data_source) if not isinstance(data_source, (str, os.PathLike)) else \
            load_instructions(str(data_source), "train", config.data_limit, config.seed)
        examples = fit_inputs(tokenizer, examples, fmt.max_input_tokens)
        base = lm.load_model(source, "causal", allow_pickle=allow_pickle, device=run_device)
        if measure is not None:
            t0 = time.perf_counter()
            if baseline is not None:
                plain = lm.load_model(str(baseline), "causal", allow_pickle=allow_pickle, device=run_device)
                how = f"the given no-defense model {baseline}"
            else:  # before: the same instruction tuning without the defense
                plain = copy.deepcopy(base)
                instruction_tune(plain, tokenizer, examples, fmt, config,
                                          desc="instruction tuning (no defense)", progress=progress)
                how = f"instruction tuning on the same {len(examples)} examples without the defense"
            before = measure_generation(plain, tokenizer, dev, fmt, responses, measure, how, progress)
            del plain
            timings["measure_before"] = time.perf_counter() - t0
        purified, result = timed("purify", mb_defense, base, tokenizer, examples, clean, select, config,
                                 progress=progress)
        used = list(result.poisoning.triggers.words)
    else:
        tuned = lm.load_model(source, "causal", allow_pickle=allow_pickle, device=run_device)
        clean_model = lm.load_model(str(pretrained), "causal", allow_pickle=allow_pickle, device=run_device)
        if measure is not None:
            before = timed("measure_before", measure_generation, tuned, tokenizer, dev, fmt, responses, measure,
                           "the input model", progress)
        purified, result = timed("purify", fine_mix_lm, tuned, tokenizer, clean_model, clean, config,
                                 progress=progress)
        used = []
    if measure is not None:
        after = timed("measure_after", measure_generation, purified, tokenizer, dev, fmt, responses, measure,
                      "the purified model", progress)
    timings["total"] = time.perf_counter() - started
    payload = {
        "format": PURIFY_FORMAT,
        "method": method,
        "model": str(model),
        "pretrained": None if pretrained is None else str(pretrained),
        "task": str(task),
        "data": str(data_source) if isinstance(data_source, (str, os.PathLike)) else "examples",
        "baseline": None if baseline is None else str(baseline),
        "profile": profile,
        "triggers": used,
        "trigger_token_ids": None,
        "triggers_source": "defender" if used else None,
        "measured_triggers": list(responses),
        "attack_responses": responses,
        "before": None if before is None else before.to_dict(),
        "after": None if after is None else after.to_dict(),
        "settings": config.to_dict(),
        "measure": None if measure is None else measure.to_dict(),
        "details": result.to_dict(),
        "timings": timings,
        "environment": environment(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    lm.save_model_folder(purified, tokenizer, out, {PURIFY_FILE: payload}, source=source)
    log.info("%s: purified into %s in %.1f s", method, out, timings["total"])
    return PurifyResult(method, Path(out), used, list(responses), before, after, payload)


def _split_clean(train: LabeledData, first: int, second: int, seed: int) -> tuple[LabeledData, LabeledData]:
    """Two disjoint random subsets of ``train`` (the defender's small clean set and the ρ-selection set)."""
    if first + second > len(train):
        raise ValueError(f"the task's train split has {len(train)} examples, fewer than clean_limit + "
                         f"select_limit = {first + second}")
    order = random.Random(seed).sample(range(len(train)), first + second)

    def take(rows):
        return LabeledData([train.texts[i] for i in rows], [train.labels[i] for i in rows], train.num_labels,
                           train.source)
    return take(order[:first]), take(order[first:])


def run_purify(method: str, model: str | os.PathLike, out_dir: str | os.PathLike, *,
               report: dict | str | os.PathLike | None = None, triggers: Sequence[str] | None = None,
               pretrained: str | os.PathLike | None = None, task: str | LabeledData = "sst2",
               dev_task: str | LabeledData | None = None, profile: str = "fast", config=None, measure: MeasureConfig | bool | None = True,
               measure_triggers: Sequence[str] | dict[str, str] | None = None, device: str | None = None,
               allow_pickle: bool = False, progress: bool = True, data=None,
               baseline: str | os.PathLike | None = None) -> PurifyResult:
    """Purify ``model`` with ``method`` and write the result to the NEW folder ``out_dir``.

    * ``adv-pt`` (a pre-trained encoder -> a purified encoder) and ``adv-ft``
      (an encoder -> a classifier for ``task``) train against the triggers of
      the scan ``report`` (or explicit ``triggers``);
    * ``fine-mix`` and ``e-pur`` (a classifier fine-tuned on ``task`` -> a
      purified classifier) need the clean ``pretrained`` weights; the report is
      optional (it only names the triggers to measure).

    * ``mb`` (an instruct causal LM + instruction ``data`` that may be
      poisoned -> the LM tuned on it with MB-Defense) and ``fine-mix-lm`` (a
      tuned causal LM + the clean ``pretrained`` instruct weights -> the mixed
      model tuned on clean samples): instruction data (SPEC.md §5).  ``data``:
      a built-in source, an Alpaca JSONL file (e.g. the ``instruction_data.jsonl``
      of ``patronus attack --method instruct-badnet``) or examples (None: ``task``);
      ``task`` gives the clean samples (train split) and the dev prompts;
      ``baseline``: an already-tuned no-defense model to measure as "before"
      (else ``mb`` tunes one the same way without the defense).  The attacker's
      triggers and response come from ``measure_triggers`` (``{trigger: response}``)
      or the ``backdoor.json`` beside ``data``, ``baseline`` or ``model``.

    ``task``: a built-in name, a labelled file or a :class:`LabeledData` (its
    train and dev splits); ``dev_task``: another source for the dev split.

    ``config`` None: the method's ``profile``.  ``measure``: True (the
    ``measure`` config of ``profile``), a :class:`MeasureConfig`, or False (no
    before/after).  T-ASR is measured with ``measure_triggers``, else the
    report's triggers, else the model's ``backdoor.json`` triggers.  The output
    folder is checked before any work and written atomically: an interrupted
    run leaves nothing.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    started = time.perf_counter()
    source = lm.resolve_model_source(str(model))
    out = lm.check_new_model_folder(out_dir, source)
    if pretrained is not None and Path(out).resolve() == Path(lm.resolve_model_source(str(pretrained))).resolve():
        raise ValueError("the output must not be the pre-trained model folder")
    if method in NEEDS_PRETRAINED and pretrained is None:
        raise ValueError(f"{method} needs the clean pre-trained weights the model was fine-tuned from (--pretrained)")
    if method in NEEDS_TRIGGERS and report is None and not triggers:
        raise ValueError(f"{method} needs the triggers the scan found (--scan-report scan.json)")
    config = config if config is not None else make_config(method, profile)
    if method in CAUSAL_METHODS:
        if report is not None or triggers:
            raise ValueError(f"{method} takes no scan report or triggers: MB-Defense plants its own defender "
                             "triggers, Fine-mixing needs none")
        if method == "mb" and pretrained is not None:
            raise ValueError("mb takes no --pretrained: it instruction-tunes --model itself")
        return _run_causal(method, str(model), source, out, pretrained=pretrained, task=task, dev_task=dev_task,
                           data=data, baseline=baseline, profile=profile, config=config, measure=measure or None,
                           measure_triggers=measure_triggers, device=device, allow_pickle=allow_pickle,
                           progress=progress)
    if measure is True:
        measure = MeasureConfig.profile(profile)
    measure = measure or None
    run_device = lm.resolve_device(device)
    tokenizer = lm.load_tokenizer(source)
    config_hidden = int(getattr(lm.load_config(source), "hidden_size", 0) or 0) or None
    scanned, words = _triggers(report, triggers, tokenizer, config_hidden)
    planted = find_backdoor_info(source)
    measured = list(measure_triggers) if measure_triggers else (words or (planted.triggers if planted else []))
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t0
        return value

    train = dev = None
    if method != "adv-pt" or measure is not None:
        train = load_task(task, "train", None, 0)
        dev = load_task(dev_task if dev_task is not None else task, "dev",
                        None if measure is None else measure.dev_limit, 0)
    before = after = None
    details: dict[str, Any]
    if method == "adv-pt":
        adapter = lm.load_adapter(source, "base", allow_pickle=allow_pickle, device=run_device)
        measure_train = None if measure is None else train.subset(measure.train_limit, measure.seed)
        if measure is not None:
            before = timed("measure_before", measure_encoder, source, tokenizer, measure_train, dev, measured,
                           measure, device=run_device, allow_pickle=allow_pickle, progress=progress)
        result = timed("purify", adversarial_pretrain, adapter, words, config, progress=progress)
        purified = adapter.model
        if measure is not None:
            after = timed("measure_after", measure_encoder, purified, tokenizer, measure_train, dev, measured,
                          measure, device=run_device, progress=progress)
        details = result.to_dict()
    elif method == "adv-ft":
        adv_train = train.subset(config.train_limit, config.seed)
        if measure is not None:
            # before: the same fine-tuning without the adversarial examples
            t0 = time.perf_counter()
            plain = finetune_classifier(source, adv_train, config, tokenizer, device=run_device,
                                        allow_pickle=allow_pickle, progress=progress)
            before = measure_classifier(plain.model, tokenizer, dev, measured, measure,
                                        f"clean fine-tuning on {len(adv_train)} examples", progress)
            del plain
            timings["measure_before"] = time.perf_counter() - t0
        clf, result = timed("purify", adversarial_finetune, source, adv_train, dev, words, config,
                            tokenizer=tokenizer, device=run_device, allow_pickle=allow_pickle, progress=progress)
        purified = clf.model
        if measure is not None:
            after = timed("measure_after", measure_classifier, purified, tokenizer, dev, measured, measure,
                          "classifier", progress)
        details = result.to_dict()
    else:
        classifier = lm.load_model(source, "cls", allow_pickle=allow_pickle, device=run_device)
        if int(classifier.config.num_labels) != train.num_labels:
            raise ValueError(f"{model} classifies into {classifier.config.num_labels} labels but the task has "
                             f"{train.num_labels}: pass the task it was fine-tuned on (--task)")
        clean_model = lm.load_model(str(pretrained), "base", allow_pickle=allow_pickle, device=run_device)
        if measure is not None:
            before = timed("measure_before", measure_classifier, classifier, tokenizer, dev, measured, measure,
                           "classifier", progress)
        freq_texts = train.subset(getattr(config, "freq_limit", None), config.seed).texts
        needs_freq = method == "e-pur" or config.e_pur_top_n
        frequencies = token_frequencies(tokenizer, freq_texts, classifier.get_input_embeddings().weight.shape[0]) \
            if needs_freq else None
        if method == "fine-mix":
            clean, select = _split_clean(train, config.clean_limit, config.select_limit, config.seed + 7)
            purified, result = timed("purify", fine_mix, classifier, tokenizer, clean_model, clean, select, config,
                                     frequencies=frequencies, progress=progress)
        else:
            clean, _ = _split_clean(train, config.clean_limit, 0, config.seed + 7)
            purified, result = timed("purify", e_pur, classifier, tokenizer, clean_model, frequencies, clean, config,
                                     progress=progress)
        if measure is not None:
            after = timed("measure_after", measure_classifier, purified, tokenizer, dev, measured, measure,
                          "classifier", progress)
        details = result.to_dict()
    timings["total"] = time.perf_counter() - started
    payload = {
        "format": PURIFY_FORMAT,
        "method": method,
        "model": str(model),
        "pretrained": None if pretrained is None else str(pretrained),
        "task": task.source if isinstance(task, LabeledData) else str(task),
        "profile": profile,
        "triggers": scanned.to_dict()["words"] if scanned is not None else list(words),
        "trigger_token_ids": None if scanned is None else [list(t) for t in scanned.token_ids],
        "triggers_source": scanned.source if scanned is not None else ("given" if words else None),
        "measured_triggers": measured,
        "before": None if before is None else before.to_dict(),
        "after": None if after is None else after.to_dict(),
        "settings": config.to_dict(),
        "measure": None if measure is None else measure.to_dict(),
        "details": details,
        "timings": timings,
        "environment": environment(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    lm.save_model_folder(purified, tokenizer, out, {PURIFY_FILE: payload}, source=source)
    log.info("%s: purified into %s in %.1f s", method, out, timings["total"])
    return PurifyResult(method, Path(out), list(words), measured, before, after, payload)

