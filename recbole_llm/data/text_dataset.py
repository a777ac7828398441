"""A sequential dataset that carries item texts and their sentence embeddings."""
from __future__ import annotations

from recbole.data.dataset import SequentialDataset

from recbole_llm.text.features import item_text_embeddings
from recbole_llm.utils import cache_dir


class TextSeqDataset(SequentialDataset):
    """``SequentialDataset`` plus ``item_texts`` (list[str]) and ``item_text_emb``.

    ``item_text_emb`` is a float tensor [item_num, dim] aligned with RecBole's internal item
    ids (row 0 = padding, zeros). The split copies RecBole makes share both attributes.
    Config keys: ``text_fields``, ``text_encoder``, ``text_batch_size``, ``missing_text``,
    ``cache_dir`` (see properties/overall.yaml).
    """

    def __init__(self, config):
        super().__init__(config)
        self.item_texts, self.item_text_emb = item_text_embeddings(
            self, config, cache_dir(config, "text")
        )
