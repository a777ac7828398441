"""Item text embeddings aligned with RecBole's internal item ids, cached on disk."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from recbole_llm.text import encoder as text_encoder
from recbole_llm.utils import fingerprint, save_array

logger = logging.getLogger(__name__)


def cached_text_embeddings(
    texts: Sequence[str],
    cache_folder: Path,
    encoder_name: str = text_encoder.DEFAULT_TEXT_ENCODER,
    text_fields: Optional[Sequence[str]] = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> Tuple[np.ndarray, Path]:
    """Embeddings of ``texts`` [len(texts), dim]; encoded once, then read from ``cache_folder``.

    The cache file name is a hash of the texts, the encoder and the text fields, so any change of
    those encodes again. The file is written atomically.
    """
    key = fingerprint(list(texts), str(encoder_name), list(text_fields or []))
    cache_file = Path(cache_folder) / f"text_emb_{key}.npy"
    if cache_file.is_file():
        logger.info("text embeddings read from cache %s", cache_file)
        return np.load(cache_file), cache_file
    logger.info("encoding %d item texts with %s", len(texts), encoder_name)
    embeddings = text_encoder.encode_texts(
        texts, encoder_name=encoder_name, batch_size=batch_size, device=device
    )
    save_array(cache_file, embeddings)
    logger.info("text embeddings cached at %s", cache_file)
    return embeddings, cache_file


def item_text_embeddings(dataset, config, cache_folder: Path) -> Tuple[List[str], torch.Tensor]:
    """(texts, embeddings) for every internal item id; row 0 (padding) is all zeros.

    Reads ``text_fields``, ``missing_text``, ``text_encoder`` and ``text_batch_size`` from
    ``config``.
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
    )
    table = torch.zeros(len(texts), embeddings.shape[1], dtype=torch.float32)
    table[1:] = torch.from_numpy(embeddings)
    return texts, table
