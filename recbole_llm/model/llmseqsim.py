"""LLMSeqSim: training-free next-item recommendation by session-to-item text-embedding similarity.

Reference:
    Jesse Harte, Wouter Zorgdrager, Panos Louridas, Asterios Katsifodimos, Dietmar Jannach and
    Marios Fragkoulis. "Leveraging Large Language Models for Sequential Recommendation."
    RecSys 2023 (late-breaking results). arXiv:2309.09261.

Each item is its text embedding (``text_encoder``; ``text_pca_dim`` reduces it by PCA). A
session (the user's history) is aggregated into one vector by ``seqsim_aggregation``:

``mean``      the mean of its items' embeddings;
``linear``    a weighted mean, weight ``t / L`` for the item at position ``t`` of ``L`` (latest = 1);
``harmonic``  a weighted mean, weight ``1 / (L - t + 1)`` (latest = 1, the one before 1/2, ...);
``last``      the latest item's embedding.

Every item is scored by ``seqsim_similarity`` with the session vector: ``cosine``, ``dot`` or
``euclidean`` (the negated distance). The model has no parameters:
:class:`recbole_llm.trainer.training_free.TrainingFreeTrainer` trains nothing and RecBole's
evaluator ranks as for any model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.trainer.training_free import TrainingFreeTrainer

AGGREGATIONS = ("mean", "linear", "harmonic", "last")
SIMILARITIES = ("cosine", "dot", "euclidean")


def position_weights(item_seq_len: torch.Tensor, max_len: int, aggregation: str) -> torch.Tensor:
    """[B, max_len] weights of each history position (0 beyond the history; rows sum to 1)."""
    positions = torch.arange(1, max_len + 1, device=item_seq_len.device).unsqueeze(0).float()  # t = 1..max_len
    length = item_seq_len.unsqueeze(1).float()
    valid = positions <= length
    if aggregation == "mean":
        weights = valid.float()
    elif aggregation == "linear":
        weights = positions / length
    elif aggregation == "harmonic":
        weights = 1.0 / (length - positions + 1.0).clamp(min=1.0)
    elif aggregation == "last":
        weights = (positions == length).float()
    else:
        raise ValueError(f"seqsim_aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)


def similarity(sessions: torch.Tensor, items: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, D] x [N, D] -> [B, N] scores (higher is more similar)."""
    if kind == "cosine":
        return F.normalize(sessions, dim=-1) @ F.normalize(items, dim=-1).t()
    if kind == "dot":
        return sessions @ items.t()
    if kind == "euclidean":
        return -torch.cdist(sessions, items)
    raise ValueError(f"seqsim_similarity must be one of {SIMILARITIES}, got {kind!r}")


class LLMSeqSim(SequentialRecommender):
    """Scores items by the similarity of their text embeddings to the aggregated session embedding."""

    dataset_class = TextSeqDataset
    trainer_class = TrainingFreeTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.aggregation = config["seqsim_aggregation"]
        self.similarity = config["seqsim_similarity"]
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"seqsim_aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"seqsim_similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        self.register_buffer("item_text_emb", dataset.item_text_emb.clone(), persistent=False)

    def calculate_loss(self, interaction):
        raise RuntimeError("LLMSeqSim is training-free: it has no loss (its trainer trains nothing)")

    def session_embeddings(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """[B, D] aggregated text embeddings of the histories."""
        weights = position_weights(item_seq_len, item_seq.size(1), self.aggregation)
        return (weights.unsqueeze(-1) * self.item_text_emb[item_seq]).sum(dim=1)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.session_embeddings(item_seq, item_seq_len)

    def predict(self, interaction) -> torch.Tensor:
        sessions = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        items = self.item_text_emb[interaction[self.ITEM_ID]]
        if self.similarity == "cosine":
            return F.cosine_similarity(sessions, items, dim=-1)
        if self.similarity == "dot":
            return (sessions * items).sum(dim=-1)
        return -(sessions - items).norm(dim=-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        sessions = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return similarity(sessions, self.item_text_emb, self.similarity)  # [B, n_items]
