"""UniSAR: one model for a user's interleaved search and recommendation behaviour.

Reference:
    Teng Shi, Zihua Si, Jun Xu, Xiao Zhang, Xiaoxue Zang, Kai Zheng, Dewei Leng, Yanan Niu, Yang Song.
    "UniSAR: Modeling User Transition Behaviors between Search and Recommendation."
    SIGIR 2024. arXiv:2404.09520.

Each target (a recommendation or a search click) comes with the user's last N recommendation
items and last N search sessions, merged in time order (see
:class:`recbole_llm.data.search_dataset.SearchRecDataset`). A search session is its query (the
masked mean of its word embeddings; words share one vocabulary with the item text tokens) plus
the mean of its clicked items. Three masked multi-head self-attention encoders extract the
transition views: rec->rec and search->search (each behaviour sees earlier behaviours of its own
kind) and a cross encoder giving search->rec at recommendation positions and rec->search at search
positions (each behaviour sees strictly earlier behaviours of the other kind). Contrastive terms
with learnable temperatures align query and clicked item, search->rec with rec->rec and
rec->search with search->search. Cross-attention fuses the views per kind, target attention pools
them for each candidate, and multi-task experts (PLE as in the released code, MMoE as an option)
score the candidate for the recommendation or the search task. Loss: rec BCE + lambda * search BCE
+ the contrastive terms.

Differences from the released code, on purpose: a behaviour with nothing to attend to (a user
without history of one kind) gets a zero attention output instead of NaN; contrastive pooling
skips users without the needed history instead of dividing by zero; in-batch contrastive
negatives exclude rows of the same user and sessions with the same query or item; transitions
only look back in time; the temperatures are learned in log space so they stay positive.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_llm.data.search_dataset import (
    HISTORY_ITEM,
    HISTORY_KIND,
    HISTORY_SESSION,
    REC,
    SEARCH,
    TARGET_KIND,
    TARGET_SESSION,
    SearchRecDataset,
)
from recbole_llm.trainer.unisar import UniSARTrainer

REC_TASK, SEARCH_TASK = 0, 1


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``allowed``; rows with nothing allowed give zeros."""
    has_any = allowed.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~has_any, 0.0)
    return torch.softmax(scores, dim=-1) * has_any


def transition_masks(kinds: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Which history positions each position may attend to, per transition view.

    ``kinds``: [B, L] with 0 = padding, 1 = rec, 2 = search, in time order. Returns bool
    [B, L, L] masks (row = the attending behaviour, column = the attended one):
    ``rec2rec`` / ``search2search``: same kind, not later; ``search2rec``: a rec behaviour looks
    at strictly earlier searches; ``rec2search``: a search looks at strictly earlier rec items.
    """
    length = kinds.size(1)
    not_later = torch.ones(length, length, dtype=torch.bool, device=kinds.device).tril()
    earlier = not_later.tril(diagonal=-1)
    rec, search = kinds == REC, kinds == SEARCH
    return {
        "rec2rec": rec[:, :, None] & rec[:, None, :] & not_later,
        "search2search": search[:, :, None] & search[:, None, :] & not_later,
        "search2rec": rec[:, :, None] & search[:, None, :] & earlier,
        "rec2search": search[:, :, None] & rec[:, None, :] & earlier,
    }


class MaskedMultiHeadAttention(nn.Module):
    """Multi-head attention from ``query`` to ``memory`` under a bool mask [B, Lq, Lk]."""

    def __init__(self, hidden_size: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(hidden_size, hidden_size) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        return x.view(batch, length, self.n_heads, hidden // self.n_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
        weights = self.dropout(masked_softmax(scores, allowed.unsqueeze(1)))
        out = (weights @ v).transpose(1, 2).reshape(query.shape)
        return self.out_proj(out)


class AttentionBlock(nn.Module):
    """Masked attention + feed-forward, each with a residual connection and layer norm."""

    def __init__(self, hidden_size: int, inner_size: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = MaskedMultiHeadAttention(hidden_size, n_heads, dropout)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner_size, hidden_size)
        )
        self.norm_attention, self.norm_output = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        hidden = self.norm_attention(query + self.dropout(self.attention(query, memory, allowed)))
        return self.norm_output(hidden + self.dropout(self.feed_forward(hidden)))


class TransitionEncoder(nn.Module):
    """A stack of masked self-attention blocks (one transition view)."""

    def __init__(self, n_layers: int, hidden_size: int, inner_size: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AttentionBlock(hidden_size, inner_size, n_heads, dropout) for _ in range(n_layers))

    def forward(self, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, hidden, allowed)
        return hidden


class TargetAttention(nn.Module):
    """Pools a history [B, L, d] for each candidate [B, K, d] with bilinear attention -> [B, K, d]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        nn.init.xavier_normal_(self.weight)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = candidates @ self.weight @ history.transpose(1, 2)  # [B, K, L]
        return masked_softmax(scores, valid.unsqueeze(1).expand_as(scores)) @ history


def _mlp(sizes, dropout: float) -> nn.Sequential:
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class MultiTaskExperts(nn.Module):
    """PLE (shared + task-specific experts, one gate per task) or MMoE (shared experts only)."""

    def __init__(self, input_size: int, expert_size: int, n_shared: int, n_specific: int,
                 tower_sizes, style: str, dropout: float, n_tasks: int = 2) -> None:
        super().__init__()
        if style not in ("PLE", "MMoE"):
            raise ValueError(f"multi_task must be 'PLE' or 'MMoE', got {style!r}")
        n_specific = n_specific if style == "PLE" else 0
        self.shared = nn.ModuleList(_mlp([input_size, expert_size], dropout) for _ in range(n_shared))
        self.specific = nn.ModuleList(
            nn.ModuleList(_mlp([input_size, expert_size], dropout) for _ in range(n_specific)) for _ in range(n_tasks)
        )
        self.gates = nn.ModuleList(nn.Linear(input_size, n_shared + n_specific) for _ in range(n_tasks))
        self.towers = nn.ModuleList(
            nn.Sequential(_mlp([expert_size, *tower_sizes], dropout), nn.Linear(tower_sizes[-1], 1)) for _ in range(n_tasks)
        )

    def forward(self, features: torch.Tensor, task: int) -> torch.Tensor:
        experts = [*self.specific[task], *self.shared]
        outputs = torch.stack([expert(features) for expert in experts], dim=-2)
        gate = torch.softmax(self.gates[task](features), dim=-1).unsqueeze(-1)
        return self.towers[task]((gate * outputs).sum(dim=-2)).squeeze(-1)


class BilinearInfoNCE(nn.Module):
    """Symmetric InfoNCE on tanh(a W b^T) / tau with a learnable temperature; pairs on the diagonal."""

    def __init__(self, hidden_size: int, temperature: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        nn.init.xavier_normal_(self.weight)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, a: torch.Tensor, b: torch.Tensor, false_negative: torch.Tensor) -> torch.Tensor:
        if a.size(0) < 2:
            return a.new_zeros(())
        logits = torch.tanh(a @ self.weight @ b.T) / self.log_temperature.exp().clamp(min=1e-2)
        eye = torch.eye(a.size(0), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(false_negative & ~eye, float("-inf"))
        labels = torch.arange(a.size(0), device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class UniSAR(SequentialRecommender):
    """UniSAR on RecBole: see the module docstring; ``properties/model/UniSAR.yaml`` for the keys."""

    dataset_class = SearchRecDataset
    trainer_class = UniSARTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if not isinstance(dataset, SearchRecDataset):
            raise TypeError("UniSAR needs a SearchRecDataset (mixed search/recommendation events)")
        self.hidden_size = config["hidden_size"]
        self.train_negatives = config["train_negatives"]
        self.search_loss_weight = config["search_loss_weight"]
        self.query_item_cl_weight = config["query_item_cl_weight"]
        self.history_cl_weight = config["history_cl_weight"]
        self.score_chunk = config["score_chunk_size"]
        d, dropout = self.hidden_size, config["dropout_prob"]
        history_slots = 2 * config["history_length"]

        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
        self.word_embedding = nn.Embedding(dataset.word_num, d, padding_idx=0)
        self.user_embedding = nn.Embedding(dataset.user_num, d)
        self.position_embedding = nn.Embedding(history_slots, d)
        self.kind_embedding = nn.Embedding(3, d, padding_idx=0)
        self.input_norm, self.input_dropout = nn.LayerNorm(d), nn.Dropout(dropout)
        self.register_buffer("session_query", dataset.session_query.clone(), persistent=False)
        self.register_buffer("session_clicks", dataset.session_clicks.clone(), persistent=False)
        query_ids = torch.unique(dataset.session_query, dim=0, return_inverse=True)[1]
        self.register_buffer("session_query_id", query_ids, persistent=False)  # equal queries, equal ids
        item_words = dataset.item_words if dataset.item_words is not None else torch.zeros(self.n_items, 1, dtype=torch.long)
        self.register_buffer("item_words", item_words.clone(), persistent=False)

        encoder_args = (config["n_layers"], d, config["inner_size"], config["n_heads"], dropout)
        self.rec_encoder, self.search_encoder, self.cross_encoder = (TransitionEncoder(*encoder_args) for _ in range(3))
        block_args = (d, config["inner_size"], config["n_heads"], dropout)
        self.rec_fusion, self.search_fusion = AttentionBlock(*block_args), AttentionBlock(*block_args)
        self.rec_pooling, self.search_pooling = TargetAttention(d), TargetAttention(d)
        self.rec_task_query = nn.Parameter(torch.empty(1, d))
        self.heads = MultiTaskExperts(
            5 * d, config["expert_size"], config["n_shared_experts"], config["n_task_experts"],
            config["tower_sizes"], config["multi_task"], dropout,
        )
        self.query_item_cl = BilinearInfoNCE(d, config["query_item_cl_temperature"])
        self.search2rec_cl = BilinearInfoNCE(d, config["history_cl_temperature"])
        self.rec2search_cl = BilinearInfoNCE(d, config["history_cl_temperature"])
        self.apply(self._init_weights)
        nn.init.xavier_normal_(self.rec_task_query)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    # ----- representations -------------------------------------------------------------------
    def _mean_words(self, words: torch.Tensor) -> torch.Tensor:
        present = (words > 0).unsqueeze(-1).float()
        return (self.word_embedding(words) * present).sum(-2) / present.sum(-2).clamp(min=1.0)

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        """Item id embedding plus the mean embedding of its text words (0 for padding)."""
        unique, inverse = torch.unique(items, return_inverse=True)
        table = self.item_embedding(unique) + self._mean_words(self.item_words[unique])
        table = table * (unique > 0).unsqueeze(-1)
        return table[inverse]

    def query_repr(self, sessions: torch.Tensor) -> torch.Tensor:
        """Masked mean of the word embeddings of each session's query (0 for no session)."""
        unique, inverse = torch.unique(sessions, return_inverse=True)
        return self._mean_words(self.session_query[unique])[inverse]

    def session_repr(self, sessions: torch.Tensor) -> torch.Tensor:
        """A search session: its query plus the mean of its clicked items."""
        unique, inverse = torch.unique(sessions, return_inverse=True)
        clicks = self.session_clicks[unique]
        present = (clicks > 0).unsqueeze(-1).float()
        mean_click = (self.item_repr(clicks) * present).sum(-2) / present.sum(-2).clamp(min=1.0)
        return (self._mean_words(self.session_query[unique]) + mean_click)[inverse]

    def _history_input(self, interaction) -> Tuple[torch.Tensor, torch.Tensor]:
        kinds = interaction[HISTORY_KIND]
        behaviour = torch.where(
            (kinds == REC).unsqueeze(-1), self.item_repr(interaction[HISTORY_ITEM]),
            self.session_repr(interaction[HISTORY_SESSION]),
        )
        positions = torch.arange(kinds.size(1), device=kinds.device)
        hidden = behaviour + self.position_embedding(positions) + self.kind_embedding(kinds)
        hidden = self.input_dropout(self.input_norm(hidden)) * (kinds > 0).unsqueeze(-1)
        return hidden, kinds

    def encode_history(self, interaction) -> Dict[str, torch.Tensor]:
        """Transition views and fused per-kind histories of each row."""
        hidden, kinds = self._history_input(interaction)
        masks = transition_masks(kinds)
        rec, search = kinds == REC, kinds == SEARCH
        rec2rec = self.rec_encoder(hidden, masks["rec2rec"])
        search2search = self.search_encoder(hidden, masks["search2search"])
        cross = self.cross_encoder(hidden, masks["search2rec"] | masks["rec2search"])
        rec_memory = rec[:, :, None] & rec[:, None, :]
        search_memory = search[:, :, None] & search[:, None, :]
        return {
            "kinds": kinds, "masks": masks, "rec2rec": rec2rec, "search2search": search2search, "cross": cross,
            "rec_fused": self.rec_fusion(rec2rec, cross, rec_memory),
            "search_fused": self.search_fusion(search2search, cross, search_memory),
        }

    # ----- scoring -----------------------------------------------------------------------------
    def _task_scores(self, encoded, rows, users, candidates, task_query, task: int) -> torch.Tensor:
        item = self.item_repr(candidates)  # [b, K, d]
        kinds = encoded["kinds"][rows]
        rec_interest = self.rec_pooling(encoded["rec_fused"][rows], item, kinds == REC)
        search_interest = self.search_pooling(encoded["search_fused"][rows], item, kinds == SEARCH)
        expand = item.shape[:2] + (-1,)
        user = self.user_embedding(users).unsqueeze(1).expand(expand)
        features = torch.cat([rec_interest, search_interest, item, user, task_query.unsqueeze(1).expand(expand)], -1)
        return self.heads(features, task)

    def _scores(self, interaction, encoded, candidates: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] of the candidates, each row scored by the head of its target kind."""
        kinds = interaction[TARGET_KIND]
        users = interaction[self.USER_ID]
        scores = candidates.new_zeros(candidates.shape, dtype=torch.float)
        for task, kind in ((REC_TASK, REC), (SEARCH_TASK, SEARCH)):
            rows = torch.nonzero(kinds == kind).squeeze(-1)
            if rows.numel() == 0:
                continue
            if kind == REC:
                task_query = self.rec_task_query.expand(rows.numel(), -1)
            else:
                task_query = self.query_repr(interaction[TARGET_SESSION][rows])
            scores[rows] = self._task_scores(encoded, rows, users[rows], candidates[rows], task_query, task)
        return scores

    def score_candidates(self, interaction, candidates: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] of the candidate items [B, K] for each row's target kind."""
        encoded = self.encode_history(interaction)
        return torch.cat(
            [self._scores(interaction, encoded, chunk) for chunk in candidates.split(self.score_chunk, dim=1)], dim=1
        )

    def predict(self, interaction) -> torch.Tensor:
        return self.score_candidates(interaction, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        batch = interaction[self.USER_ID].size(0)
        all_items = torch.arange(self.n_items, device=self.device).unsqueeze(0).expand(batch, -1)
        return self.score_candidates(interaction, all_items)

    # ----- losses ------------------------------------------------------------------------------
    def _ranking_losses(self, interaction, encoded) -> Tuple[torch.Tensor, torch.Tensor]:
        positives = interaction[self.ITEM_ID].unsqueeze(1)
        negatives = torch.randint(1, self.n_items, (positives.size(0), self.train_negatives), device=positives.device)
        logits = self._scores(interaction, encoded, torch.cat([positives, negatives], dim=1))
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        weights = torch.cat([torch.ones_like(positives), (negatives != positives).long()], dim=1).float()
        per_row = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum(1) / weights.sum(1)
        kinds = interaction[TARGET_KIND]
        losses = [per_row[kinds == kind].mean() if bool((kinds == kind).any()) else per_row.new_zeros(()) for kind in (REC, SEARCH)]
        return losses[0], losses[1]

    def _history_alignment(self, encoded, users: torch.Tensor) -> torch.Tensor:
        """search->rec vs rec->rec and rec->search vs search->search, per user (InfoNCE)."""
        same_user = users[:, None] == users[None, :]
        total = users.new_zeros((), dtype=torch.float)
        pairs = (("search2rec", "rec2rec", self.search2rec_cl), ("rec2search", "search2search", self.rec2search_cl))
        for cross_view, own_view, loss in pairs:
            positions = encoded["masks"][cross_view].any(-1).unsqueeze(-1).float()  # behaviours with a transition
            counts = positions.sum(1)
            rows = counts.squeeze(-1) > 0
            cross_mean = (encoded["cross"] * positions).sum(1)[rows] / counts[rows]
            own_mean = (encoded[own_view] * positions).sum(1)[rows] / counts[rows]
            total = total + loss(cross_mean, own_mean, same_user[rows][:, rows])
        return total

    def _query_item_alignment(self, interaction) -> torch.Tensor:
        """Query vs first clicked item of search sessions in the batch (InfoNCE, at most B pairs)."""
        sessions = torch.cat([interaction[HISTORY_SESSION].flatten(), interaction[TARGET_SESSION]])
        sessions = torch.unique(sessions[sessions > 0])
        limit = interaction[self.USER_ID].size(0)
        if sessions.numel() > limit:
            sessions = sessions[torch.randperm(sessions.numel(), device=sessions.device)[:limit]]
        query_ids, items = self.session_query_id[sessions], self.session_clicks[sessions, 0]
        false_negative = (query_ids[:, None] == query_ids[None, :]) | (items[:, None] == items[None, :])
        return self.query_item_cl(self.query_repr(sessions), self.item_repr(items), false_negative)

    def calculate_loss(self, interaction) -> torch.Tensor:
        encoded = self.encode_history(interaction)
        rec_loss, search_loss = self._ranking_losses(interaction, encoded)
        loss = rec_loss + self.search_loss_weight * search_loss
        if self.history_cl_weight > 0:
            loss = loss + self.history_cl_weight * self._history_alignment(encoded, interaction[self.USER_ID])
        if self.query_item_cl_weight > 0:
            loss = loss + self.query_item_cl_weight * self._query_item_alignment(interaction)
        return loss
