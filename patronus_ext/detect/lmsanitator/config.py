"""Settings of the LMSanitator detector (docs/METHODS.md §3), with the authors' (``paper``) and a CPU (``fast``)
profile.

Where the numbers come from
---------------------------
* ``paper``: the authors' TOKEN-position script (meng-wenlong/LMSanitator): 7 soft tokens,
  batch 32, 4 epochs over 2000 WikiText lines of at most 128 tokens, Adam at lr 2e-4
  (their BERT-family scripts use 5e-5), lr x100 until the trigger's largest gradient first
  exceeds 5e-3, a seed abandoned when no vector appeared by the end of epoch 1, 30 seeds in
  detection mode, init ``T[i] = E[(70 s + 10 i) mod V]``.
* Entropy bound: ``Ent(o)`` is the mean over hidden units of the entropy of a softmax over
  the batch axis, at most ``ln B`` (all outputs identical).  The authors' constant -3.446
  is ``-(ln 32 - 0.0197)``; here the bound is *derived*, ``ln B - entropy_slack``, and the
  slack (0.02 nats) is the setting.  For nearly identical outputs ``ln B - Ent ~ Var_b/2``
  (per-unit variance across the batch), so the slack bounds the spread of the triggered
  outputs (std ~ 0.2) whatever the batch size.
* ``entropy_relative`` (``fast``: 0.05; ``paper``: off): an absolute slack does not transfer
  across models.  all-MiniLM-L6-v2's *clean* outputs already sit at a deficit of 0.023 (B=16),
  at the authors' slack, and a soft trigger on the clean model reached 0.003 (accepted under
  0.02: a false positive), while a planted POR trigger's real triggered outputs sit at
  1e-4 / 4e-5 (benchmarks/LMSANITATOR_RESULTS.md).  With ``entropy_relative`` the slack is
  also at most that fraction of the clean outputs' own deficit ``ln B - Ent(c)``: the
  triggered outputs must be ~20x less spread than the clean ones.
* ``distance_threshold`` (MSE): a vector "appeared" when the triggered outputs are at least
  this far (mean MSE) from the clean ones, and a new PV is kept only at least this far from
  every stored PV.  The authors use 0.1 (RoBERTa) to 0.2 (BERT) -- 0.6 in some scripts: a
  constant that depends on the model's output scale.
* ``distance_relative`` (``fast``: 3.0; ``paper``: off) calibrates it on the model: before any
  seed, ``distance_draws`` triggers of ``trigger_len`` *real* random vocabulary tokens are
  inserted the same way, and the threshold becomes ``distance_relative`` x the largest of their
  mean MSEs to the clean outputs (``distance_threshold`` is then unused): a vector has appeared
  when a soft trigger moves the outputs several times farther than arbitrary real tokens do.
  The calibration and the threshold used are in the report (``model.distance``).
* ``seed_batch`` (``fast``: 4; ``paper``: 1, the authors' one seed after another): seeds whose soft
  triggers are optimised together as one ``[S, t, d]`` batch -- one forward and backward pass over
  ``S x B`` rows per step, Adam per seed (each its own lr boost and give-up).  A seed's run does not
  depend on its group (the text order is per epoch, not per seed); only the repulsion term sees
  fewer stored PVs (those of earlier groups).  On MiniLM, 1 thread, 4 seeds together cost 0.37 s per
  seed-step against 0.65 s alone (benchmarks/LMSANITATOR_RESULTS.md).
* ``dedupe_agreement`` (0.8): PVs are judged group by group, the most collapsed (highest entropy)
  first; besides the authors' uniqueness rule
  (MSE to every kept PV at least the distance threshold), one whose signs agree with a kept PV's on
  more than this share of hidden units is a duplicate: 0.8 is the output monitor's own sign rule,
  so a bank holding either vector flags the other's outputs anyway.
* ``dedupe_distance`` (``paper``: on, ``fast``: off): the authors' uniqueness rule by MSE.  The
  calibrated threshold measures distance *from clean*; POR's triggered representations of different
  triggers lie closer to each other than that (MSE 0.26-0.29 against a threshold of 0.38 for two
  vectors at cosine 0.91 and 0.99 to two different triggers), so the rule dropped distinct attack
  vectors; ``fast`` de-duplicates by sign agreement alone.
* ``repel_weight`` 2.0 and ``repel_epochs`` 2 with ``epochs`` 4 (``fast``; ``paper``: 0.5, all
  epochs): explore, then converge.  With 0.5 all 8 seeds of a POR plant fell into the same basin
  (cosine 0.91-0.96 to one trigger, the later group too, although repelled); with 2.0 throughout
  they left it but ended between basins (entropy just below the bound, cosine 0.78-0.84).
  Repelling for 2 epochs and then converging freely for 2 put seeds into other triggers' basins
  (cosine 0.99) on POR and into single-trigger basins (0.99) on NeuBA, where the 3-epoch fast
  profile's vector had sat between two targets (cosine 0.72 ~ 1/sqrt 2).
* ``group_repel`` (on): within a group, seed ``a``'s repulsion term also sees the current mean
  outputs of the seeds before it (as constants, like stored PVs), the batched counterpart of the
  authors' sequential seeds, each repelled from the PVs stored before it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ...core.profiles import Settings
from ...core.validation import check_choice, check_int, check_range

MODES = ("detection", "exhaustive")


@dataclasses.dataclass(frozen=True)
class LMSanitatorConfig(Settings):
    """One LMSanitator run.  Every field is documented in the module doc."""

    #: ``paper``: the authors' settings (TOKEN script, RoBERTa lr; BERT-family scripts use lr 5e-5 and distance
    #: 0.2).  ``fast``: a 2-core CPU and a MiniLM-sized model: 256 lines of <= 48 tokens, batch 16,
    #: 8 seeds in groups of 4, a larger base lr (fewer steps to move the trigger), 4 epochs with repulsion in
    #: the first 2; see benchmarks/LMSANITATOR_RESULTS.md.
    PROFILES = {"fast": dict(batch_size=16, corpus_limit=256, max_length=48, max_words=40, lr=2e-3,
                             seeds=8, seed_batch=4, entropy_relative=0.05, distance_relative=3.0,
                             epochs=4, repel_weight=2.0, repel_epochs=2, dedupe_distance=False)}

    trigger_len: int = 7              # soft tokens in the trigger T [trigger_len, d]
    batch_size: int = 32              # B; also sets the entropy bound ln B - entropy_slack
    epochs: int = 4
    corpus_limit: int = 2000          # clean lines used for the inversion
    max_length: int = 128             # tokens per triggered text (trigger included)
    max_words: int | None = None      # words kept per line before tokenising (None: all)
    max_insert: int = 32              # the trigger goes after m content tokens, m uniform in [1, min(max_insert, n)]
    lr: float = 2e-4
    lr_boost: float = 100.0           # lr multiplier until the trigger's max |grad| first exceeds converge_grad
    converge_grad: float = 5e-3
    diversity_weight: float = 1.0     # weight of -Ent(o)
    repel_weight: float = 0.5         # weight of -MSE(o, p*), p* the nearest stored PV
    group_repel: bool = True          # ... or the current mean output of an earlier seed of the same group
    repel_epochs: int | None = None   # repel during the first this many epochs only (None: all), then converge
    give_up_epoch: int = 1            # abandon a seed when no vector appeared by the end of this epoch (0-based)
    distance_threshold: float = 0.1   # MSE: "a vector appeared" and "far from the stored PVs"
    distance_relative: float | None = None  # set: threshold = this x the MSE random real-token triggers cause
    distance_draws: int = 8           # random real-token triggers drawn for that calibration
    entropy_slack: float = 0.02       # accept iff Ent >= ln B - slack, slack <= entropy_slack ...
    entropy_relative: float | None = None  # ... and <= entropy_relative x (ln B - Ent(clean outputs)) when set
    range_factor: float = 1.2         # accept iff T lies within range_factor x [min E, max E]
    seeds: int = 30                   # seeds tried (detection mode stops after the first group with an accepted PV)
    seed_batch: int = 1               # seeds optimised together in one [S, t, d] batch (one forward for all)
    dedupe_agreement: float = 0.8     # a PV whose signs agree with a kept PV's on more than this share is a duplicate
    dedupe_distance: bool = True      # also the authors' rule: a PV within distance_threshold (MSE) of a kept one
    first_seed: int = 1
    mode: str = "detection"           # detection | exhaustive
    seed: int = 0                     # shuffling and insertion positions

    def __post_init__(self):
        for name in ("trigger_len", "batch_size", "epochs", "corpus_limit", "max_length", "max_insert", "seeds",
                     "seed_batch"):
            check_int(f"LMSanitatorConfig.{name}", getattr(self, name))
        check_int("LMSanitatorConfig.batch_size", self.batch_size, 2)  # an entropy over the batch needs 2 rows
        check_int("LMSanitatorConfig.give_up_epoch", self.give_up_epoch, 0)
        check_int("LMSanitatorConfig.first_seed", self.first_seed, 0)
        check_int("LMSanitatorConfig.seed", self.seed, 0)
        check_int("LMSanitatorConfig.max_words", self.max_words, optional=True)
        check_int("LMSanitatorConfig.repel_epochs", self.repel_epochs, 0, optional=True)
        for name in ("lr", "converge_grad", "distance_threshold"):
            check_range(f"LMSanitatorConfig.{name}", getattr(self, name), 0.0, math.inf, low_open=True, high_open=True)
        check_range("LMSanitatorConfig.lr_boost", self.lr_boost, 1.0, math.inf, high_open=True)
        for name in ("diversity_weight", "repel_weight", "entropy_slack"):
            check_range(f"LMSanitatorConfig.{name}", getattr(self, name), 0.0, math.inf, high_open=True)
        check_range("LMSanitatorConfig.entropy_relative", self.entropy_relative, 0.0, 1.0, low_open=True,
                    optional=True)
        check_range("LMSanitatorConfig.distance_relative", self.distance_relative, 0.0, math.inf, low_open=True,
                    high_open=True, optional=True)
        check_int("LMSanitatorConfig.distance_draws", self.distance_draws)
        check_range("LMSanitatorConfig.range_factor", self.range_factor, 0.0, math.inf, low_open=True, high_open=True)
        check_range("LMSanitatorConfig.dedupe_agreement", self.dedupe_agreement, 0.5, 1.0)
        check_choice("LMSanitatorConfig.mode", self.mode, MODES)
        if self.max_length <= self.trigger_len + 2:
            raise ValueError(f"LMSanitatorConfig.max_length ({self.max_length}) leaves no room for text beside "
                             f"the {self.trigger_len}-token trigger")

    def slack(self, clean_entropy: float | None = None, batch: int | None = None) -> float:
        """``entropy_slack``, or less: ``entropy_relative x (ln B - clean_entropy)`` when both are given."""
        if self.entropy_relative is None or clean_entropy is None or not math.isfinite(clean_entropy):
            return self.entropy_slack
        clean_deficit = max(0.0, math.log(batch or self.batch_size) - clean_entropy)
        return min(self.entropy_slack, self.entropy_relative * clean_deficit)

    def entropy_bound(self, batch: int | None = None, clean_entropy: float | None = None) -> float:
        """Smallest accepted ``Ent(o)``: ``ln B - slack`` (the authors' -3.446 ~ -(ln 32 - 0.02))."""
        return math.log(batch or self.batch_size) - self.slack(clean_entropy, batch)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["entropy_bound"] = self.entropy_bound()
        return out
