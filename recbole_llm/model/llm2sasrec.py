"""LLM2SASRec: RecBole's SASRec whose item-embedding table starts from LLM item-text embeddings.

Reference:
    Artun Boz, Wouter Zorgdrager, Zoe Kotti, Jesse Harte, Panos Louridas, Vassilios Karakoidas,
    Dietmar Jannach and Marios Fragkoulis. "Improving Sequential Recommendations with LLMs."
    arXiv:2402.01339, 2024 (extends Harte et al., "Leveraging Large Language Models for
    Sequential Recommendation", RecSys 2023, arXiv:2309.09261, which introduced LLM2BERT4Rec).

Each item's text is embedded by ``text_encoder`` (default: the packaged SmolLM2-135M, mean-pooled
last layer; any key of :mod:`recbole_llm.text.features`), reduced by PCA (fitted on the items) to
``hidden_size`` and rescaled so that the table's standard deviation is ``llm_init_std`` (default:
``initializer_range``, the std of RecBole's own normal initialisation, so the Transformer sees
inputs of the usual scale). Those rows replace the item rows of SASRec's table after RecBole's
initialisation; the padding row keeps its usual initialisation and the whole table stays
trainable. Nothing else differs from SASRec, so any gain is the initialisation's.
"""
from __future__ import annotations

import torch
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.text.features import pca_init_table


def llm_initialised_rows(config, dataset, hidden_size: int) -> torch.Tensor:
    """PCA-reduced, rescaled text embeddings of items 1..n-1 [n_items - 1, hidden_size]."""
    std = config["llm_init_std"] if config["llm_init_std"] is not None else config["initializer_range"]
    return pca_init_table(dataset.item_text_emb[1:], hidden_size, std)


class LLM2SASRec(SASRec):
    """SASRec with its item embeddings initialised from PCA-reduced LLM text embeddings."""

    dataset_class = TextSeqDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        with torch.no_grad():
            self.item_embedding.weight[1:self.n_items] = llm_initialised_rows(config, dataset, self.hidden_size)
