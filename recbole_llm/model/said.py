"""SAID: sequential recommendation on item embeddings learned through a frozen causal LLM.

Reference:
    Jun Hu, Wenwen Xia, Xiaolu Zhang, Chilin Fu, Weichang Wu, Zhaoxin Huan, Ang Li, Zuoli Tang and
    Jun Zhou. "Enhancing Sequential Recommendation via LLM-based Semantic Embedding Learning."
    In Companion Proceedings of the ACM Web Conference (WWW '24 Companion), 2024, pp. 103-111.
    doi:10.1145/3589335.3648307 (no arXiv version).

Two stages. Stage 1 (:mod:`recbole_llm.llm.semantic_embedding`) learns one embedding per item by
making a frozen causal LM reproduce the item's text from soft tokens projected from it; it runs
when the model is built and is skipped when its cached table exists. Stage 2 (this class) is a
SASRec-style Transformer whose item table is the stage-1 table through a linear adapter; the
table is frozen (``freeze_item_emb: True``, as the paper recommends) or fine-tuned, and the model
is trained with cross-entropy over all items.
"""
from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_llm.model._layers import init_weights, transformer_encoder
from recbole_llm.data import TextSeqDataset
from recbole_llm.llm.semantic_embedding import semantic_item_embeddings
from recbole_llm.utils import cache_dir


class SAID(SequentialRecommender):
    """SASRec-style recommender over the stage-1 semantic item embeddings."""

    dataset_class = TextSeqDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["loss_type"] != "CE":
            raise ValueError(f"SAID trains with loss_type 'CE' (cross-entropy over all items), got {config['loss_type']!r}")
        self.hidden_size = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = transformer_encoder(config, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        semantic_table, _ = semantic_item_embeddings(config, dataset, cache_dir(config, "said"))
        self.adapter = nn.Linear(semantic_table.shape[1], self.hidden_size)
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(lambda module: init_weights(module, self.initializer_range))
        self.semantic_item_embedding = nn.Embedding.from_pretrained(
            semantic_table, freeze=bool(config["freeze_item_emb"]), padding_idx=0
        )

    def item_representations(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Adapted semantic embeddings of ``item_ids`` (all items when None): [..., hidden_size]."""
        table = self.semantic_item_embedding.weight if item_ids is None else self.semantic_item_embedding(item_ids)
        return self.adapter(table)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = self.item_representations(item_seq) + self.position_embedding(positions).unsqueeze(0)
        hidden = self.dropout(self.LayerNorm(hidden))
        layers = self.trm_encoder(hidden, self.get_attention_mask(item_seq), output_all_encoded_layers=True)
        return self.gather_indexes(layers[-1], item_seq_len - 1)  # [B, hidden_size]

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = seq_output @ self.item_representations().t()
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_representations(interaction[self.ITEM_ID])).sum(dim=-1)  # [B]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_representations().t()  # [B, n_items]
