"""Batched greedy generation for causal LMs (left padding, prompts sorted by length, key-value cache),
stopping at the end-of-turn/EOS token or after ``max_new_tokens``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..core.validation import check_int
from .adapter import accepts_argument, position_ids
from .prompting import left_pad, prompt_token_ids


def stop_token_ids(model: nn.Module, tokenizer) -> set[int]:
    """EOS ids of the tokenizer and of the model's generation config (chat models end turns with them)."""
    ids = {tokenizer.eos_token_id}
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {int(i) for i in ids if i is not None}


@torch.no_grad()
def greedy_generate(model: nn.Module, tokenizer, prompts: Sequence[str], *, templated: bool,
                    max_new_tokens: int = 10, batch_size: int = 16, progress: bool = False,
                    desc: str = "generate") -> list[str]:
    """Greedy answers to ``prompts`` (texts from :meth:`PromptFormat.prompt`), decoded without special tokens.

    ``templated``: the prompts come from a chat template (which writes its own
    special tokens).  Batched with left padding and a key-value cache; a row
    stops at a stop token (:func:`stop_token_ids`).
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        return []
    check_int("max_new_tokens", max_new_tokens)
    rows = prompt_token_ids(tokenizer, prompts, templated)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = torch.tensor(sorted(stop_token_ids(model, tokenizer)), device=device)
    takes_keep = accepts_argument(model, "logits_to_keep")
    # transformers 5 renamed the key-value cache argument and output ``past_key_values`` -> ``cache``
    cache_name = "cache" if accepts_argument(model, "cache") else "past_key_values"
    answers: list[str] = [""] * len(rows)
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([rows[i] for i in chunk], pad)
        ids, mask = ids.to(device), mask.to(device)
        positions = position_ids(mask)
        extra = {"logits_to_keep": 1} if takes_keep else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        token = out.logits[:, -1].argmax(-1)
        done = torch.isin(token, stops)
        generated = [token]
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions,
                        use_cache=True, **{cache_name: getattr(out, cache_name)}, **extra)
            token = torch.where(done, torch.full_like(token, pad), out.logits[:, -1].argmax(-1))
            done |= torch.isin(token, stops)
            generated.append(token)
        tokens = torch.stack(generated, 1).tolist()
        stop_set = set(stops.tolist())
        for row, i in zip(tokens, chunk):
            cut = next((j for j, t in enumerate(row) if t in stop_set), len(row))
            answers[i] = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers
