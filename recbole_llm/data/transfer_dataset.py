"""Item text embeddings for the transferable models: encoded here, or the authors' released files.

The UniSRec and VQ-Rec releases ship pre-computed text embeddings as ``<Name>.feat1CLS`` (and
``<Name>.feat2CLS``, the embeddings of word-dropped texts): raw little-endian float32, no header,
``[n_items, plm_size]`` row-major, row ``k`` for the item of index ``k`` in ``<Name>.item2index``.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

from recbole_llm.data.text_dataset import TextSeqDataset

logger = logging.getLogger(__name__)


def read_feat_file(path: str, plm_size: int) -> np.ndarray:
    """The float32 matrix [n_rows, plm_size] of a ``.feat1CLS``-layout file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text embedding file {path!r} does not exist")
    if not plm_size or plm_size < 1:
        raise ValueError(f"text_embedding_size must be the width of {path!r} (768 for BERT), got {plm_size!r}")
    n_bytes = os.path.getsize(path)
    row_bytes = 4 * int(plm_size)
    if n_bytes == 0 or n_bytes % row_bytes:
        raise ValueError(
            f"{path!r} holds {n_bytes} bytes, not a whole number of float32 rows of "
            f"text_embedding_size={plm_size} ({row_bytes} bytes each): wrong text_embedding_size or not a .feat1CLS file"
        )
    return np.fromfile(path, dtype="<f4").reshape(-1, int(plm_size))


def read_item_index(path: str) -> Dict[str, int]:
    """``token -> row`` from a ``<token>\\t<row>`` file (the releases' ``<Name>.item2index``)."""
    rows: Dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(f"{path}, line {lineno}: expected '<item token>\\t<row number>', got {line!r}")
            rows[fields[0]] = int(fields[1])
    return rows


def align_rows(
    features: np.ndarray, item_tokens: Sequence[str], index: Optional[Dict[str, int]], source: str
) -> torch.Tensor:
    """[len(item_tokens), dim] float tensor: row ``i`` is the feature row of ``item_tokens[i]``;
    row 0 (RecBole's padding item) is zeros.

    With ``index`` None the item tokens themselves are the row numbers (as in the releases'
    ``.inter`` files). Raises ValueError naming the first item without a row.
    """
    table = torch.zeros(len(item_tokens), features.shape[1], dtype=torch.float32)
    rows = np.zeros(len(item_tokens) - 1, dtype=np.int64)
    for i, token in enumerate(item_tokens[1:]):
        if index is not None:
            if token not in index:
                raise ValueError(f"item {token!r} has no row in the item index of {source}")
            rows[i] = index[token]
        elif str(token).isdigit():
            rows[i] = int(token)
        else:
            raise ValueError(
                f"item token {token!r} is not a row number of {source}: set text_embedding_index to the "
                "<Name>.item2index file that maps item tokens to rows"
            )
    if len(rows) and rows.max() >= len(features):
        raise ValueError(
            f"{source} has {len(features)} rows, but item {item_tokens[1 + int(rows.argmax())]!r} needs row "
            f"{int(rows.max())}: the file does not belong to this dataset or text_embedding_size is wrong"
        )
    table[1:] = torch.from_numpy(features[rows])
    return table


def released_embeddings(dataset, config, path: str) -> torch.Tensor:
    """The rows of a ``.feat1CLS``-layout file aligned with ``dataset``'s internal item ids."""
    features = read_feat_file(path, config["text_embedding_size"])
    index_file = config["text_embedding_index"]
    index = read_item_index(index_file) if index_file else None
    tokens = list(dataset.field2id_token[dataset.iid_field])
    logger.info("text embeddings %s read from %s (%d rows)", list(features.shape), path, len(features))
    return align_rows(features, tokens, index, repr(path))


class TransferTextDataset(TextSeqDataset):
    """:class:`TextSeqDataset` whose ``item_text_emb`` may come from a released file.

    Config keys: ``text_embedding_file`` (a ``.feat1CLS``-layout file; ~ encodes the item texts
    with ``text_encoder``), ``text_embedding_size`` (its width) and ``text_embedding_index`` (an
    ``item2index`` file; ~ when the item tokens are the row numbers). With a released file,
    ``item_texts`` is None.
    """

    def __init__(self, config):
        released = config["text_embedding_file"]
        if not released:
            super().__init__(config)
            return
        SequentialDataset.__init__(self, config)
        self.item_texts = None
        self.item_text_emb = released_embeddings(self, config, released)


def drop_words(texts: Sequence[str], ratio: float, seed: int) -> list:
    """Each text with every word dropped independently with probability ``ratio`` (seeded)."""
    rng = np.random.default_rng(seed)
    dropped = []
    for text in texts:
        words = text.split()
        keep = rng.random(len(words)) >= ratio
        dropped.append(" ".join(word for word, kept in zip(words, keep) if kept))
    return dropped


def word_drop_embeddings(dataset, config) -> torch.Tensor:
    """[n_items, dim] embeddings of word-dropped item texts (UniSRec's ``feat2CLS``), row 0 zeros.

    Read from ``text_embedding_aug_file`` when set; otherwise every item text loses each word with
    probability ``word_drop_ratio`` (seed ``seed``) and is encoded with ``text_encoder`` (cached
    like the plain text embeddings).
    """
    from recbole_llm.text import encoder as text_encoder
    from recbole_llm.text.features import cached_text_embeddings
    from recbole_llm.utils import cache_dir

    if config["text_embedding_aug_file"]:
        return released_embeddings(dataset, config, config["text_embedding_aug_file"])
    if dataset.item_texts is None:
        raise ValueError(
            "the word-drop augmentation needs the embeddings of word-dropped texts: with text_embedding_file "
            "set text_embedding_aug_file (the release's <Name>.feat2CLS), or item_drop_coefficient: 1.0"
        )
    texts = drop_words(dataset.item_texts[1:], float(config["word_drop_ratio"]), int(config["seed"]))
    embeddings, _ = cached_text_embeddings(
        texts,
        cache_dir(config, "text"),
        encoder_name=config["text_encoder"] or text_encoder.DEFAULT_TEXT_ENCODER,
        text_fields=config["text_fields"],
        batch_size=config["text_batch_size"] or 64,
        device=config["device"],
    )
    table = torch.zeros(len(texts) + 1, embeddings.shape[1], dtype=torch.float32)
    table[1:] = torch.from_numpy(embeddings)
    return table
