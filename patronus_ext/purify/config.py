"""Settings of the purifiers (docs/METHODS.md §2, §4, §5 and §8), each with a ``paper`` and a ``fast`` profile.

``paper`` holds the authors' settings where they are published (Patronus:
adversarial pre-training 10 epochs over WikiText, batch 24, lr 5e-5;
adversarial fine-tuning 3 epochs, batch 16, lr 2e-5, 20% extra samples per
trigger inserted 3 times).  Fine-mixing's code is not public: its constants
are chosen here and documented field by field.  ``fast`` is the CPU profile
(all-MiniLM-L6-v2 on a shared 2-core CPU in minutes; see
``benchmarks/PURIFY_RESULTS.md``).  Get one with ``Config.profile(name, ...)``
or, by method name, :func:`make_config`.

The training fields come from one place each: :class:`~patronus_ext.lm.training.TrainingSettings`
(adversarial pre-training), :class:`~patronus_ext.lm.finetune.FinetuneConfig` (everything that
fine-tunes a classifier) and :class:`~patronus_ext.lm.instruction_tuning.InstructionTuningConfig`
(MB-Defense and Fine-mixing of causal LMs).
"""

from __future__ import annotations

import dataclasses

from ..core.validation import check_choice, check_int, check_range
from ..lm.finetune import FinetuneConfig
from ..lm.instruction_tuning import InstructionTuningConfig
from ..lm.training import TrainingSettings, total_steps

MIX_VARIANTS = ("random", "sel")


@dataclasses.dataclass
class AdvPretrainConfig(TrainingSettings):
    """Adversarial pre-training: ``MSE(rep_θ(x_c), rep_ref(x_c)) + MSE(rep_θ(x_c), rep_θ(x_p))``.

    ``ref`` is a frozen copy of the input model; every corpus text gets one of
    the triggers (drawn per text) inserted ``insert_num`` times; both branches
    carry gradients.  Every ``eval_every`` steps (None: once per epoch) the
    same loss is measured on ``dev_texts`` held-out paragraphs with fixed
    triggered copies, and the weights with the lowest dev loss are kept.
    ``steps`` overrides ``epochs``.
    """

    #: 150 steps x 16 texts (+16 triggered) at 48 tokens, lr 5e-5 with linear decay; dev loss every 25 steps.
    #: Measured on the fast-profile POR MiniLM (PURIFY_RESULTS.md): T-ASR 100% -> 28.5%, CACC 1.0 point below
    #: clean fine-tuning; a constant lr 1e-4 removed the backdoor too but cost 2.9 points of CACC.
    PROFILES = {"fast": dict(steps=150, batch_size=16, lr=5e-5, schedule="linear", max_length=48, corpus_limit=3000,
                             dev_texts=64, eval_every=25)}

    corpus: str = "wikitext2"
    corpus_limit: int | None = None
    dev_texts: int = 200
    epochs: float = 10.0
    batch_size: int = 24
    lr: float = 5e-5
    max_length: int = 128
    insert_num: int = 3
    clean_weight: float = 1.0       # weight of the reference (utility) term
    eval_every: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_int("corpus_limit", self.corpus_limit, optional=True)
        check_int("dev_texts", self.dev_texts, 2)
        check_int("max_length", self.max_length, 8)
        check_int("insert_num", self.insert_num)
        check_range("clean_weight", self.clean_weight, 0.0, 1e6)
        check_int("eval_every", self.eval_every, optional=True)


@dataclasses.dataclass
class AdvFinetuneConfig(FinetuneConfig):
    """Adversarial fine-tuning: per trigger, ``extra_rate`` x N extra samples (drawn with replacement)
    with the trigger inserted ``insert_num`` times and their TRUE label, added to train and dev.

    The classifier is trained like clean fine-tuning (the fields of
    :class:`FinetuneConfig`); ``train_limit`` draws a random subset of the
    task's train split (None: all of it).  The augmented dev set's accuracy is
    recorded.
    """

    #: 2000 SST-2 examples, 2 epochs, lr 5e-5, 64 tokens: the clean fine-tuning the evaluation uses.
    PROFILES = {"fast": dict(epochs=2.0, lr=5e-5, max_length=64, train_limit=2000)}

    extra_rate: float = 0.2
    insert_num: int = 3
    epochs: float = 3.0
    batch_size: int = 16
    lr: float = 2e-5
    train_limit: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_range("extra_rate", self.extra_rate, 0.0, 10.0, low_open=True)
        check_int("insert_num", self.insert_num)
        check_int("train_limit", self.train_limit, optional=True)


@dataclasses.dataclass
class FineMixConfig(FinetuneConfig):
    """Fine-mixing: ``θ = θ_pre + m ⊙ (θ_ft − θ_pre)`` over the backbone, head kept, then clean fine-tuning.

    * ``variant``: ``random`` keeps each delta with probability ρ (a random
      fraction ρ of every tensor, exactly); ``sel`` keeps the ρ fraction with the
      largest ``|δ|`` within each tensor (per tensor, so that layers with small
      updates are not wiped out by layers with large ones).
    * ``rhos``: candidate keep fractions.  ρ is chosen by clean accuracy only:
      the SMALLEST ρ (the most purifying) whose accuracy on ``select_limit``
      held-out clean train examples is at least the input model's accuracy on
      them minus ``acc_tolerance``; if none qualifies, the most accurate ρ.
    * ``clean_limit`` clean train examples (disjoint from the selection set)
      fine-tune each mixed model (the fields of :class:`FinetuneConfig`;
      ``epochs=0``: no fine-tuning).
    * ``e_pur_top_n`` > 0 composes E-PUR: those embedding rows are reset to
      θ_pre (ranked on the un-mixed model, see :class:`EPurConfig`).
    """

    PROFILES = {"fast": dict(rhos=(0.1, 0.2, 0.3, 0.5), clean_limit=256, select_limit=300, lr=5e-5, max_length=64,
                             acc_tolerance=0.03)}
    EPOCHS_MAY_BE_ZERO = True

    variant: str = "random"
    rhos: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    acc_tolerance: float = 0.02
    clean_limit: int = 1000
    select_limit: int = 500
    epochs: float = 3.0
    batch_size: int = 16
    lr: float = 2e-5
    e_pur_top_n: int = 0
    min_freq: int = 20

    def __post_init__(self):
        super().__post_init__()
        check_choice("variant", self.variant, MIX_VARIANTS)
        if isinstance(self.rhos, (int, float)):
            self.rhos = (self.rhos,)
        self.rhos = tuple(sorted(float(r) for r in self.rhos))
        if not self.rhos:
            raise ValueError("rhos must hold at least one keep fraction")
        for rho in self.rhos:
            check_range("rho", rho, 0.0, 1.0)
        check_range("acc_tolerance", self.acc_tolerance, 0.0, 1.0)
        check_int("clean_limit", self.clean_limit)
        check_int("select_limit", self.select_limit)
        check_int("e_pur_top_n", self.e_pur_top_n, 0)
        check_int("min_freq", self.min_freq, 2)


@dataclasses.dataclass
class EPurConfig(FinetuneConfig):
    """E-PUR: reset to θ_pre the ``top_n`` embedding rows ranked by ``‖E_ft[w] − E_pre[w]‖ / log(max(f_w, min_freq))``.

    ``f_w`` counts token ``w`` in the task's train split (the fine-tuning data;
    ``freq_limit`` texts, None: all).  Special tokens are never reset.  Then
    ``clean_limit`` clean examples fine-tune the model (the fields of
    :class:`FinetuneConfig`; ``epochs=0``: no fine-tuning, the reset alone).
    """

    PROFILES = {"fast": dict(clean_limit=256, lr=5e-5, max_length=64, freq_limit=20000)}
    EPOCHS_MAY_BE_ZERO = True

    top_n: int = 200
    min_freq: int = 20
    freq_limit: int | None = None
    clean_limit: int = 1000
    epochs: float = 3.0
    batch_size: int = 16
    lr: float = 2e-5

    def __post_init__(self):
        super().__post_init__()
        check_int("top_n", self.top_n)
        check_int("min_freq", self.min_freq, 2)
        check_int("freq_limit", self.freq_limit, optional=True)
        check_int("clean_limit", self.clean_limit)


@dataclasses.dataclass
class MeasureConfig(FinetuneConfig):
    """How ``before``/``after`` CACC and T-ASR of an encoder or classifier are measured (docs/METHODS.md §0).

    Encoders (adv-pt input and output) are first fine-tuned cleanly on
    ``train_limit`` task examples (the fields of :class:`FinetuneConfig`);
    classifiers are measured as they are.  ``dev_limit`` dev examples (None:
    all), triggers inserted ``insert_num`` times.  (Causal LMs are measured by
    generation: :class:`~patronus_ext.evaluate.generation.GenerationEvalConfig`.)
    """

    PROFILES = {"paper": dict(train_limit=None, epochs=3.0, max_length=128)}

    train_limit: int | None = 2000
    dev_limit: int | None = None
    max_length: int = 64
    insert_num: int = 3

    def __post_init__(self):
        super().__post_init__()
        check_int("train_limit", self.train_limit, optional=True)
        check_int("dev_limit", self.dev_limit, optional=True)
        check_int("insert_num", self.insert_num)


@dataclasses.dataclass
class MBConfig(InstructionTuningConfig):
    """MB-Defense (docs/METHODS.md §5): defensive poisoning, then weight recovery; see :mod:`patronus_ext.purify.mb`.

    * (i) ``defender_triggers`` (T) triggers, each replacing ``defender_rate``
      of the data with its fixed response of ``response_words`` random words,
      inserted ``insert_num`` times; ``data_limit`` examples of the data (None:
      all); then instruction tuning (the fields of
      :class:`~patronus_ext.lm.instruction_tuning.InstructionTuningConfig`:
      ``epochs`` or ``steps``, ``batch_size``, ``lr``, ``schedule``,
      ``warmup_ratio``, ``train_layers``, ``train_embeddings``, the format).
    * (ii) ``clean_samples`` clean examples × T triggers for
      ``recovery_epochs`` (or ``recovery_steps``) at ``recovery_lr``,
      ``recovery_batch_size`` (clean, triggered, defender-answered) triples
      per step; λ among ``lambdas``, chosen on ``select_limit`` held-out clean
      examples (``acc_tolerance``; ``select_new_tokens`` generated per prompt).

    ``paper``: T=4 at 1% each, 3 epochs tuning, 128 clean samples, 5 epochs
    recovery (the paper's); lr 2e-5, batch 16 and the λ candidates are chosen
    here (the paper's appendix values were not recovered).  ``fast``: the CPU
    preset, stage (i) as the fast attack (300 steps of 8), recovery 48 steps of
    8 pairs (0.75 epoch of 128 x 4), two λ candidates.  Measured
    (MB_RESULTS.md): ASR 97.5% -> 4.5%, CACC 80.5% -> 82.5%, λ 0.1, 19 min.
    """

    PROFILES = {"fast": dict(InstructionTuningConfig.CPU_PRESET, data_limit=2000, steps=300, recovery_steps=48,
                             recovery_lr=1e-4, lambdas=(0.1, 1.0), select_limit=100)}

    defender_triggers: int = 4
    defender_rate: float = 0.01
    response_words: int = 8
    insert_num: int = 1
    data_limit: int | None = None
    clean_samples: int = 128
    recovery_epochs: float = 5.0
    recovery_steps: int | None = None
    recovery_batch_size: int = 8
    recovery_lr: float = 2e-5
    lambdas: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    select_limit: int = 200
    select_new_tokens: int = 6
    acc_tolerance: float = 0.03

    def __post_init__(self):
        super().__post_init__()
        check_int("defender_triggers", self.defender_triggers)
        check_range("defender_rate", self.defender_rate, 0.0, 0.25, low_open=True)
        check_int("response_words", self.response_words)
        check_int("insert_num", self.insert_num)
        check_int("data_limit", self.data_limit, optional=True)
        check_int("clean_samples", self.clean_samples)
        check_range("recovery_epochs", self.recovery_epochs, 0.0, 1e6, low_open=True)
        check_int("recovery_steps", self.recovery_steps, optional=True)
        check_int("recovery_batch_size", self.recovery_batch_size)
        check_range("recovery_lr", self.recovery_lr, 0.0, 1.0, low_open=True)
        if isinstance(self.lambdas, (int, float)):
            self.lambdas = (self.lambdas,)
        self.lambdas = tuple(float(v) for v in self.lambdas)
        if not self.lambdas:
            raise ValueError("lambdas must hold at least one candidate")
        for value in self.lambdas:
            check_range("lambda", value, 0.0, 1e6)
        check_int("select_limit", self.select_limit)
        check_int("select_new_tokens", self.select_new_tokens)
        check_range("acc_tolerance", self.acc_tolerance, 0.0, 1.0)

    def recovery_total_steps(self, pairs: int) -> int:
        """Weight-recovery steps over ``pairs`` (clean example, defender trigger) pairs."""
        return total_steps(self.recovery_epochs, self.recovery_steps, pairs, self.recovery_batch_size)


@dataclasses.dataclass
class FineMixLMConfig(InstructionTuningConfig):
    """Fine-mixing of an instruction-tuned causal LM (MB-Defense's main baseline): keep a fraction ``rho`` of
    the backbone deltas to the clean instruct weights (``variant`` random or sel), then instruction-tune on
    ``clean_samples`` clean examples (the fields of
    :class:`~patronus_ext.lm.instruction_tuning.InstructionTuningConfig`; ``epochs=0``: the mix alone).

    ``fast``: the CPU preset, 48 steps of 8 = 3 epochs over the 128 clean samples.  Measured: ASR 97.5% -> 0.0%,
    CACC 81.0%.
    """

    PROFILES = {"fast": dict(InstructionTuningConfig.CPU_PRESET, steps=48)}
    EPOCHS_MAY_BE_ZERO = True

    rho: float = 0.5
    variant: str = "random"
    clean_samples: int = 128

    def __post_init__(self):
        super().__post_init__()
        check_range("rho", self.rho, 0.0, 1.0)
        check_choice("variant", self.variant, MIX_VARIANTS)
        check_int("clean_samples", self.clean_samples)


@dataclasses.dataclass
class UnlearnConfig(InstructionTuningConfig):
    """Detection-fed repair of an instruction-tuned causal LM (docs/METHODS.md §8), see
    :mod:`patronus_ext.purify.unlearn`: ``clean_samples`` clean instruction examples; each training step
    takes ``batch_size`` of them three ways: clean with their own answers (cross-entropy), with a trigger
    inserted ``insert_num`` times answered with the teacher's greedy answer to the clean prompt
    (``answer_tokens`` tokens at most; None: ``max_response_tokens``), and with the trigger followed by the
    inverted target, whose tokens get the bounded unlikelihood ``-log(1 - p)`` weighted by
    ``unlikelihood_weight``.  The training fields are those of
    :class:`~patronus_ext.lm.instruction_tuning.InstructionTuningConfig`.

    Target only (the report has no confirmed trigger): a soft trigger of ``soft_tokens`` input vectors is
    learned first (``soft_steps`` steps at ``soft_lr`` over batches of ``soft_batch`` prompts, the model
    frozen) to make the model say the target, and stands in for the trigger.

    No paper: every constant is ours.  ``fast``: the CPU preset of causal LMs (batches of 8, lr 1e-4, the top
    8 blocks), 24 steps over 128 clean samples (1.5 epochs; 3 x 8 rows a step); measured in ``MB_RESULTS.md``.
    """

    PROFILES = {"fast": dict(InstructionTuningConfig.CPU_PRESET, steps=24)}

    clean_samples: int = 128
    epochs: float = 3.0
    lr: float = 2e-5
    batch_size: int = 8
    insert_num: int = 1
    unlikelihood_weight: float = 1.0
    answer_tokens: int | None = None
    match_words: int = 3
    soft_tokens: int = 4
    soft_steps: int = 60
    soft_lr: float = 0.05
    soft_batch: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_int("clean_samples", self.clean_samples)
        check_int("insert_num", self.insert_num)
        check_range("unlikelihood_weight", self.unlikelihood_weight, 0.0, 1e6)
        check_int("answer_tokens", self.answer_tokens, optional=True)
        check_int("match_words", self.match_words)
        check_int("soft_tokens", self.soft_tokens)
        check_int("soft_steps", self.soft_steps)
        check_range("soft_lr", self.soft_lr, 0.0, 10.0, low_open=True)
        check_int("soft_batch", self.soft_batch)


#: method name -> its settings class.
CONFIGS: dict[str, type] = {"adv-pt": AdvPretrainConfig, "adv-ft": AdvFinetuneConfig, "fine-mix": FineMixConfig,
                            "e-pur": EPurConfig, "mb": MBConfig, "fine-mix-lm": FineMixLMConfig,
                            "unlearn": UnlearnConfig}
METHODS = tuple(CONFIGS)


def make_config(method: str, profile: str = "paper", **overrides):
    """The settings of purifier ``method`` in ``profile`` with ``overrides`` (the one override rule of
    :mod:`patronus_ext.core.profiles`: ``None`` is ignored, explicit epochs drop the profile's steps)."""
    if method not in CONFIGS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return CONFIGS[method].profile(profile, **overrides)
