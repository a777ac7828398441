"""Item text embeddings aligned with RecBole's internal item ids, cached on disk.

The encoder (config ``text_encoder``) is a sentence-transformers model (default: the packaged
all-MiniLM-L6-v2) or a causal LM (the packaged ``smollm2-135m`` or a local ``*ForCausalLM``
folder), whose settings are ``text_llm_layer``, ``text_pooling``, ``text_max_length`` and
``text_llm_dtype``. ``text_pca_dim`` optionally reduces the embeddings by PCA fitted on the items.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recbole_llm import stages
from recbole_llm.text import encoder as text_encoder
from recbole_llm.text import llm_encoder

logger = logging.getLogger(__name__)


def encoder_identity(encoder_name: str, encoding: Optional[llm_encoder.LLMEncoding] = None,
                     llm_cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """What identifies the encoder in cache keys: a causal LM by its folder's content and settings."""
    if encoding is None:
        return {"sentence_transformer": str(encoder_name)}
    folder = llm_encoder.resolve_llm_folder(encoder_name, llm_cache_dir)
    return {"causal_lm": stages.path_input(folder), "encoding": encoding}


def cached_text_embeddings(
    texts: Sequence[str],
    cache_folder: Path,
    encoder_name: str = text_encoder.DEFAULT_TEXT_ENCODER,
    text_fields: Optional[Sequence[str]] = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    encoding: Optional[llm_encoder.LLMEncoding] = None,
    llm_cache_dir: Optional[str] = None,
) -> Tuple[np.ndarray, Path]:
    """Embeddings of ``texts`` [len(texts), dim]; encoded once, then read from ``cache_folder``.

    ``encoding`` set means ``encoder_name`` is a causal LM encoded with those settings. The
    cache is a :class:`recbole_llm.stages.Stage` keyed by the texts, the encoder's identity (a
    causal LM: the content of its folder and every ``encoding`` field) and the text fields, so
    any change of those encodes again.
    """
    inputs = {"texts": list(texts), "encoder": encoder_identity(encoder_name, encoding, llm_cache_dir),
              "text_fields": list(text_fields or [])}
    stage = stages.Stage("text_emb", cache_folder, inputs=inputs)

    def compute() -> Tuple[np.ndarray, Dict[str, Any]]:
        logger.info("encoding %d item texts with %s", len(texts), encoder_name)
        started = time.perf_counter()
        if encoding is None:
            embeddings = text_encoder.encode_texts(texts, encoder_name=encoder_name, batch_size=batch_size, device=device)
        else:
            embeddings = llm_encoder.encode_with_llm(texts, encoder_name, encoding, batch_size, device, llm_cache_dir)
        seconds = time.perf_counter() - started
        return embeddings.astype(np.float32), {"encoder": str(encoder_name), "texts": len(texts),
                                               "texts_per_second": round(len(texts) / max(seconds, 1e-9), 1)}

    embeddings = stage.run(compute, kind="npy")
    return embeddings, stage.path("npy")


def pca_reduce(embeddings: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """``embeddings`` [n, d] projected on their first ``dim`` principal components (scikit-learn PCA)."""
    from sklearn.decomposition import PCA

    n, width = embeddings.shape
    if not 1 <= int(dim) <= min(n, width):
        raise ValueError(f"PCA to {dim} dimensions needs 1 <= dim <= min(items, width) = {min(n, width)} "
                         f"(embeddings of shape {embeddings.shape})")
    pca = PCA(n_components=int(dim), svd_solver="full", random_state=seed)
    return pca.fit_transform(np.asarray(embeddings, dtype=np.float64)).astype(np.float32)


def llm_encoding_from_config(config) -> Optional[llm_encoder.LLMEncoding]:
    """The causal-LM settings when ``text_encoder`` names a causal LM, else None."""
    name = config["text_encoder"] or text_encoder.DEFAULT_TEXT_ENCODER
    if not llm_encoder.is_causal_lm(name):
        return None
    encoding = llm_encoder.LLMEncoding(
        layer=int(config["text_llm_layer"] if config["text_llm_layer"] is not None else -1),
        pooling=config["text_pooling"] or "mean",
        max_length=int(config["text_max_length"] or 128),
        dtype=config["text_llm_dtype"] or "float32",
    )
    encoding.validate()
    return encoding


def item_text_embeddings(dataset, config, cache_folder: Path) -> Tuple[List[str], torch.Tensor]:
    """(texts, embeddings) for every internal item id; row 0 (padding) is all zeros.

    Reads ``text_fields``, ``missing_text``, ``text_encoder``, ``text_batch_size``, the causal-LM
    keys ``text_llm_layer``, ``text_pooling``, ``text_max_length``, ``text_llm_dtype``,
    ``text_llm_cache_dir`` and ``text_pca_dim`` (PCA over the items, row 0 excluded) from ``config``.
    """
    from recbole_llm.text.assemble import assemble_item_texts

    texts = assemble_item_texts(dataset, config["text_fields"], config["missing_text"] or "empty")
    embeddings, _ = cached_text_embeddings(
        texts[1:],
        cache_folder,
        encoder_name=config["text_encoder"] or text_encoder.DEFAULT_TEXT_ENCODER,
        text_fields=config["text_fields"],
        batch_size=config["text_batch_size"] or 64,
        device=config["device"],
        encoding=llm_encoding_from_config(config),
        llm_cache_dir=config["text_llm_cache_dir"],
    )
    if config["text_pca_dim"]:
        embeddings = pca_reduce(embeddings, int(config["text_pca_dim"]))
    table = torch.zeros(len(texts), embeddings.shape[1], dtype=torch.float32)
    table[1:] = torch.from_numpy(embeddings)
    return texts, table
