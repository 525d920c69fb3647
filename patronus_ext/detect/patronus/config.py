"""Scan configuration: the paper's defaults and a CPU-friendly ``fast`` profile."""

from __future__ import annotations

import dataclasses

from ...core.profiles import Settings
from ...core.validation import check_int, check_range

#: Verification thresholds of the paper (docs/METHODS.md §1 step 6).  See
#: ``patronus_ext.detect.calibrate`` for re-deriving them on benign models.
DIFF_COS_THRESHOLD = 0.4
POISON_COS_THRESHOLD = 0.9
#: The shift rule's bar, in clean spreads (benchmarks/ADAPTIVE_RESULTS.md: the benign suite's largest
#: shift with a margin; re-derive it with ``patronus calibrate``).
SHIFT_THRESHOLD = 2.0
SHIFT_NULL_FACTOR = 2.5
#: A target whose nearest 5% of clean texts are at most this many clean spreads away lies on the clean data: as
#: close to them as clean texts are to each other on average (benchmarks/ADAPTIVE_RESULTS.md).
NATURAL_TARGET_GAP = 1.0
#: Trained backdoors collapse onto a point their texts sit >= 113x tighter around than the nearest clean texts do;
#: a classifier's class words <= 20.5x (benchmarks/ADAPTIVE_RESULTS.md).
PINPOINT_RATIO = 50.0


@dataclasses.dataclass
class ScanConfig(Settings):
    """Multi-trigger contrastive trigger search (Patronus, docs/METHODS.md §1).

    Search
      num_triggers      K candidate triggers searched in parallel.
      batch_size        B clean texts per gradient step.
      poison_copies     A poisoned copies of the clean batch per step (each sample a random trigger).
      grad_accum        GA gradient steps accumulated before each candidate update.
      update_rounds     candidate updates per fuzz loop.
      fuzz_loops        search restarts; confirmed triggers are excluded from later loops.
      patience          stop after this many loops in a row confirm nothing new (None: run all loops).
      num_candidates    HotFlip candidates per trigger slot and update.
      beam_size         beam width of the slot-by-slot candidate search.
      temperature       SupCon temperature tau.
      shift_loops       after the contrastive loops (patience included), this many more loops whose
                        objective also rewards moving texts far from where they were (0, the default:
                        none, the paper's search).  SupCon alone proposes words that send texts to one
                        place; a word that moves texts far but scatters them (adaptive type 2) can be
                        proposed there.  Off by default: on the adaptive suite one such loop proposed no
                        planted trigger the contrastive loops had missed and cost ~30% of a clean scan
                        (benchmarks/ADAPTIVE_RESULTS.md).
      shift_weight      the shift loops' objective: SupCon minus this weight x the triggered texts'
                        mean ``1 - cos(h(x + t), h(x))`` in units of the clean texts' spread, counted
                        up to 10 spreads.
      collapse_loops    after those, this many more loops whose objective also rewards sending every text
                        to one place wherever it lies (1, the default).  SupCon rewards a word whose
                        triggered texts sit far from the clean ones; a backdoor aimed at a point among the
                        clean texts lowers it barely more than an ordinary word does, and the contrastive
                        loops never propose its triggers (benchmarks/ADAPTIVE_RESULTS.md).
      collapse_weight   the collapse loops' objective: SupCon plus this weight x the mean over triggers of
                        their triggered texts' spread (1 - mean pairwise cosine) in clean spreads, counted up
                        to 2 spreads.
      collapse_rounds   candidate updates per collapse loop (None: update_rounds; fast: 2).  The term ranks
                        collapsing words near the top of HotFlip's list from the first gradient, so fewer
                        rounds find them and keep the fast scan in its time budget.
      insert_num        copies of a trigger inserted into each text.
      dev_batches       dev batches (of ``batch_size``) for accepting an update.
      batched_scoring   score candidate sets from cached per-trigger representations in batched
                        SupCon calls (False: fresh forwards per set, the authors' way; for benchmarks).
    Text
      max_length        tokens per text (longer texts are truncated).
      max_words         words kept per corpus paragraph before tokenising.
      corpus_limit      paragraphs read from the corpus.
    Vocabulary
      word_level        search whole words (multi-token) from a word list instead of single tokens.
      zipf_threshold    keep only rare words: wordfreq Zipf frequency below this; None searches every
                        entry (each loop still starts from rare ones: rarity is the priority).
      max_word_tokens   word level: words with more sub-tokens are skipped.
      word_list_size    word level: size of the frequency-ranked English word list searched.
    Verification
      verify_texts      clean texts each final candidate is verified on.
      prefilter_diff_cos  candidates whose diff_cos on the dev batch exceeds this skip full verification.
      diff_cos_threshold / poison_cos_threshold   trigger iff diff_cos < first and poison_cos > second.
      collapse_spread / collapse_shift   ... or, relative to the model's own clean outputs (None: off),
                        iff the triggered texts' spread (1 - poison_cos) is at most collapse_spread x
                        the clean texts' spread (1 - their mean pairwise cosine) and each text moved
                        (1 - diff_cos) at least collapse_shift x that clean spread: every input sent to
                        one place, far from where it was.  The paper's absolute cosines assume a
                        BERT-base-like output geometry; an attack that keeps triggered outputs near
                        the clean ones (adaptive type 1) or a model whose outputs are all close
                        together defeats them while the collapse stays visible
                        (benchmarks/CPU_RESULTS.md).
      shift_threshold   ... or, wherever the triggered texts went, iff each moved (1 - diff_cos) at least
                        this many clean spreads (None: off): an attack that scatters its triggered
                        outputs (adaptive type 2) sends no input to one place, yet moves every input
                        further than any benign word does.  Set from the benign suite of
                        benchmarks/ADAPTIVE_RESULTS.md; ``patronus calibrate`` re-derives it.
      shift_null_factor the shift rule also needs a move at least this many times as far as this model's
                        ordinary words move texts (the 95th percentile over 32 random searchable words,
                        measured only when a candidate reaches shift_threshold; None: no such check): a
                        model whose clean outputs sit close together moves texts far for any word.
      natural_target_gap  the paper and collapse rules also need the triggered texts' target (their mean
                        direction) off the clean data: more than this many clean spreads (1 - cos) from the
                        nearest 5% of clean texts (None: no such check).  A task-fine-tuned classifier sends
                        every text carrying a strong class word (``worthless``) to its class point, where
                        that class's clean texts already are; a transferable backdoor's target is a point no
                        clean input reaches.  The shift rule claims no target and is unaffected.
      pinpoint_ratio    ... or, wherever the target lies (on the clean data too), iff the triggered texts
                        collapsed (spread at most collapse_spread x the clean spread) onto a point they sit at
                        least this many times tighter around than its nearest 5% of clean texts do (None:
                        off): a backdoor aimed at a point on the clean data moves texts about one clean
                        spread and passes no other rule, yet a trained backdoor collapses onto a pinpoint
                        where a class point is as loose as its class.
    """

    #: ``paper``: the paper's settings (the authors' trigger-search config).  ``fast``: tuned for a 2-core CPU
    #: and a MiniLM-sized model: short texts, smaller batches, fewer candidate evaluations, stop once two
    #: loops in a row confirm nothing new.
    PROFILES = {"fast": dict(batch_size=8, poison_copies=4, grad_accum=1, update_rounds=4, fuzz_loops=6, patience=2,
                             collapse_rounds=2, num_candidates=4, beam_size=2, dev_batches=1, max_length=32,
                             max_words=24, corpus_limit=400, verify_texts=48)}

    num_triggers: int = 8
    batch_size: int = 16
    poison_copies: int = 8
    grad_accum: int = 2
    update_rounds: int = 3
    fuzz_loops: int = 5
    patience: int | None = None
    num_candidates: int = 5
    beam_size: int = 3
    temperature: float = 0.5
    shift_loops: int = 0
    shift_weight: float = 1.0
    collapse_loops: int = 1
    collapse_weight: float = 1.0
    collapse_rounds: int | None = None
    insert_num: int = 3
    dev_batches: int = 6
    batched_scoring: bool = True
    max_length: int = 128
    max_words: int | None = None
    corpus_limit: int = 2000
    word_level: bool = False
    zipf_threshold: float | None = 4.0
    max_word_tokens: int = 4
    word_list_size: int = 100_000
    verify_texts: int = 200
    prefilter_diff_cos: float = 0.8
    diff_cos_threshold: float = DIFF_COS_THRESHOLD
    poison_cos_threshold: float = POISON_COS_THRESHOLD
    collapse_spread: float | None = 0.1
    collapse_shift: float = 2.0
    shift_threshold: float | None = SHIFT_THRESHOLD
    shift_null_factor: float | None = SHIFT_NULL_FACTOR
    natural_target_gap: float | None = NATURAL_TARGET_GAP
    pinpoint_ratio: float | None = PINPOINT_RATIO
    seed: int = 0

    def __post_init__(self):
        positive = ("num_triggers", "batch_size", "poison_copies", "grad_accum", "update_rounds", "fuzz_loops",
                    "num_candidates", "beam_size", "insert_num", "dev_batches", "max_length", "corpus_limit",
                    "max_word_tokens", "word_list_size")
        for name in positive:
            check_int(f"ScanConfig.{name}", getattr(self, name))
        check_int("ScanConfig.verify_texts", self.verify_texts, 2)  # poison_cos compares pairs
        check_int("ScanConfig.patience", self.patience, optional=True)
        check_int("ScanConfig.shift_loops", self.shift_loops, 0)
        check_int("ScanConfig.collapse_loops", self.collapse_loops, 0)
        check_int("ScanConfig.collapse_rounds", self.collapse_rounds, optional=True)
        check_int("ScanConfig.max_words", self.max_words, optional=True)
        check_range("ScanConfig.temperature", self.temperature, 0.0, float("inf"), low_open=True, high_open=True)
        check_range("ScanConfig.shift_weight", self.shift_weight, 0.0, float("inf"), high_open=True)
        check_range("ScanConfig.collapse_weight", self.collapse_weight, 0.0, float("inf"), high_open=True)
        check_range("ScanConfig.zipf_threshold", self.zipf_threshold, 0.0, 10.0, optional=True)
        for name in ("diff_cos_threshold", "poison_cos_threshold", "prefilter_diff_cos"):
            check_range(f"ScanConfig.{name} (a cosine)", getattr(self, name), -1.0, 1.0)
        check_range("ScanConfig.collapse_spread", self.collapse_spread, 0.0, 1.0, low_open=True, optional=True)
        check_range("ScanConfig.collapse_shift", self.collapse_shift, 0.0, float("inf"), high_open=True)
        for name in ("shift_threshold", "shift_null_factor", "natural_target_gap", "pinpoint_ratio"):
            check_range(f"ScanConfig.{name}", getattr(self, name), 0.0, float("inf"), low_open=True,
                        high_open=True, optional=True)
