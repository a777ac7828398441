"""Assemble one text per item from RecBole item features."""
from __future__ import annotations

import logging
from typing import List, Sequence

from recbole.utils import FeatureType

logger = logging.getLogger(__name__)

MISSING_TEXT_POLICIES = ("error", "empty")


def _field_values(dataset, field: str) -> List[str]:
    """The text of one item field for every internal item id (index 0 is padding)."""
    column = dataset.item_feat[field]
    field_type = dataset.field2type[field]
    if field_type == FeatureType.TOKEN_SEQ:
        vocab = dataset.field2id_token[field]
        return [" ".join(vocab[int(t)] for t in row if int(t) != 0) for row in column]
    if field_type == FeatureType.TOKEN:
        vocab = dataset.field2id_token[field]
        return ["" if int(t) == 0 else str(vocab[int(t)]) for t in column]
    if field_type == FeatureType.FLOAT:
        return [str(float(v)) for v in column]
    raise ValueError(f"text field {field!r} has type {field_type.value}; expected token_seq, token or float")


def assemble_item_texts(dataset, text_fields: Sequence[str], missing_text: str = "empty") -> List[str]:
    """One string per internal item id (``texts[0]`` is the padding item, always empty).

    Fields are joined in ``text_fields`` order with ". "; word tokens of ``token_seq`` fields are
    joined back with spaces. Items whose text is empty are counted and logged; with
    ``missing_text='error'`` they raise instead.
    """
    if missing_text not in MISSING_TEXT_POLICIES:
        raise ValueError(f"missing_text must be one of {MISSING_TEXT_POLICIES}, got {missing_text!r}")
    if not text_fields:
        raise ValueError("text_fields is empty: name the item fields that make up the item text")
    if dataset.item_feat is None:
        raise ValueError(
            f"dataset {dataset.dataset_name!r} has no item features loaded: the text model needs "
            f"load_col.item with the text fields {list(text_fields)}"
        )
    available = [f for f in dataset.item_feat.columns if f != dataset.iid_field]
    unknown = [f for f in text_fields if f not in available]
    if unknown:
        raise ValueError(
            f"text_fields {unknown} not found in the item features of dataset {dataset.dataset_name!r}; "
            f"available item fields: {available} (check load_col.item)"
        )
    columns = [_field_values(dataset, field) for field in text_fields]
    texts = [". ".join(part for part in parts if part) for parts in zip(*columns)]
    texts[0] = ""
    missing = [i for i in range(1, len(texts)) if not texts[i].strip()]
    if missing:
        tokens = dataset.field2id_token[dataset.iid_field]
        examples = ", ".join(str(tokens[i]) for i in missing[:5])
        message = (
            f"{len(missing)} of {len(texts) - 1} items of dataset {dataset.dataset_name!r} have no text "
            f"in fields {list(text_fields)} (e.g. item ids {examples})"
        )
        if missing_text == "error":
            raise ValueError(message + "; set missing_text: empty to encode them as empty strings")
        logger.warning(message + "; they are encoded as empty text")
    return texts
