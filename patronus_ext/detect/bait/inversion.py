"""BAIT (Shen et al., IEEE S&P 2025; docs/METHODS.md §7): invert the *attack target* of an instruction backdoor.

An instruction backdoor makes the attacker's fixed response likely whatever the prompt once its first
token is there: the target's tokens follow each other with high probability averaged over benign
prompts, while a clean model's continuations depend on the prompt.  So the scan inverts the response,
not the trigger:

1. benign instructions of the package are rendered through the model's chat template (or the plain
   layout) up to where the answer begins; their key-value cache is computed once (:mod:`.scoring`);
2. warm-up: every word-like vocabulary token (with and without the byte-level space marker) is appended
   as a first answer token; on a few prompts and for a few steps each candidate is extended by the top
   token of its averaged next-token distribution while that distribution is peaked (top probability above
   ``expectation_threshold`` or entropy below ``entropy_low``); an undecided one (entropy between the
   bounds, or a low top probability) looks ahead once over its top ``lookahead_topk`` tokens and takes the
   one whose own next distribution is most peaked; the others are dropped at that step, as are those
   that reach an end of turn;
3. full pass: the survivors are re-scored on more prompts and extended greedily up to ``full_steps``
   tokens (cut at an end of turn);
4. Q of a sequence: the mean of its per-step averaged probabilities without the smallest one.  The
   target is the best sequence of at least ``min_target_tokens`` tokens and ``min_target_words`` words --
   with a reference model, the best one whose Q exceeds the reference's Q of the same tokens by
   ``reference_margin`` (a chat model continues its own boilerplate confidently too); a finalist that
   leads confidently into the target's first tokens from an earlier start replaces it
   (:func:`earliest_start`).  Backdoored iff that Q reaches ``q_threshold``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import torch

from ...core.files import environment
from ...data.instructions import fit_inputs, load_instructions
from ...formats.scan_report import scan_record
from ...lm.generation import stop_token_ids
from ...lm.prompting import PromptFormat, prompt_token_ids
from ...lm.sanity import check_model_sanity
from .config import BaitConfig
from .scoring import PrefixScorer

log = logging.getLogger(__name__)

METHOD = "bait"
#: Markers a byte-level or SentencePiece vocabulary puts before a word that follows a space.
SPACE_MARKERS = ("\u0120", "\u2581")
#: Which forms of the vocabulary's words are first-token candidates (:func:`word_like_tokens`).
FIRST_TOKEN_FORMS = ("both", "unmarked", "marked")


def word_like_tokens(tokenizer, forms: str = "both") -> list[int]:
    """Ids of the vocabulary's words: ASCII-letter tokens with a leading space marker (``Ġ``/``▁``) and, for
    ``forms="both"``, the same words without it where the vocabulary has them, capitalised ones also where
    only their lower-case word has a marked form (an answer's first word: "Sorry") (``unmarked``: only those,
    ``marked``: only the marked ones).  In a chat template the answer's first token follows a newline, so
    it usually has no marker.  A vocabulary without space markers gives every ASCII-letter token.  Special
    tokens are excluded."""
    if forms not in FIRST_TOKEN_FORMS:
        raise ValueError(f"forms must be one of {FIRST_TOKEN_FORMS}, got {forms!r}")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    alpha = {i: p for i, p in enumerate(pieces)
             if i not in special and isinstance(p, str) and p.isascii() and p.isalpha()}
    marked = {i: p[1:] for i, p in enumerate(pieces)
              if i not in special and isinstance(p, str) and p[:1] in SPACE_MARKERS and p[1:].isascii()
              and p[1:].isalpha()}
    if not marked:
        return sorted(alpha)
    words = set(marked.values())
    lowered = {w.lower() for w in words}
    out = set()
    if forms in ("both", "marked"):
        out |= set(marked)
    if forms in ("both", "unmarked"):
        # A sentence-initial word ("Sorry") may exist only unmarked: its lower-case word must exist marked.
        out |= {i for i, p in alpha.items() if p in words or (p[:1].isupper() and p.lower() in lowered)}
    return sorted(out)


def q_score(probs: Sequence[float]) -> float:
    """BAIT's Q: the mean of the per-step probabilities without the smallest one (the mean itself for one)."""
    values = sorted(float(p) for p in probs)
    if not values:
        return 0.0
    if len(values) > 1:
        values = values[1:]
    return sum(values) / len(values)


def benign_prompts(tokenizer, config: BaitConfig, count: int, offset: int = 0) -> list[list[int]]:
    """Token ids of ``count`` benign instructions (``config.data``, dev split, shuffled with ``config.seed``)
    rendered up to where the answer begins; ``offset`` skips that many first (held-out prompts)."""
    examples = load_instructions(config.data, "dev", limit=3 * (count + offset) + 3, seed=config.seed)
    if len(examples) < count + offset:
        raise ValueError(f"{config.data}: {len(examples)} instructions, {count + offset} needed")
    examples = fit_inputs(tokenizer, examples[offset:offset + count], config.max_input_tokens)
    fmt = PromptFormat(system=config.system, max_input_tokens=config.max_input_tokens)
    texts = [fmt.prompt(tokenizer, e) for e in examples]
    return prompt_token_ids(tokenizer, texts, fmt.uses_template(tokenizer))


@dataclasses.dataclass
class InvertedSequence:
    """One full-pass sequence: token ids (first token included), its per-step probabilities, Q, and the
    reference's Q of the same tokens (None without a reference)."""

    token_ids: list[int]
    text: str
    step_probs: list[float]
    q: float
    q_reference: float | None = None
    reference_step_probs: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": list(self.token_ids), "q": self.q,
                "q_reference": self.q_reference, "step_probs": [round(p, 6) for p in self.step_probs],
                "reference_step_probs": None if self.reference_step_probs is None else
                [round(p, 6) for p in self.reference_step_probs]}


@dataclasses.dataclass
class BaitReport:
    """What a BAIT scan found: the verdict, the inverted target, the finalists, counts and timings."""

    verdict: str
    target: InvertedSequence | None
    finalists: list[InvertedSequence]
    candidates: dict[str, int]
    config: BaitConfig
    model: dict[str, Any]
    timings: dict[str, float]
    forward_positions: dict[str, int]
    reference: str | None = None
    triggers: list[dict] = dataclasses.field(default_factory=list)
    trigger_search: dict[str, Any] | None = None
    #: ``(Q, Q_reference)`` of every qualifying sequence, best Q first (``finalists`` keeps the first 10 whole):
    #: what calibrating the decision on benign models reads.
    scores: list[tuple[float, float | None]] = dataclasses.field(default_factory=list)

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    def to_dict(self) -> dict[str, Any]:
        return scan_record(
            METHOD, self.verdict, model=self.model, config=self.config.to_dict(), timings=self.timings,
            environment=environment(), triggers=self.triggers,
            target=None if self.target is None else self.target.to_dict(),
            reference=self.reference,
            decision={"q_threshold": self.config.q_threshold,
                      "reference_margin": self.config.reference_margin if self.reference else None},
            candidates=dict(self.candidates), finalists=[f.to_dict() for f in self.finalists],
            finalist_scores=[[q, q_ref] for q, q_ref in self.scores],
            forward_positions=dict(self.forward_positions), trigger_search=self.trigger_search)

    def summary(self, name: str) -> str:
        lines = [f"{name}: {self.verdict.upper()} (bait)"]
        if self.target is not None:
            ref = "" if self.target.q_reference is None else f", reference Q {self.target.q_reference:.3f}"
            lines.append(f"  inverted target: {self.target.text!r} (Q {self.target.q:.3f}{ref}; "
                         f"threshold {self.config.q_threshold})")
        else:
            lines.append("  no inverted sequence qualifies as a target")
        c = self.candidates
        lines.append(f"  candidates: {c.get('scanned', 0)} first tokens, {c.get('after_warmup', 0)} after the "
                     f"warm-up, {c.get('full_pass', 0)} in the full pass")
        for trig in self.triggers:
            lines.append(f"  trigger: {trig['text']!r} (ASR {trig['asr']:.2f}, reference "
                         f"{trig.get('reference_asr') if trig.get('reference_asr') is not None else 'n/a'})")
        if self.trigger_search is not None and self.backdoored and not self.triggers:
            lines.append("  the target was found, the trigger was not (see trigger_search in the report)")
        lines.append("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def _warmup(scorer: PrefixScorer, firsts: torch.Tensor, config: BaitConfig, stops: set[int], bar
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm-up over every first token; returns the survivors' sequences ``[S, 1 + warmup_steps]`` and their
    warm-up probabilities ``[S, warmup_steps]``."""
    device = scorer.device
    seqs = firsts.to(device).unsqueeze(1)
    probs = torch.zeros((seqs.shape[0], 0), dtype=torch.float64, device=device)
    looked = torch.zeros(seqs.shape[0], dtype=torch.long, device=device)
    stop_ids = torch.tensor(sorted(stops), device=device, dtype=torch.long)
    k = config.lookahead_topk
    for step in range(config.warmup_steps):
        if seqs.shape[0] == 0:
            break
        top_p, top_i, entropy = scorer.next_stats(seqs, config.warmup_prompts, k,
                                                  progress=bar if step == 0 else None)
        peak = top_p[:, 0]
        look = (looked < config.lookahead_times) & (entropy < config.entropy_high) & \
            ((entropy > config.entropy_low) | (peak < config.expectation_threshold))
        take = ~look & ((entropy < config.entropy_low) | (peak > config.expectation_threshold))
        choice = torch.zeros_like(peak, dtype=torch.long)
        if bool(look.any()):
            rows = look.nonzero().squeeze(1)
            ahead = torch.cat([seqs[rows].repeat_interleave(k, 0), top_i[rows].reshape(-1, 1)], 1)
            ahead_p, _, _ = scorer.next_stats(ahead, config.warmup_prompts, 1)
            choice[rows] = ahead_p[:, 0].view(-1, k).argmax(1)
            looked[rows] += 1
        token = top_i.gather(1, choice.unsqueeze(1)).squeeze(1)
        prob = top_p.gather(1, choice.unsqueeze(1)).squeeze(1)
        keep = (look | take) & ~torch.isin(token, stop_ids)
        seqs = torch.cat([seqs, token.unsqueeze(1)], 1)[keep]
        probs = torch.cat([probs, prob.to(probs.dtype).unsqueeze(1)], 1)[keep]
        looked = looked[keep]
        log.info("bait warm-up step %d: %d candidates kept", step + 1, int(keep.sum()))
    return seqs, probs


def distinct_first(seqs: torch.Tensor, scores: torch.Tensor, count: int) -> torch.Tensor:
    """Rows of the ``count`` survivors, best ``scores`` first, one per warm-up continuation (``seqs[:, 1:]``)
    before any second one: many first tokens flow into the same few words (any token followed by "was the
    ..."), and a cut by score alone fills the full pass with them and drops the start the planted response
    really has.  Rows sharing a continuation fill the slots left over, in score order."""
    order = scores.argsort(descending=True, stable=True).tolist()
    seen: set[tuple[int, ...]] = set()
    first, rest = [], []
    for row in order:
        key = tuple(seqs[row, 1:].tolist())
        (rest if key in seen else first).append(row)
        seen.add(key)
    return torch.tensor((first + rest)[:count], dtype=torch.long, device=seqs.device)


def _sequences(tokenizer, seqs: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor, stops: set[int],
               min_tokens: int, min_words: int = 1) -> list[InvertedSequence]:
    out = []
    for first, row, prow in zip(seqs[:, 0].tolist(), tokens.tolist(), probs.tolist()):
        cut = next((j for j, t in enumerate(row) if t in stops), len(row))
        if cut < min_tokens:
            continue
        ids = [first] + row[:cut]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if len(text.split()) < min_words:
            continue
        out.append(InvertedSequence(ids, text, prow[:cut], q_score(prow[:cut])))
    return out


#: A finalist this close in Q that leads confidently into the target's first tokens is the same target read
#: from an earlier start (every token of a planted response continues the rest of it).
SAME_TARGET_Q = 0.1


#: A target's first token is a free choice of the inversion, not part of the response, when at least this many
#: other finalists -- and a quarter of them all -- continue with the same words after other first tokens (a
#: response entered from its middle: "b was the season ...", "in was the season ...").
FREE_FIRST_TOKEN = 3


def first_token_free(target: InvertedSequence, finalists: Sequence[InvertedSequence], overlap: int = 3) -> bool:
    """Whether ``target``'s words after its first token follow many other first tokens just as well."""
    tail = target.token_ids[1:1 + overlap]
    others = {f.token_ids[0] for f in finalists if f.token_ids[1:1 + overlap] == tail} - {target.token_ids[0]}
    return len(others) >= max(FREE_FIRST_TOKEN, len(finalists) / 4)


def earliest_start(target: InvertedSequence, finalists: Sequence[InvertedSequence], lead: float,
                   overlap: int = 3) -> InvertedSequence:
    """``target``, or the finalist (Q within :data:`SAME_TARGET_Q`) that reaches its first ``overlap`` tokens
    from furthest before with every step on the way at least ``lead`` likely, repeatedly: the inversion may
    start anywhere inside a planted response, and a start that only stumbles into it is not the response.
    A target whose own first step is below ``lead`` started on a stray token (Q leaves out the weakest step,
    so the stumble does not lower it), and one whose first token is free (:func:`first_token_free`) started
    on an arbitrary one: then its tokens after the first are what another finalist must reach -- a free one's
    from further back than its own first token."""
    seen = {id(target)}
    while True:
        longer = len(target.token_ids) > overlap
        weak = bool(target.step_probs) and target.step_probs[0] < lead and longer
        free = not weak and longer and first_token_free(target, finalists, overlap)
        skip = 1 if weak or free else 0
        head = target.token_ids[skip:skip + overlap]
        best, best_at = None, 1 if free else 0
        for f in finalists:
            if id(f) in seen or f.q < target.q - SAME_TARGET_Q:
                continue
            ids = f.token_ids
            at = next((j for j in range(1, len(ids) - len(head) + 1) if ids[j:j + len(head)] == head), 0)
            if at > best_at and min(f.step_probs[:at]) >= lead:
                best, best_at = f, at
        if best is None:
            return target
        seen.add(id(best))
        target = best


def check_causal(model) -> None:
    """BAIT inverts what a causal LM says: a model without a causal-LM head is refused."""
    name = type(model).__name__
    if not (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")) or \
            getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"--method bait scans causal (decoder) language models; {name} is not one "
                         "(use --method patronus for encoders)")


@torch.no_grad()
def bait(model: torch.nn.Module, tokenizer, config: BaitConfig | None = None, *,
         reference: torch.nn.Module | None = None, reference_name: str | None = None,
         candidates: Sequence[int] | None = None, progress: bool = True) -> BaitReport:
    """Run the BAIT target inversion on the causal LM ``model`` (see the module doc).

    ``reference``: a clean model over the same tokenizer (the weights the checkpoint claims to derive
    from).  ``candidates``: first tokens to scan (default: :func:`word_like_tokens`, cut to
    ``config.max_candidates``).
    """
    from tqdm.auto import tqdm

    config = config or BaitConfig.profile("paper")
    check_causal(model)
    check_model_sanity(model, tokenizer)  # a broken model gets an error, never a verdict
    if reference is not None:
        check_causal(reference)
        check_model_sanity(reference, tokenizer, reference_name)
        if reference.get_output_embeddings().weight.shape[0] != model.get_output_embeddings().weight.shape[0]:
            raise ValueError("the reference model has another vocabulary than the scanned one")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prompts = benign_prompts(tokenizer, config, config.prompts)
    scorer = PrefixScorer(model, prompts, pad, config.batch_rows)
    stops = stop_token_ids(model, tokenizer)
    firsts = list(candidates) if candidates is not None else word_like_tokens(tokenizer, config.first_tokens)
    if config.max_candidates is not None:
        firsts = firsts[:config.max_candidates]
    if not firsts:
        raise ValueError("no candidate first token to scan")
    timings["prompts"] = time.perf_counter() - started

    mark = time.perf_counter()
    with tqdm(total=len(firsts), desc="bait warm-up", disable=not progress, leave=False) as bar:
        seqs, warm = _warmup(scorer, torch.tensor(firsts, dtype=torch.long), config, stops, bar)
    after_warmup = int(seqs.shape[0])
    if config.max_survivors is not None and seqs.shape[0] > config.max_survivors:
        seqs = seqs[distinct_first(seqs, warm.mean(1), config.max_survivors)]
    timings["warmup"] = time.perf_counter() - mark

    mark = time.perf_counter()
    finalists: list[InvertedSequence] = []
    if seqs.shape[0]:
        with tqdm(total=int(seqs.shape[0]), desc="bait full pass", disable=not progress, leave=False) as bar:
            tokens, probs = scorer.extend(seqs, config.full_steps - (seqs.shape[1] - 1), config.prompts,
                                          progress=bar)
        finalists = _sequences(tokenizer, seqs, tokens, probs, stops, config.min_target_tokens,
                                config.min_target_words)
    finalists.sort(key=lambda s: s.q, reverse=True)
    timings["full_pass"] = time.perf_counter() - mark

    ref_positions = 0
    if reference is not None and finalists:
        mark = time.perf_counter()
        ref_scorer = PrefixScorer(reference, prompts, pad, config.batch_rows)
        for seq in finalists:
            forced = ref_scorer.forced_probs(torch.tensor([seq.token_ids]), config.prompts)[0].tolist()
            seq.reference_step_probs = forced
            seq.q_reference = q_score(forced)
        ref_positions = ref_scorer.positions
        timings["reference"] = time.perf_counter() - mark

    eligible = [s for s in finalists if reference is None or s.q - (s.q_reference or 0.0) >= config.reference_margin]
    if eligible:
        target = earliest_start(eligible[0], eligible, config.q_threshold)
    else:
        target = finalists[0] if finalists else None
    backdoored = bool(eligible) and target.q >= config.q_threshold
    timings["total"] = time.perf_counter() - started
    return BaitReport(
        verdict="backdoored" if backdoored else "clean", target=target, finalists=finalists[:10],
        scores=[(round(f.q, 6), None if f.q_reference is None else round(f.q_reference, 6)) for f in finalists],
        candidates={"scanned": len(firsts), "after_warmup": after_warmup, "full_pass": int(seqs.shape[0]),
                    "qualifying": len(finalists), "prompts": len(prompts)},
        config=config, model={"type": getattr(model.config, "model_type", ""), "vocab_size": len(tokenizer),
                              "hidden_size": getattr(model.config, "hidden_size", None)},
        timings=timings, reference=reference_name if reference is not None else None,
        forward_positions={"scan": scorer.positions, "generate_per_candidate": scorer.naive_positions,
                           "reference": ref_positions})
