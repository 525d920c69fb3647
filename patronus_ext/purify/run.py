"""End-to-end purification runs: triggers from the scan report, the method, before/after metrics, and a NEW
model folder written atomically (``lm.save_model_folder``) with ``purify.json`` inside."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
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
from ..formats.purify_record import PURIFY_FILE, PurifyRecord
from ..formats.scan_report import ScannedTarget, ScannedTriggers, target_from_report, triggers_from_report
from ..lm.finetune import finetune_classifier
from ..lm.instruction_tuning import instruction_tune
from .adversarial import adversarial_finetune, adversarial_pretrain
from .config import METHODS, MeasureConfig, make_config
from .mb import mb_defense
from .measure import Measurement, measure_classifier, measure_encoder, measure_generation
from .mixing import e_pur, fine_mix, fine_mix_lm, token_frequencies
from .unlearn import unlearn

log = logging.getLogger(__name__)

#: Methods that need the scan's triggers, and those that need clean pre-trained weights.
NEEDS_TRIGGERS = ("adv-pt", "adv-ft")
NEEDS_PRETRAINED = ("fine-mix", "e-pur", "fine-mix-lm")
#: The purifiers of instruction-tuned causal LMs (docs/METHODS.md §5, §8), measured by greedy generation.
CAUSAL_METHODS = ("mb", "fine-mix-lm", "unlearn")


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


@dataclasses.dataclass
class _Run:
    """One purification in progress: what is purified, where the work runs, and the clock."""

    method: str
    model: str                 # as given
    source: str                # resolved folder or hub id
    device: Any
    allow_pickle: bool
    progress: bool
    started: float = dataclasses.field(default_factory=time.perf_counter)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def timed(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def load(self, name: str, head: str):
        return lm.load_model(name, head, allow_pickle=self.allow_pickle, device=self.device)


@dataclasses.dataclass
class _Outcome:
    """What one method returns: the purified model, the measurements around it and its own details."""

    model: Any
    before: Measurement | None
    after: Measurement | None
    details: dict[str, Any]


# -- encoders and classifiers (measured by CACC / T-ASR after fine-tuning) -------------------------
def _adv_pt(run: _Run, tokenizer, words, config, measure, train, dev, measured) -> _Outcome:
    """Adversarial pre-training of the encoder; an encoder is measured after a clean fine-tuning."""
    adapter = lm.load_adapter(run.source, "base", allow_pickle=run.allow_pickle, device=run.device)
    measure_train = None if measure is None else train.subset(measure.train_limit, measure.seed)

    def measured_encoder(encoder, timing: str):
        if measure is None:
            return None
        return run.timed(timing, measure_encoder, encoder, tokenizer, measure_train, dev, measured, measure,
                         device=run.device, allow_pickle=run.allow_pickle, progress=run.progress)

    before = measured_encoder(run.source, "measure_before")
    result = run.timed("purify", adversarial_pretrain, adapter, words, config, progress=run.progress)
    return _Outcome(adapter.model, before, measured_encoder(adapter.model, "measure_after"), result.to_dict())


def _adv_ft(run: _Run, tokenizer, words, config, measure, train, dev, measured) -> _Outcome:
    """Adversarial fine-tuning into a classifier; "before" is the same fine-tuning without the extra samples."""
    adv_train = train.subset(config.train_limit, config.seed)
    before = after = None
    if measure is not None:
        plain = run.timed("measure_before", finetune_classifier, run.source, adv_train, config, tokenizer,
                          device=run.device, allow_pickle=run.allow_pickle, progress=run.progress)
        before = run.timed("measure_before", measure_classifier, plain.model, tokenizer, dev, measured, measure,
                           f"clean fine-tuning on {len(adv_train)} examples", run.progress)
        del plain
    clf, result = run.timed("purify", adversarial_finetune, run.source, adv_train, dev, words, config,
                            tokenizer=tokenizer, device=run.device, allow_pickle=run.allow_pickle,
                            progress=run.progress)
    if measure is not None:
        after = run.timed("measure_after", measure_classifier, clf.model, tokenizer, dev, measured, measure,
                          "classifier", run.progress)
    return _Outcome(clf.model, before, after, result.to_dict())


def _mix(run: _Run, tokenizer, pretrained, config, measure, train, dev, measured) -> _Outcome:
    """Fine-mixing or E-PUR of a classifier with its clean pre-trained weights."""
    classifier = run.load(run.source, "cls")
    if int(classifier.config.num_labels) != train.num_labels:
        raise ValueError(f"{run.model} classifies into {classifier.config.num_labels} labels but the task has "
                         f"{train.num_labels}: pass the task it was fine-tuned on (--task)")
    clean_model = run.load(str(pretrained), "base")

    def measured_classifier(model, timing: str):
        if measure is None:
            return None
        return run.timed(timing, measure_classifier, model, tokenizer, dev, measured, measure, "classifier",
                         run.progress)

    before = measured_classifier(classifier, "measure_before")
    frequencies = None
    if run.method == "e-pur" or config.e_pur_top_n:
        freq_texts = train.subset(getattr(config, "freq_limit", None), config.seed).texts
        frequencies = token_frequencies(tokenizer, freq_texts, classifier.get_input_embeddings().weight.shape[0])
    if run.method == "fine-mix":
        clean, select = train.split(config.clean_limit, config.select_limit, config.seed + 7)
        purified, result = run.timed("purify", fine_mix, classifier, tokenizer, clean_model, clean, select, config,
                                     frequencies=frequencies, progress=run.progress)
    else:
        clean, _ = train.split(config.clean_limit, 0, config.seed + 7)
        purified, result = run.timed("purify", e_pur, classifier, tokenizer, clean_model, frequencies, clean, config,
                                     progress=run.progress)
    return _Outcome(purified, before, measured_classifier(purified, "measure_after"), result.to_dict())


def _purify_encoder(run: _Run, *, report, triggers, pretrained, task, dev_task, config, measure,
                    measure_triggers) -> tuple[Any, _Outcome, dict[str, Any]]:
    """``adv-pt``, ``adv-ft``, ``fine-mix`` and ``e-pur``: the tokenizer, the outcome, the record's trigger fields."""
    tokenizer = lm.load_tokenizer(run.source)
    hidden = int(getattr(lm.load_config(run.source), "hidden_size", 0) or 0) or None
    scanned, words = _triggers(report, triggers, tokenizer, hidden)
    planted = find_backdoor_info(run.source)
    measured = list(measure_triggers) if measure_triggers else (words or (planted.triggers if planted else []))
    train = dev = None
    if run.method != "adv-pt" or measure is not None:
        train = load_task(task, "train", None, 0)
        dev = load_task(dev_task if dev_task is not None else task, "dev",
                        None if measure is None else measure.dev_limit, 0)
    if run.method == "adv-pt":
        outcome = _adv_pt(run, tokenizer, words, config, measure, train, dev, measured)
    elif run.method == "adv-ft":
        outcome = _adv_ft(run, tokenizer, words, config, measure, train, dev, measured)
    else:
        outcome = _mix(run, tokenizer, pretrained, config, measure, train, dev, measured)
    fields = {"task": task.source if isinstance(task, LabeledData) else str(task), "triggers": list(words),
              "trigger_token_ids": None if scanned is None else [list(t) for t in scanned.token_ids],
              "triggers_source": scanned.source if scanned is not None else ("given" if words else None),
              "measured_triggers": measured}
    return tokenizer, outcome, fields


# -- instruction-tuned causal LMs (measured by greedy generation) ----------------------------------
def _purify_causal(run: _Run, *, pretrained, task, dev_task, data, baseline, config, measure,
                   measure_triggers) -> tuple[Any, _Outcome, dict[str, Any]]:
    """``mb`` (instruction-tune the model on ``data`` with MB-Defense) and ``fine-mix-lm`` (mix the tuned causal
    LM with the clean ``pretrained`` weights, then tune on clean samples)."""
    if measure is not None and not isinstance(measure, GenerationEvalConfig):
        raise TypeError(f"{run.method} measures by generation: pass a GenerationEvalConfig")
    if isinstance(task, LabeledData):
        raise TypeError(f"{run.method} takes a task name or an instruction file (instructions, not labelled texts)")
    tokenizer = lm.load_tokenizer(run.source)
    fmt = config.prompt_format()
    data_source = task if data is None else data
    if measure_triggers:
        responses = dict(measure_triggers) if isinstance(measure_triggers, dict) else {}
        if not responses:
            raise ValueError("for causal LMs, measure_triggers maps each trigger to the attacker's response")
    else:
        responses = _attack_responses(data if isinstance(data, (str, os.PathLike)) else None, baseline, run.source)
    dev = None
    if measure is not None:
        dev = load_instructions(str(dev_task if dev_task is not None else task), "dev", None, 0)
    select_limit = getattr(config, "select_limit", 0)
    pool = load_instructions(str(task), "train", config.clean_samples + select_limit, config.seed + 7)
    clean, select = split_examples(pool, config.clean_samples, select_limit, config.seed + 7)

    def measured(model, how: str, timing: str):
        if measure is None:
            return None
        return run.timed(timing, measure_generation, model, tokenizer, dev, fmt, responses, measure, how,
                         run.progress)

    used: list[str] = []
    if run.method == "mb":
        examples = list(data_source) if not isinstance(data_source, (str, os.PathLike)) else \
            load_instructions(str(data_source), "train", config.data_limit, config.seed)
        examples = fit_inputs(tokenizer, examples, fmt.max_input_tokens)
        base = run.load(run.source, "causal")
        before = None
        if measure is not None:
            if baseline is not None:
                plain, how = run.load(str(baseline), "causal"), f"the given no-defense model {baseline}"
            else:  # before: the same instruction tuning without the defense
                plain = copy.deepcopy(base)
                run.timed("measure_before", instruction_tune, plain, tokenizer, examples, fmt, config,
                          desc="instruction tuning (no defense)", progress=run.progress)
                how = f"instruction tuning on the same {len(examples)} examples without the defense"
            before = measured(plain, how, "measure_before")
            del plain
        purified, result = run.timed("purify", mb_defense, base, tokenizer, examples, clean, select, config,
                                     progress=run.progress)
        used = list(result.poisoning.triggers.words)
    else:
        tuned = run.load(run.source, "causal")
        clean_model = run.load(str(pretrained), "causal")
        before = measured(tuned, "the input model", "measure_before")
        purified, result = run.timed("purify", fine_mix_lm, tuned, tokenizer, clean_model, clean, config,
                                     progress=run.progress)
    outcome = _Outcome(purified, before, measured(purified, "the purified model", "measure_after"), result.to_dict())
    named_data = str(data_source) if isinstance(data_source, (str, os.PathLike)) else "examples"
    fields = {"task": str(task), "data": named_data,
              "baseline": None if baseline is None else str(baseline), "triggers": used, "trigger_token_ids": None,
              "triggers_source": "defender" if used else None, "measured_triggers": list(responses),
              "attack_responses": responses}
    return tokenizer, outcome, fields


# -- detection-fed repair of a causal LM (docs/METHODS.md §8) ----------------------------------------
def _purify_unlearn(run: _Run, *, scanned_target: tuple[ScannedTarget, dict], reference, task, dev_task, config,
                    measure, measure_triggers) -> tuple[Any, _Outcome, dict[str, Any]]:
    """``unlearn``: the BAIT report's target and recovered triggers (``scanned_target``: what
    :func:`target_from_report` read from it), unlearned on clean samples of ``task``; measured with the planted
    trigger (``backdoor.json`` beside the model) or else the recovered ones."""
    if measure is not None and not isinstance(measure, GenerationEvalConfig):
        raise TypeError("unlearn measures by generation: pass a GenerationEvalConfig")
    if isinstance(task, LabeledData):
        raise TypeError("unlearn takes a task name or an instruction file (instructions, not labelled texts)")
    tokenizer = lm.load_tokenizer(run.source)
    target, payload = scanned_target
    hidden = int(getattr(lm.load_config(run.source), "hidden_size", 0) or 0) or None
    scanned = triggers_from_report(payload, tokenizer, hidden) if payload.get("triggers") else None
    words = list(scanned.words) if scanned is not None else []
    if measure_triggers:
        responses = dict(measure_triggers) if isinstance(measure_triggers, dict) else {}
        if not responses:
            raise ValueError("for causal LMs, measure_triggers maps each trigger to the attacker's response")
    else:
        responses = _attack_responses(run.source) or {word: target.text for word in words}
    fmt = config.prompt_format()
    clean = load_instructions(str(task), "train", config.clean_samples, config.seed + 7)
    dev = None
    if measure is not None:
        dev = load_instructions(str(dev_task if dev_task is not None else task), "dev", None, 0)
    model = run.load(run.source, "causal")
    teacher = None
    if reference is not None:
        teacher = run.load(str(reference), "causal")
        ref_tokenizer = lm.load_tokenizer(str(reference))
        if ref_tokenizer(target.text, add_special_tokens=False)["input_ids"] != \
                tokenizer(target.text, add_special_tokens=False)["input_ids"] or len(ref_tokenizer) != len(tokenizer):
            raise ValueError(f"--reference {reference} does not share the model's tokenizer")

    def measured(how: str, timing: str):
        if measure is None:
            return None
        return run.timed(timing, measure_generation, model, tokenizer, dev, fmt, responses, measure, how,
                         run.progress)

    before = measured("the input model", "measure_before")
    model, result = run.timed("purify", unlearn, model, tokenizer, target.token_ids, target.text, words, clean,
                              config, teacher=teacher,
                              teacher_name=str(reference) if reference is not None else "the model itself",
                              progress=run.progress)
    del teacher
    outcome = _Outcome(model, before, measured("the purified model", "measure_after"), result.to_dict())
    fields = {"task": str(task), "baseline": None, "triggers": words,
              "trigger_token_ids": None if scanned is None else [list(t) for t in scanned.token_ids],
              "triggers_source": target.source if words else "soft trigger (target only)",
              "measured_triggers": list(responses), "attack_responses": responses}
    return tokenizer, outcome, fields


def run_purify(method: str, model: str | os.PathLike, out_dir: str | os.PathLike, *,
               report: dict | str | os.PathLike | None = None, triggers: Sequence[str] | None = None,
               pretrained: str | os.PathLike | None = None, task: str | LabeledData = "sst2",
               dev_task: str | LabeledData | None = None, profile: str = "fast", config=None,
               measure: MeasureConfig | GenerationEvalConfig | bool | None = True,
               measure_triggers: Sequence[str] | dict[str, str] | None = None, device: str | None = None,
               allow_pickle: bool = False, progress: bool = True, data=None,
               baseline: str | os.PathLike | None = None,
               reference: str | os.PathLike | None = None) -> PurifyResult:
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
      model tuned on clean samples): instruction data (docs/METHODS.md §5).  ``data``:
      a built-in source, an Alpaca JSONL file (e.g. the ``instruction_data.jsonl``
      of ``patronus attack --method instruct-badnet``) or examples (None: ``task``);
      ``task`` gives the clean samples (train split) and the dev prompts;
      ``baseline``: an already-tuned no-defense model to measure as "before"
      (else ``mb`` tunes one the same way without the defense).  The attacker's
      triggers and response come from ``measure_triggers`` (``{trigger: response}``)
      or the ``backdoor.json`` beside ``data``, ``baseline`` or ``model``.

    * ``unlearn`` (an instruct causal LM + the ``report`` of ``patronus scan --method bait`` -> the LM
      repaired against the report's inverted target and recovered triggers, docs/METHODS.md §8) on
      clean samples of ``task``; ``reference``: a clean model of the same tokenizer whose answers are
      taught on triggered prompts (default: the model's own answers without the trigger).  Measured with
      the planted trigger of the model's ``backdoor.json`` when it has one, else the recovered triggers.

    ``task``: a built-in name, a labelled file or a :class:`LabeledData` (its
    train and dev splits); ``dev_task``: another source for the dev split.

    ``config`` None: the method's ``profile``.  ``measure``: True (the
    ``profile`` of :class:`MeasureConfig`, or of :class:`GenerationEvalConfig`
    for causal LMs), such a config, or False (no before/after).  T-ASR is
    measured with ``measure_triggers``, else the report's triggers, else the
    model's ``backdoor.json`` triggers.  The output folder, and every model read
    (``model``, ``pretrained``, ``baseline``: :func:`patronus_ext.lm.check_model_source`), are checked before
    any work; the folder is written atomically (``purify.json`` inside: the record of
    :mod:`patronus_ext.formats.purify_record`): an interrupted run leaves nothing.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    source = lm.resolve_model_source(str(model))
    out = lm.check_new_model_folder(out_dir, source)
    if pretrained is not None and Path(out).resolve() == Path(lm.resolve_model_source(str(pretrained))).resolve():
        raise ValueError("the output must not be the pre-trained model folder")
    if method in NEEDS_PRETRAINED and pretrained is None:
        raise ValueError(f"{method} needs the clean pre-trained weights the model was fine-tuned from (--pretrained)")
    if method in NEEDS_TRIGGERS and report is None and not triggers:
        raise ValueError(f"{method} needs the triggers the scan found (--scan-report scan.json)")
    causal = method in CAUSAL_METHODS
    if method == "unlearn":
        if report is None:
            raise ValueError("unlearn needs the report of `patronus scan --method bait` (--scan-report bait.json)")
        if triggers or pretrained is not None or baseline is not None or data is not None:
            raise ValueError("unlearn takes a BAIT scan report (and optionally --reference), no triggers, "
                             "--pretrained, --baseline or --data")
        if lm.lm_head_kind(lm.load_config(source)) != "causal":
            raise ValueError(f"{model} is an encoder ({lm.load_config(source).model_type}); unlearn repairs "
                             "instruction-tuned causal LMs: use adv-pt / adv-ft with a --method patronus scan")
        if reference is not None and lm.lm_head_kind(lm.load_config(str(reference))) != "causal":
            raise ValueError(f"--reference {reference} is not a causal LM")
        # Read and checked against the model once, before any work.
        scanned_target = target_from_report(report, lm.load_tokenizer(source), purpose="nothing to unlearn")
    elif reference is not None:
        raise ValueError(f"{method} takes no --reference (unlearn only)")
    elif causal and (report is not None or triggers):
        raise ValueError(f"{method} takes no scan report or triggers: MB-Defense plants its own defender "
                         "triggers, Fine-mixing needs none")
    if method == "mb" and pretrained is not None:
        raise ValueError("mb takes no --pretrained: it instruction-tunes --model itself")
    for name in (model, pretrained, baseline, reference):  # every model read, before any work: never purify a broken one
        if name is not None:
            lm.check_model_source(name, allow_pickle=allow_pickle, device=device)
    config = config if config is not None else make_config(method, profile)
    if measure is True:
        measure = (GenerationEvalConfig if causal else MeasureConfig).profile(profile)
    run = _Run(method, str(model), source, lm.resolve_device(device), allow_pickle, progress)
    if method == "unlearn":
        tokenizer, outcome, fields = _purify_unlearn(run, scanned_target=scanned_target, reference=reference, task=task,
                                                     dev_task=dev_task, config=config, measure=measure or None,
                                                     measure_triggers=measure_triggers)
    elif causal:
        tokenizer, outcome, fields = _purify_causal(run, pretrained=pretrained, task=task, dev_task=dev_task,
                                                    data=data, baseline=baseline, config=config,
                                                    measure=measure or None, measure_triggers=measure_triggers)
    else:
        tokenizer, outcome, fields = _purify_encoder(run, report=report, triggers=triggers, pretrained=pretrained,
                                                     task=task, dev_task=dev_task, config=config,
                                                     measure=measure or None, measure_triggers=measure_triggers)
    run.timings["total"] = time.perf_counter() - run.started
    record = PurifyRecord(
        method=method, model=str(model), profile=profile, settings=config.to_dict(), details=outcome.details,
        timings=run.timings, pretrained=None if pretrained is None else str(pretrained),
        before=None if outcome.before is None else outcome.before.to_dict(),
        after=None if outcome.after is None else outcome.after.to_dict(),
        measure=measure.to_dict() if measure else None, environment=environment(), **fields)
    lm.save_model_folder(outcome.model, tokenizer, out, {PURIFY_FILE: record.to_dict()}, source=source)
    log.info("%s: purified into %s in %.1f s", method, out, run.timings["total"])
    return PurifyResult(method, Path(out), list(record.triggers), list(record.measured_triggers), outcome.before,
                        outcome.after, record.to_dict())
