"""Item text embeddings aligned with RecBole's internal item ids, cached on disk.

The encoder (config ``text_encoder``) is a sentence-transformers model (default: the packaged
all-MiniLM-L6-v2) or a causal LM (the packaged ``smollm2-135m`` or a local ``*ForCausalLM``
folder), whose settings are ``text_llm_layer``, ``text_pooling``, ``text_max_length`` and
``text_llm_dtype``. ``text_pca_dim`` optionally reduces the embeddings by PCA fitted on the items.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recbole_llm.text import encoder as text_encoder
from recbole_llm.text import llm_encoder
from recbole_llm.utils import fingerprint, save_array

logger = logging.getLogger(__name__)


def _folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of every file in ``folder`` (sorted, recursive)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode("utf-8") + b"\x00")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def encoder_identity(encoder_name: str, encoding: Optional[llm_encoder.LLMEncoding] = None,
                     llm_cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """What identifies the encoder in cache keys: a causal LM by its weights' content and settings."""
    if encoding is None:
        return {"sentence_transformer": str(encoder_name)}
    folder = llm_encoder.resolve_llm_folder(encoder_name, llm_cache_dir)
    return {"causal_lm": _folder_digest(folder), "layer": int(encoding.layer), "pooling": encoding.pooling,
            "max_length": int(encoding.max_length), "dtype": encoding.dtype}


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

    ``encoding`` set means ``encoder_name`` is a causal LM encoded with those settings. The cache
    file name is a hash of the texts, the encoder's identity (a causal LM: the content of its
    folder and every ``encoding`` field) and the text fields, so any change of those encodes
    again. The file is written atomically.
    """
    identity = encoder_identity(encoder_name, encoding, llm_cache_dir)
    key = fingerprint(list(texts), identity, list(text_fields or []))
    cache_file = Path(cache_folder) / f"text_emb_{key}.npy"
    if cache_file.is_file():
        logger.info("text embeddings read from cache %s", cache_file)
        return np.load(cache_file), cache_file
    logger.info("encoding %d item texts with %s", len(texts), encoder_name)
    if encoding is None:
        embeddings = text_encoder.encode_texts(texts, encoder_name=encoder_name, batch_size=batch_size, device=device)
    else:
        embeddings = llm_encoder.encode_with_llm(texts, encoder_name, encoding, batch_size, device, llm_cache_dir)
    save_array(cache_file, embeddings)
    logger.info("text embeddings cached at %s", cache_file)
    return embeddings, cache_file


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
