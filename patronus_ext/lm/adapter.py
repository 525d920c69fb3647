"""The representation a transferable backdoor lives in, read the same way for every model family.

A transferable backdoor lives in the representation every downstream head reads
(docs/METHODS.md §0): the final hidden state of the first token for encoders (BERT,
RoBERTa, DeBERTa, ALBERT, DistilBERT, ELECTRA, MPNet; *not* ``pooler_output``),
of the last non-pad token for decoders (GPT-2, OPT, LLaMA-style) and XLNet, of
the EOS position of the encoder for BART/T5-style encoder-decoders, and of the
``[MASK]`` position for BToP-style prompt backdoors.  :class:`ModelAdapter`
hides those differences from the attacks and defenses.
"""

from __future__ import annotations

import inspect
from typing import Iterable, Sequence

import torch
from torch import nn

from ..data import tokens

#: ``config.model_type`` values whose representation is the first token.
FIRST_TOKEN_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "camembert", "deberta", "deberta-v2", "albert", "distilbert",
    "electra", "mpnet", "ernie", "roformer", "megatron-bert", "modernbert", "nomic_bert",
})
#: Encoder-decoders: the encoder's state at the last (EOS) position.
ENCODER_DECODER_TYPES = frozenset({"bart", "mbart", "t5", "mt5", "pegasus", "marian"})
#: Everything else with a causal LM (and XLNet, which summarises at its last token).
LAST_TOKEN_HINT_TYPES = frozenset({"gpt2", "gpt_neo", "gptj", "opt", "llama", "mistral", "qwen2", "phi",
                                    "falcon", "bloom", "gemma", "xlnet", "gpt_neox"})
POSITIONS = ("auto", "first", "last", "eos", "mask")


def default_position(model_type: str, is_decoder: bool) -> str:
    if model_type in FIRST_TOKEN_TYPES:
        return "first"
    if model_type in ENCODER_DECODER_TYPES:
        return "eos"
    if model_type in LAST_TOKEN_HINT_TYPES or is_decoder:
        return "last"
    return "first"


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding must not shift absolute positions)."""
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0)


def accepts_argument(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes ``name`` (model classes differ, e.g. ``position_ids``, ``logits_to_keep``)."""
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row; works for left and right padding."""
    length = attention_mask.shape[1]
    flipped = attention_mask.flip(1).to(torch.int64)
    return (length - 1) - flipped.argmax(dim=1)


class ModelAdapter:
    """One interface over any Hugging Face PLM: tokens -> embeddings -> representation.

    ``model`` may be a base model or one with a head (MLM, classification,
    causal LM); the representation always comes from the backbone's final
    hidden states at ``position`` (``auto`` picks it from the family).
    """

    def __init__(self, model: nn.Module, tokenizer, position: str = "auto", max_length: int = 128):
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self.model_type = getattr(config, "model_type", "")
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.is_decoder = self.model_type not in FIRST_TOKEN_TYPES and (
            self.model_type in LAST_TOKEN_HINT_TYPES or bool(getattr(config, "is_decoder", False))
            or type(model).__name__.endswith("ForCausalLM") or type(model).__name__.endswith("LMHeadModel"))
        self.position = default_position(self.model_type, self.is_decoder) if position == "auto" else position
        self.family = "decoder" if self.position == "last" else "encoder"
        self.max_length = int(max_length)
        self.source: str | None = None  # the resolved folder or hub id, when loaded by load_adapter
        prefix, suffix = self._special_layout()
        self.special_prefix = prefix
        self.special_suffix = suffix

    # -- structure -------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The transformer without a task head (the encoder for encoder-decoders)."""
        base = getattr(self.model, "base_model", self.model)
        if self.is_encoder_decoder and hasattr(base, "get_encoder"):
            return base.get_encoder()
        return base

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.embedding_matrix().shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_matrix().shape[0])

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.tokenizer.all_special_ids)

    def embedding_matrix(self) -> torch.Tensor:
        """Input embedding weight ``[V, d]`` (a parameter: detach before searching over it)."""
        return self.model.get_input_embeddings().weight

    def _special_layout(self) -> tuple[int, int]:
        """How many special tokens the tokenizer puts before and after the text."""
        return tokens.special_layout(self.tokenizer)

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` on the model's device."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of texts, got a single string")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, padding_side="right",
                             max_length=max_length or self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device)}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    # -- representation --------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer hidden states ``[B, L, d]`` of the backbone."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        extra = {}
        if (self.family == "decoder" and attention_mask is not None and accepts_argument(self.backbone, "position_ids")
                and bool((attention_mask[:, 0] == 0).any())):
            # Left padding: decoders with absolute positions (GPT-2) would otherwise number the
            # pads and shift every real token's position; count positions over real tokens only.
            extra["position_ids"] = position_ids(attention_mask)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            return_dict=True, **extra)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def represent(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                  inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The backdoor-relevant representation ``[B, d]`` (differentiable)."""
        hidden = self.hidden_states(input_ids, attention_mask, inputs_embeds)
        return self.select_position(hidden, input_ids, attention_mask)

    def select_position(self, hidden: torch.Tensor, input_ids: torch.Tensor | None,
                        attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch = torch.arange(hidden.shape[0], device=hidden.device)
        if self.position == "first":
            return hidden[:, 0]
        if self.position == "mask":
            if input_ids is None:
                raise ValueError("position='mask' needs input_ids to find the mask token")
            is_mask = input_ids == self.tokenizer.mask_token_id
            if not bool(is_mask.any(1).all()):
                raise ValueError("position='mask': every input must contain the tokenizer's mask token")
            return hidden[batch, is_mask.to(torch.int64).argmax(1)]
        if attention_mask is None:
            return hidden[:, -1]
        return hidden[batch, last_real_index(attention_mask)]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """Representations ``[N, d]`` of many texts, batched, without gradients."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            raise ValueError("encode needs at least one text")
        chunks = range(0, len(texts), batch_size)
        reps = []
        for start in tqdm(chunks, desc="encode", disable=not progress, leave=False):
            batch = self.tokenize(texts[start:start + batch_size], max_length)
            reps.append(self.represent(**batch).float())
        return torch.cat(reps)

    def token_text(self, token_ids: Iterable[int]) -> str:
        """Readable text of a trigger given as token ids."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=True).strip()
