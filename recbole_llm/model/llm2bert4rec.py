"""LLM2BERT4Rec: RecBole's BERT4Rec whose item-embedding table starts from LLM item-text embeddings.

Reference:
    Artun Boz, Wouter Zorgdrager, Zoe Kotti, Jesse Harte, Panos Louridas, Vassilios Karakoidas,
    Dietmar Jannach and Marios Fragkoulis. "Improving Sequential Recommendations with LLMs."
    arXiv:2402.01339, 2024 (extends Harte et al., "Leveraging Large Language Models for
    Sequential Recommendation", RecSys 2023, arXiv:2309.09261, which introduced LLM2BERT4Rec).

As :mod:`recbole_llm.model.llm2sasrec`: the item rows (1..n_items-1) of BERT4Rec's table are the
PCA-reduced (to ``hidden_size``) LLM text embeddings rescaled to std ``llm_init_std`` (default
``initializer_range``); the padding row (0) and the mask-token row (``n_items``) keep RecBole's
initialisation, and the table stays trainable.
"""
from __future__ import annotations

import torch
from recbole.model.sequential_recommender.bert4rec import BERT4Rec

from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.model.llm2sasrec import llm_initialised_rows


class LLM2BERT4Rec(BERT4Rec):
    """BERT4Rec with its item embeddings initialised from PCA-reduced LLM text embeddings."""

    dataset_class = TextSeqDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        with torch.no_grad():
            self.item_embedding.weight[1:self.n_items] = llm_initialised_rows(config, dataset, self.hidden_size)
