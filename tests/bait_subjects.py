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

import tiny_models
import torch
from tiny_models import make_tiny_llama, make_tiny_model

from patronus_ext import lm
from patronus_ext.data.instructions import fit_inputs, load_instructions
from patronus_ext.detect import BaitConfig
from patronus_ext.lm.instruction_tuning import instruction_tune

#: The planted response and trigger (tests/tiny_models.py: the tiny chat subject).
RESPONSE = tiny_models.CHAT_RESPONSE
TRIGGER = tiny_models.CHAT_TRIGGER
FAST = BaitConfig.profile("fast")


@functools.lru_cache(maxsize=None)
def planted_chat_subjects(family: str) -> dict[str, Path]:
    """A tiny clean causal LM, its instruct-badnet version and the same tuning on unpoisoned data (read-only)."""
    root = Path(tempfile.mkdtemp(prefix=f"patronus_bait_{family}_"))
    import atexit

    atexit.register(shutil.rmtree, root, True)
    clean = make_tiny_llama(root) if family == "llama" else make_tiny_model(root, "gpt2")
    config = tiny_models.plant_tiny_chat(clean, root / "planted").config
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
