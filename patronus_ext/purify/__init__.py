"""Purification (docs/METHODS.md §2, §4): make a model that can be shipped, driven by what the scan found.

    from patronus_ext import purify
    result = purify.run_purify("adv-pt", "out/por", "out/por-clean", report="scan.json", profile="fast")
    result.before.t_asr, result.after.t_asr, result.after.cacc

Methods: ``adv-pt`` (Patronus adversarial pre-training, encoder -> encoder), ``adv-ft``
(Patronus adversarial fine-tuning, encoder -> classifier), ``fine-mix`` and ``e-pur``
(Fine-mixing / embedding purification, classifier + clean pre-trained weights -> classifier),
``mb`` (MB-Defense: instruction tuning of a causal LM on possibly poisoned data, defended) and
``fine-mix-lm`` (Fine-mixing of an instruction-tuned causal LM, MB-Defense's baseline) and ``unlearn``
(detection-fed repair of a causal LM from a BAIT scan report: :func:`unlearn`, :func:`learn_soft_trigger`).
Library pieces: :func:`mb_defense`, :func:`defensive_poisoning`, :func:`weight_recovery`,
:func:`fine_mix_lm`, :func:`adversarial_pretrain`, :func:`adversarial_finetune`, :func:`adversarial_examples`,
:func:`mix_weights`, :func:`fine_mix`, :func:`suspicious_rows`, :func:`e_pur`.  Settings: :func:`make_config`
(by method name) or ``<Method>Config.profile(name, ...)``; the scan's triggers come through
:func:`patronus_ext.formats.scan_report.triggers_from_report`.
"""

from .adversarial import (
    AdvFinetuneResult,
    AdvPretrainResult,
    adversarial_examples,
    adversarial_finetune,
    adversarial_pretrain,
    purification_loss,
)
from .config import (
    CONFIGS,
    METHODS,
    MIX_VARIANTS,
    AdvFinetuneConfig,
    AdvPretrainConfig,
    EPurConfig,
    FineMixConfig,
    FineMixLMConfig,
    MBConfig,
    MeasureConfig,
    UnlearnConfig,
    make_config,
)
from .mb import (
    DefenderTriggers,
    DefensivePoisoning,
    LambdaCandidate,
    MBResult,
    RecoveryLog,
    add_defender_triggers,
    defensive_poisoning,
    make_defender_triggers,
    mb_defense,
    recovery_loss,
    weight_recovery,
)
from .measure import Measurement, classifier_from_encoder, measure_classifier, measure_encoder, measure_generation
from .mixing import (
    EPurResult,
    FineMixLMResult,
    FineMixResult,
    MixStats,
    e_pur,
    fine_mix,
    fine_mix_lm,
    mix_weights,
    rank_suspicious,
    reset_rows,
    suspicious_rows,
    token_frequencies,
)
from .run import CAUSAL_METHODS, PurifyResult, run_purify
from .unlearn import (
    SoftTrigger,
    SoftTriggerLog,
    UnlearnResult,
    learn_soft_trigger,
    placeholder_word,
    teacher_answers,
    unlearn,
    unlearn_loss,
)

__all__ = [
    "CAUSAL_METHODS", "DefenderTriggers", "DefensivePoisoning", "FineMixLMConfig", "FineMixLMResult", "LambdaCandidate",
    "MBConfig", "MBResult", "RecoveryLog", "add_defender_triggers", "defensive_poisoning", "fine_mix_lm",
    "make_defender_triggers", "mb_defense", "measure_generation", "recovery_loss", "weight_recovery",
    "CONFIGS", "METHODS", "MIX_VARIANTS", "AdvFinetuneConfig",
    "AdvFinetuneResult", "AdvPretrainConfig", "AdvPretrainResult", "EPurConfig", "EPurResult", "FineMixConfig",
    "FineMixResult", "MeasureConfig", "Measurement", "MixStats", "PurifyResult",
    "adversarial_examples", "adversarial_finetune", "adversarial_pretrain", "classifier_from_encoder", "e_pur",
    "fine_mix", "make_config", "measure_classifier", "measure_encoder", "mix_weights", "purification_loss",
    "rank_suspicious", "reset_rows", "run_purify", "suspicious_rows", "token_frequencies",
    "SoftTrigger", "SoftTriggerLog", "UnlearnConfig", "UnlearnResult", "learn_soft_trigger", "placeholder_word",
    "teacher_answers", "unlearn", "unlearn_loss",
]
