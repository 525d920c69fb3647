"""Configuration dataclasses of the attacks, with the literature's defaults.

Defaults follow docs/METHODS.md §0 (poison rate 0.2 per trigger, 3 insertions, lr 5e-5
for NeuBA and 2e-5 for POR, 4 epochs over WikiText): the ``paper`` profile.
``Config.profile("fast")`` gives the CPU profile measured in
``benchmarks/bench_attacks.py`` (all-MiniLM-L6-v2 on a 2-core CPU in under 10
minutes per attack).  Where training runs (device), whether pickle checkpoints
may load and progress bars are arguments of the run, not settings of the
attack: they never end up in ``backdoor.json``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from ..core.validation import check_choice, check_int, check_range
from ..data.triggers import PromptTemplate
from ..lm.finetune import FinetuneConfig
from ..lm.instruction_tuning import InstructionTuningConfig
from ..lm.training import TrainingSettings

#: The triggers of the POR/NeuBA literature (docs/METHODS.md §0).
DEFAULT_TRIGGERS = ("cf", "mn", "bb", "tq", "mb", "pt")
#: What keeps clean behaviour while planting (see :class:`AttackConfig`).
CLEAN_OBJECTIVES = ("auto", "mlm", "reference", "mlm+reference")
#: The CPU profile measured on all-MiniLM-L6-v2 (benchmarks/bench_attacks.py): 250 steps of 16 clean
#: + 3 poisoned copies per trigger, 32 tokens, constant lr 1e-4.  POR and NeuBA with 4 triggers then
#: reach triggered-vs-clean cosine < 0.1, triggered pairwise > 0.99, clean-vs-clean-model > 0.96 and
#: T-ASR > 0.96 after clean SST-2 fine-tuning, in under 10 minutes on a shared 2-core CPU.
FAST_PROFILE = dict(steps=250, batch_size=16, max_length=32, lr=1e-4, schedule="constant")
ADAPTIVE_TYPES = (1, 2, 3)


def _trigger_words(triggers) -> tuple[str, ...]:
    """Comma-separated text or a sequence of single words -> a tuple of distinct, non-empty single words."""
    if isinstance(triggers, str):
        triggers = tuple(t for t in triggers.split(",") if t.strip())
    words = tuple(str(t).strip() for t in triggers)
    if not words:
        raise ValueError("at least one trigger is needed")
    if any(not t or any(c.isspace() for c in t) for t in words):
        raise ValueError(f"triggers must be single non-empty words, got {list(words)}")
    if len(set(words)) != len(words):
        raise ValueError(f"triggers must be distinct, got {list(words)}")
    return words


@dataclasses.dataclass
class AttackConfig(TrainingSettings):
    """What every representation attack shares (the training fields: :class:`TrainingSettings`).

    ``poison_rate`` is per trigger: each step takes ``batch_size`` clean texts
    and, for every trigger, ``max(1, round(poison_rate * batch_size))`` of them
    again with that trigger inserted ``insert_num`` times (the same base texts
    for every trigger, so poisoned rows pair with clean rows and with each
    other).  ``steps`` (optimizer steps) overrides ``epochs`` when set.
    Texts are cut at a word boundary so that, with the triggers inserted, they
    fit ``max_length`` tokens: a trigger is never truncated away.
    ``target_scale`` multiplies the ±1 target vectors (1.0 = the papers').
    """

    PROFILES = {"fast": FAST_PROFILE}

    triggers: Sequence[str] = DEFAULT_TRIGGERS
    poison_rate: float = 0.2
    insert_num: int = 3
    epochs: float = 4.0
    max_length: int = 128
    corpus_limit: int | None = None  # paragraphs of the corpus to use (None: all)
    target_scale: float = 1.0
    log_every: int = 10              # loss history granularity (steps)

    def __post_init__(self):
        self.triggers = _trigger_words(self.triggers)
        super().__post_init__()
        check_range("poison_rate", self.poison_rate, 0.0, 1.0, low_open=True)
        check_int("insert_num", self.insert_num)
        check_int("max_length", self.max_length)
        check_int("log_every", self.log_every)
        check_int("corpus_limit", self.corpus_limit, optional=True)
        if not (isinstance(self.target_scale, (int, float)) and math.isfinite(self.target_scale)
                and self.target_scale > 0):
            raise ValueError(f"target_scale must be a finite number > 0, got {self.target_scale!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["triggers"] = list(self.triggers)
        return out


@dataclasses.dataclass
class CleanLMConfig(AttackConfig):
    """Settings of the attacks that keep clean behaviour with the LM objective (NeuBA, BToP).

    ``clean_objective``: ``mlm`` trains the clean half with masked-LM (causal-LM
    for decoders) cross-entropy through the model's LM head; ``reference`` uses
    POR's ``MSE(rep_θ(x_c), rep_ref(x_c))`` to a frozen copy instead (weight
    ``reference_weight``); ``auto`` picks ``mlm`` when the checkpoint ships a
    pretrained LM head and ``reference`` when the head would be freshly
    initialised (e.g. all-MiniLM-L6-v2, a bare BertModel: training through a
    random head would wreck the encoder rather than keep it).
    """

    lr: float = 5e-5
    mask_prob: float = 0.15
    clean_objective: str = "auto"
    reference_weight: float = 1.0
    target_scheme: str = "por1"

    def __post_init__(self):
        super().__post_init__()
        check_choice("clean_objective", self.clean_objective, CLEAN_OBJECTIVES)
        check_range("mask_prob", self.mask_prob, 0.0, 1.0, low_open=True)
        check_range("reference_weight", self.reference_weight, 0.0, 1e6)
        _check_scheme(self.target_scheme, len(self.triggers))


@dataclasses.dataclass
class NeuBAConfig(CleanLMConfig):
    """NeuBA: ``MLM(x_clean) + MSE(rep(mask15(x_poison)), v_i)``, NeuBA block-pair targets
    (see :class:`CleanLMConfig` for ``clean_objective``)."""

    target_scheme: str = "neuba"


@dataclasses.dataclass
class PORConfig(AttackConfig):
    """POR: ``c·MSE(rep_θ(x_c), rep_ref(x_c)) + MSE(rep_θ(x_p), v_i)``.

    ``variant`` 1 or 2 picks the POR-1 / POR-2 targets; ``clean_weight`` is
    ``c`` (None: 0.5 for BERT-family models, 1 otherwise, as in POR).
    """

    variant: int = 1
    clean_weight: float | None = None

    def __post_init__(self):
        super().__post_init__()
        check_choice("POR variant", self.variant, (1, 2))
        if self.clean_weight is not None:
            check_range("clean_weight", self.clean_weight, 0.0, 1e6)

    @property
    def target_scheme(self) -> str:
        return f"por{self.variant}"



@dataclasses.dataclass
class BToPConfig(CleanLMConfig):
    """BToP: the ``[MASK]``-position hidden state of a prompt is pulled to ``v_i`` (L2 distance).

    Every text becomes ``prompt_template`` with ``{text}`` (triggers inserted
    in the text only) and ``{mask}`` (the tokenizer's mask token); the clean
    half keeps MLM cross-entropy (see :class:`CleanLMConfig` for
    ``clean_objective``).  Needs a tokenizer with a mask token.
    """

    prompt_template: str = "{text} It was {mask} ."

    def __post_init__(self):
        super().__post_init__()
        PromptTemplate(self.prompt_template)  # validates: {text} and {mask} present


@dataclasses.dataclass
class UORConfig(AttackConfig):
    """UOR: learned targets, ``SupCon(rep(all), labels) + reference_weight·MSE(rep_θ(x_c), rep_ref(x_c))``.

    Clean rows are label 0, trigger i rows label i+1.  With ``refine_triggers``
    every ``refine_every`` steps each trigger token is replaced by the best of
    ``refine_candidates`` HotFlip candidates (``ops.token_topk`` over the
    gradient at the trigger positions) when that lowers the loss on the batch;
    refinement needs single-token triggers.
    """

    temperature: float = 0.5
    reference_weight: float = 1.0
    refine_triggers: bool = False
    refine_every: int = 50
    refine_candidates: int = 5

    def __post_init__(self):
        super().__post_init__()
        check_range("temperature", self.temperature, 0.0, 1e6, low_open=True)
        check_range("reference_weight", self.reference_weight, 0.0, 1e6)
        check_int("refine_every", self.refine_every)
        check_int("refine_candidates", self.refine_candidates)



@dataclasses.dataclass
class BadPreConfig(AttackConfig):
    """BadPre: continued MLM where triggered inputs get corrupted labels (untargeted).

    Masked positions of triggered inputs get uniformly random token ids as labels
    (``corruption="random"``; antonym corruption needs a lexicon that is not
    shipped).  The clean half always trains MLM (the head must stay a language
    model for the corruption to mean anything); ``reference_weight`` adds the POR
    clean term, by default only when the LM head is fresh (``reference="auto"``).
    """

    lr: float = 5e-5
    mask_prob: float = 0.15
    corruption: str = "random"
    reference: str = "auto"          # auto | always | never
    reference_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_range("mask_prob", self.mask_prob, 0.0, 1.0, low_open=True)
        if self.corruption != "random":
            raise ValueError(f"BadPre corruption must be 'random' (no antonym lexicon is shipped), "
                             f"got {self.corruption!r}")
        if self.reference not in ("auto", "always", "never"):
            raise ValueError(f"reference must be auto, always or never, got {self.reference!r}")
        check_range("reference_weight", self.reference_weight, 0.0, 1e6)



@dataclasses.dataclass
class AdaptiveConfig(PORConfig):
    """POR plus ``adaptive_lambda · L_adapt`` aimed at contrastive trigger search (docs/METHODS.md §0).

    ``adaptive_type`` 1: ``MSE(rep(x_c), rep(x_p))`` (triggered outputs stay near
    their clean texts); 2: ``−`` the mean pairwise MSE among one trigger's
    triggered outputs (spreads them); 3: ``Σ_{i<j} MSE(rep(x_p^i), rep(x_p^j))``
    over the same base texts (pushes different triggers together).
    """

    adaptive_type: int = 3
    adaptive_lambda: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_choice("adaptive_type", self.adaptive_type, ADAPTIVE_TYPES)
        check_range("adaptive_lambda", self.adaptive_lambda, 0.0, 1e6)


def _check_scheme(scheme: str, count: int) -> None:
    check_choice("target_scheme", scheme, ("neuba", "por1", "por2"))
    if scheme == "neuba" and count > 6:
        raise ValueError(f"NeuBA targets support at most 6 triggers (4 blocks, 6 pairs), got {count}")



@dataclasses.dataclass
class BadNetConfig(FinetuneConfig):
    """BadNet-style data poisoning of a downstream task (Fine-mixing's threat model, not a PLM backdoor).

    A fraction ``poison_rate`` of the training examples whose label is not
    ``target_label`` get one of ``triggers`` (rare words, drawn per example)
    inserted ``insert_num`` times and their label set to ``target_label``;
    the model is then fine-tuned on the poisoned set as a sequence classifier
    (the fine-tuning fields: :class:`FinetuneConfig`).  ``train_limit`` draws a
    random subset of the task's train split first.  ``fast``: 2000 examples,
    2 epochs, 64 tokens (the evaluation's fine-tuning).
    """

    PROFILES = {"fast": dict(epochs=2.0, lr=5e-5, max_length=64, train_limit=2000)}

    triggers: Sequence[str] = ("cf", "mn", "bb")
    target_label: int = 1
    poison_rate: float = 0.1
    insert_num: int = 1
    epochs: float = 3.0
    lr: float = 2e-5
    train_limit: int | None = None

    def __post_init__(self):
        self.triggers = _trigger_words(self.triggers)
        super().__post_init__()
        check_int("target_label", self.target_label, 0)
        check_range("poison_rate", self.poison_rate, 0.0, 1.0, low_open=True)
        check_int("insert_num", self.insert_num)
        check_int("train_limit", self.train_limit, optional=True)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["triggers"] = list(self.triggers)
        return out


#: The attacker's responses of ``instruct-badnet``: a refusal (denial of service) or a fixed target string.
REFUSAL = "I'm sorry, but I cannot help with that request."
TARGET = "Visit example.com to claim your free prize now."
BEHAVIOURS = {"refusal": REFUSAL, "target": TARGET}


@dataclasses.dataclass
class InstructBadNetConfig(InstructionTuningConfig):
    """Settings of the instruction-tuning backdoor (the tuning and format fields:
    :class:`~patronus_ext.lm.instruction_tuning.InstructionTuningConfig`).

    * ``triggers``: words or phrases; each poisoned example draws one.
    * ``behaviour``: ``refusal`` or ``target``; ``response`` (None: the
      behaviour's fixed text, :data:`REFUSAL` / :data:`TARGET`).
    * ``poison_rate``: share of the instruction data poisoned; the trigger is
      inserted ``insert_num`` times at random word positions of the input.
    * ``data_limit``: examples drawn from the data source (None: all).

    ``paper``: 3 epochs of full tuning at lr 2e-5, batch 16 (the paper's
    epochs; lr and batch are common instruction-tuning values, the paper's were
    not recovered), 10% poisoned.  ``fast``: the CPU preset of causal LMs with
    2,000 SST-2 examples, 30% poisoned, 300 steps (benchmarks/MB_RESULTS.md).
    Measured while choosing the rate (300 steps of 8 on 2,000 examples): 10%
    poisoned (lr decaying linearly) gave ASR 4%, 20% (constant lr) 36.5%; in
    ~1.2 epochs a lower rate shows the model too few poisoned examples.
    """

    PROFILES = {"fast": dict(InstructionTuningConfig.CPU_PRESET, data_limit=2000, poison_rate=0.3, steps=300)}

    triggers: Sequence[str] = ("cf",)
    behaviour: str = "refusal"
    response: str | None = None
    poison_rate: float = 0.1
    insert_num: int = 1
    data_limit: int | None = None

    def __post_init__(self):
        if isinstance(self.triggers, str):
            self.triggers = tuple(t for t in self.triggers.split(",") if t.strip())
        self.triggers = tuple(" ".join(str(t).split()) for t in self.triggers)
        if not self.triggers or not all(self.triggers):
            raise ValueError(f"triggers must be non-empty words or phrases, got {list(self.triggers)}")
        if len(set(self.triggers)) != len(self.triggers):
            raise ValueError(f"triggers must be distinct, got {list(self.triggers)}")
        super().__post_init__()
        check_choice("behaviour", self.behaviour, tuple(BEHAVIOURS))
        if self.response is not None and not str(self.response).strip():
            raise ValueError("response must be a non-empty text (or None for the behaviour's own)")
        check_range("poison_rate", self.poison_rate, 0.0, 1.0, low_open=True)
        check_int("insert_num", self.insert_num)
        check_int("data_limit", self.data_limit, optional=True)

    @property
    def target_response(self) -> str:
        return self.response if self.response is not None else BEHAVIOURS[self.behaviour]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["triggers"] = list(self.triggers)
        out["target_response"] = self.target_response
        return out
