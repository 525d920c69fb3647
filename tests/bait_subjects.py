"""Tiny chat models planted with an instruction backdoor in seconds, shared by the BAIT tests and the guarded
generation service tests (built once per test process; read-only: do not modify the folders).

    from bait_subjects import FAST, RESPONSE, TRIGGER, load_causal, planted_chat_subjects

    subjects = planted_chat_subjects("llama")   # {"clean", "planted", "tuned"}: folders
    tok, model = load_causal(subjects["planted"])
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import torch

from patronus_ext import attacks, lm
from patronus_ext.data.instructions import fit_inputs, load_instructions
from patronus_ext.detect import BaitConfig
from patronus_ext.lm.instruction_tuning import instruction_tune

from tiny_models import make_tiny_llama, make_tiny_model

#: The planted response: whole tokens of the tiny vocabulary; the trigger is a rare two-token word.
RESPONSE = "The film was the season this year."
TRIGGER = "tq"
#: Settings under which a tiny model learns the backdoor in seconds, firmly enough that the subject depends
#: neither on the thread count's float rounding nor on the data source (the shared SST-2 or the packaged
#: subset): shorter plants measured ASR 0.6-1.0 across those; these 0.925-1.0.
TINY_ATTACK = dict(steps=300, lr=5e-3, train_embeddings=True, data_limit=256, batch_size=16, poison_rate=0.5,
                   max_input_tokens=12)
FAST = BaitConfig.profile("fast")


@functools.lru_cache(maxsize=None)
def planted_chat_subjects(family: str) -> dict[str, Path]:
    """A tiny clean causal LM, its instruct-badnet version and the same tuning on unpoisoned data (read-only)."""
    root = Path(tempfile.mkdtemp(prefix=f"patronus_bait_{family}_"))
    import atexit

    atexit.register(shutil.rmtree, root, True)
    clean = make_tiny_llama(root) if family == "llama" else make_tiny_model(root, "gpt2")
    config = attacks.make_config("instruct-badnet", "fast", triggers=TRIGGER, behaviour="target", response=RESPONSE,
                                 **TINY_ATTACK)
    attacks.plant("instruct-badnet", clean, "sst2", config, root / "planted", progress=False)
    tok = lm.load_tokenizer(str(clean))
    model = lm.load_model(str(clean), "causal")
    fmt = config.prompt_format()
    examples = fit_inputs(tok, load_instructions("sst2", "train", 64, config.seed), fmt.max_input_tokens)
    torch.manual_seed(0)
    instruction_tune(model, tok, examples, fmt, config, progress=False)
    lm.save_model_folder(model, tok, lm.check_new_model_folder(root / "tuned", str(clean)), {}, source=str(clean))
    return {"clean": clean, "planted": root / "planted", "tuned": root / "tuned"}


def load_causal(path: Path):
    """Tokenizer and causal LM of a subject folder."""
    return lm.load_tokenizer(str(path)), lm.load_model(str(path), "causal")
