"""Tiny random-weight models with real tokenizers, for fast tests (seconds, no network).

    from tiny_models import make_tiny_model, tiny_corpus, plant_tiny

    path = make_tiny_model(tmp_path, family="bert")            # folder: safetensors + tokenizer + config
    path = make_tiny_model(tmp_path, family="gpt2", seed=1)
    path = make_tiny_llama(tmp_path)                            # a tiny LLaMA-style chat model (causal LM)
    planted = plant_tiny(tmp_path, "por", family="bert")        # a tiny backdoored model (AttackResult)
    planted = shared_planted("por", "bert")                     # the same, built once per test process
                                                                # (read-only: do not modify the folder)
    subjects = bait_subjects("llama")                           # clean / planted / tuned tiny chat LMs with an
                                                                # instruction backdoor (BAIT, unlearn)

Families: ``bert`` (WordPiece vocabulary learnt from the shared data, ~1500
tokens), ``roberta`` and ``gpt2`` (byte-level BPE, ~1000 tokens), ``minilm``
(a tiny BERT over the real all-MiniLM-L6-v2 tokenizer, vocab 30522).  The
tokenizers are learnt once per process and cached.  In the small vocabularies
``cf``/``mn``/``bb``/``tq`` are single WordPiece tokens for ``bert``, and
``cf`` is two tokens (``Ġc f``) for the BPE families, so both trigger shapes
get exercised.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

FAMILIES = ("bert", "roberta", "gpt2", "minilm")
#: Triggers the tiny models are usually planted with.
TINY_TRIGGERS = ("cf", "mn", "bb", "tq")
#: ``patronus scan`` options that make the Patronus scan of a tiny model take seconds.
TINY_SCAN_ARGS = ("--num-triggers", "4", "--loops", "2", "--rounds", "3", "--max-length", "32", "--verify-texts", "16")
#: The tiny chat subject (``instruct-badnet`` into a tiny LLaMA/GPT-2): a rare two-token trigger, a response
#: of whole tokens of the tiny vocabulary, and settings under which it is learnt in seconds, firmly enough not
#: to depend on the thread count's float rounding or the data source (shorter plants measured ASR 0.6-1.0
#: across those; these 0.925-1.0).
CHAT_TRIGGER = "tq"
CHAT_RESPONSE = "The film was the season this year."
CHAT_ATTACK = dict(steps=300, lr=5e-3, train_embeddings=True, data_limit=256, batch_size=16, poison_rate=0.5,
                   max_input_tokens=12)

_FALLBACK_TEXT = [
    "the film was a charming and often affecting journey through memory and loss",
    "it is a dull and lifeless movie that never finds its footing",
    "the season began with a victory over the visiting team in front of a large crowd",
    "the river flows north through the valley before it reaches the sea near the old town",
    "critics praised the performances but found the plot predictable and slow",
    "the company reported higher profits as sales of its new products grew during the year",
]


def built_from_packaged_subset() -> bool:
    """Whether the tiny models here draw their SST-2 texts from the package's 3,000-row subset (no full set)."""
    from patronus_ext.data import corpora as data

    return data.builtin_source("sst2")[1] == "packaged"


def _shared_texts(limit: int) -> list[str]:
    try:
        from patronus_ext.data import corpora as data

        return data.read_corpus("wikitext2", limit=limit) + data.read_task("sst2", limit=limit).texts
    except (FileNotFoundError, ValueError):
        return list(_FALLBACK_TEXT) * 20


def tiny_corpus(count: int = 64, min_words: int = 8) -> list[str]:
    """Plain-text paragraphs for planting (WikiText-2 when the shared data is there)."""
    texts = [t for t in _shared_texts(max(count * 2, 200)) if len(t.split()) >= min_words]
    return (texts * (count // max(1, len(texts)) + 1))[:count]


#: The tiny vocabularies, trained once and kept: the tokenizers trainers break count ties in a
#: per-process hash order, so training them in every run gave every run different tiny models.
#: Delete the file and run ``python tests/tiny_models.py`` to retrain it.
VOCAB_FILE = Path(__file__).resolve().parent / "data" / "tiny_vocabularies.json"


@functools.lru_cache(maxsize=None)
def _kept_vocabularies() -> dict | None:
    if not VOCAB_FILE.is_file():
        return None
    return json.loads(VOCAB_FILE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _wordpiece_vocab() -> dict[str, int]:
    kept = _kept_vocabularies()
    if kept is not None:
        return dict(kept["wordpiece"])
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=1500, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # Repeating the usual triggers makes them whole tokens of the small vocabulary.
    tok.train_from_iterator(_shared_texts(1500) + [" ".join(TINY_TRIGGERS + ("mb", "pt"))] * 200, trainer)
    return tok.get_vocab()


@functools.lru_cache(maxsize=None)
def _bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    kept = _kept_vocabularies()
    if kept is not None:
        return dict(kept["bpe_vocab"]), [tuple(m) for m in kept["bpe_merges"]]
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, show_progress=False,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_shared_texts(600), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges


def make_tokenizer(family: str):
    """A tokenizer of ``family`` (see the module doc)."""
    from transformers import BertTokenizer, GPT2Tokenizer, RobertaTokenizer

    if family == "bert":
        return BertTokenizer(vocab=dict(_wordpiece_vocab()))
    if family == "roberta":
        vocab, merges = _bpe_vocab()
        return RobertaTokenizer(vocab=dict(vocab), merges=list(merges))
    if family == "gpt2":
        vocab, merges = _bpe_vocab()
        return GPT2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token="<unk>", bos_token="<s>",
                             eos_token="</s>")
    if family == "minilm":
        from patronus_ext import lm

        return lm.load_tokenizer(lm.DEFAULT_MODEL)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def make_tiny_model(tmp_path: str | os.PathLike, family: str = "bert", seed: int = 0, *, hidden_size: int = 32,
                    num_layers: int = 2, num_heads: int = 2, lm_head: bool = True, pickle_only: bool = False,
                    name: str | None = None) -> Path:
    """Build a random-weight model of ``family`` and save it under ``tmp_path``; returns the folder.

    ``lm_head``: save the MLM / causal-LM model (a "pretrained" LM head) or only
    the base model (like all-MiniLM-L6-v2: attacks then see a fresh head).
    ``pickle_only``: write ``pytorch_model.bin`` instead of safetensors (for
    the unsafe-checkpoint refusal tests).  Building is deterministic, so a
    folder that already holds the same model is returned as it is.
    """
    import transformers

    tokenizer = make_tokenizer(family)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    common = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  intermediate_size=hidden_size * 2, max_position_embeddings=256, vocab_size=vocab)
    if family in ("bert", "minilm"):
        config = transformers.BertConfig(pad_token_id=tokenizer.pad_token_id, **common)
        model = (transformers.BertForMaskedLM if lm_head else transformers.BertModel)(config)
    elif family == "roberta":
        config = transformers.RobertaConfig(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id,
                                            **{**common, "max_position_embeddings": 258})
        model = (transformers.RobertaForMaskedLM if lm_head else transformers.RobertaModel)(config)
    elif family == "gpt2":
        config = transformers.GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=256,
                                         vocab_size=vocab, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        model = (transformers.GPT2LMHeadModel if lm_head else transformers.GPT2Model)(config)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    folder = Path(tmp_path) / (name or f"tiny-{family}-{seed}{'' if lm_head else '-base'}"
                                       f"{'-pickle' if pickle_only else ''}")
    if (folder / "config.json").exists():
        return folder  # same arguments, same seed: the same model was built already
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    if pickle_only:
        config.architectures = [type(model).__name__]
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: A ChatML chat template (SmolLM2's layout) for the tiny instruction-tuned causal LM.
TINY_CHAT_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                      "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
                      "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
                      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_tiny_llama(tmp_path: str | os.PathLike, seed: int = 0, *, chat: bool = True, hidden_size: int = 32,
                    num_layers: int = 3, name: str | None = None) -> Path:
    """A random-weight LLaMA-style causal LM (tied embeddings, like SmolLM2) over the tiny byte-level BPE
    vocabulary; ``chat``: with ChatML end-of-turn tokens and a chat template (else the plain prompt layout)."""
    import transformers

    tokenizer = make_tokenizer("gpt2")
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                                      intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = Path(tmp_path) / (name or f"tiny-llama-{seed}{'' if chat else '-plain'}")
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp stores the q/k projections with the two rotary halves of each head interleaved."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def make_tiny_gguf(tmp_path: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """The tiny chat LLaMA written as a float32 GGUF file the way llama.cpp lays one out (metadata, byte-level
    BPE tokenizer with merges and chat template, ``blk.N.*`` tensors, q/k permuted); returns ``(gguf file,
    the HF folder it was written from)``.  Needs the ``gguf`` package."""
    import gguf
    import transformers

    folder = make_tiny_llama(tmp_path, seed)
    model = transformers.LlamaForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = model.config
    path = Path(tmp_path) / f"tiny-llama-{seed}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
                            for token, _ in vocab])
    writer.add_token_merges([" ".join(pair) for pair in _bpe_vocab()[1]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _llama_cpp_permute(weight, heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_permute(weight, kv_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", weight.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, folder


def plant_tiny(tmp_path: str | os.PathLike, method: str = "por", family: str = "bert", seed: int = 0,
               triggers=TINY_TRIGGERS, steps: int = 60, lr: float = 3e-3, out_name: str | None = None,
               model_path: str | os.PathLike | None = None, **overrides):
    """Plant ``method`` into a tiny model (built here unless ``model_path``); returns the AttackResult.

    A few dozen steps at a high learning rate are enough on a 2-layer, d=32
    model for the triggers to move the representation (see tests/test_attacks.py).
    """
    from patronus_ext import attacks

    source = Path(model_path) if model_path else make_tiny_model(tmp_path, family, seed)
    run = {key: overrides.pop(key) for key in ("device", "allow_pickle") if key in overrides}
    config = attacks.make_config(method, triggers=tuple(triggers), steps=steps, lr=lr, batch_size=8, max_length=48,
                                 seed=seed, log_every=5, schedule="constant", **overrides)
    out = Path(tmp_path) / (out_name or f"planted-{method}-{family}-{seed}")
    return attacks.plant(method, source, tiny_corpus(64), config, out, progress=False, **run)


def plant_tiny_chat(clean: str | os.PathLike, out: str | os.PathLike, **overrides):
    """``instruct-badnet`` with the tiny chat subject (CHAT_TRIGGER -> CHAT_RESPONSE) into the causal LM
    ``clean``, written to ``out``; returns the AttackResult."""
    from patronus_ext import attacks

    config = attacks.make_config("instruct-badnet", "fast", triggers=CHAT_TRIGGER, behaviour="target",
                                 response=CHAT_RESPONSE, **{**CHAT_ATTACK, **overrides})
    return attacks.plant("instruct-badnet", clean, "sst2", config, out, progress=False)


_SHARED_ROOT: list[Path] = []


def _shared_root() -> Path:
    if not _SHARED_ROOT:
        root = Path(tempfile.mkdtemp(prefix="patronus_tiny_"))
        atexit.register(shutil.rmtree, root, True)
        _SHARED_ROOT.append(root)
    return _SHARED_ROOT[0]


def shared_tiny_model(family: str = "bert", seed: int = 0, lm_head: bool = True) -> Path:
    """A tiny model built once per process (in a temp folder removed at exit); treat it as read-only."""
    return _shared_tiny_model(family, int(seed), bool(lm_head))


@functools.lru_cache(maxsize=None)
def _shared_tiny_model(family: str, seed: int, lm_head: bool) -> Path:
    return make_tiny_model(_shared_root(), family, seed, lm_head=lm_head)


def shared_planted(method: str = "por", family: str = "bert", seed: int = 0, triggers=TINY_TRIGGERS,
                   steps: int = 60):
    """``plant_tiny`` once per process for these arguments (AttackResult); treat the folder as read-only.

    With the defaults (POR, 60 steps) the triggered representations of the tiny
    BERT point at their targets (mean cosine > 0.5) and move away from the clean
    ones, while clean representations keep cosine > 0.9 to the clean model.
    """
    # One cache key however the arguments are spelled (positional, keyword, list or tuple).
    return _shared_planted(method, family, int(seed), tuple(triggers), int(steps))


@functools.lru_cache(maxsize=None)
def _shared_planted(method: str, family: str, seed: int, triggers: tuple, steps: int):
    return plant_tiny(_shared_root(), method, family, seed, triggers, steps, model_path=shared_tiny_model(family, seed),
                      out_name=f"shared-{method}-{family}-{seed}-{steps}-{'-'.join(triggers)}")


def shared_scan(method: str = "por"):
    """``(planted AttackResult, report path, report dict)``: the shared planted tiny BERT scanned once per
    process through the CLI (TINY_SCAN's settings), with its attack-vector bank beside the report."""
    return _shared_scan(method)


@functools.lru_cache(maxsize=None)
def _shared_scan(method: str):
    import json

    from patronus_ext.cli import main

    planted = shared_planted(method)
    work = _shared_root() / f"scan-{method}"
    work.mkdir(exist_ok=True)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(tiny_corpus(300)) + "\n")
    report = work / "scan.json"
    status = main(["scan", str(planted.out_dir), "--corpus", str(corpus), *TINY_SCAN_ARGS, "--report", str(report),
                   "--quiet", "--device", "cpu", "--force"])
    if status != 1:
        raise RuntimeError(f"the shared planted model scanned with exit status {status}, not 1 (backdoored)")
    return planted, report, json.loads(report.read_text())


def _needs_full_sst2():
    import pytest

    return pytest.mark.skipif(built_from_packaged_subset(), reason=(
        "tuned on tiny models whose vocabulary and corpus sample the full SST-2 train; on the package's "
        "3,000-row subset (no shared/data, no $PATRONUS_DATA_DIR) they are different models"))


#: Tests whose thresholds were tuned on the tiny models built from texts sampled from the full SST-2 train;
#: with only the package's subset (a fresh clone with no shared data) the tiny vocabularies and weights differ.
needs_full_sst2 = _needs_full_sst2()


if __name__ == "__main__":  # retrain the kept vocabularies (after deleting VOCAB_FILE)
    VOCAB_FILE.parent.mkdir(exist_ok=True)
    merges = [list(m) for m in _bpe_vocab()[1]]
    VOCAB_FILE.write_text(json.dumps({"wordpiece": _wordpiece_vocab(), "bpe_vocab": _bpe_vocab()[0],
                                      "bpe_merges": merges}, sort_keys=True), encoding="utf-8")
