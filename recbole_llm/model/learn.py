"""LEARN: frozen LLM item embeddings aligned to user preference by a twin-tower Transformer.

Reference:
    Jian Jia, Yipei Wang, Yan Li, Honggang Chen, Xuehan Bai, Zhaocheng Liu, Jian Liang, Quan Chen,
    Han Li, Peng Jiang and Kun Gai. "LEARN: Knowledge Adaptation from Large Language Model to
    Recommendation for Practical Industrial Application." AAAI 2025. arXiv:2405.03988.

Content extraction: each item's text is embedded once by a frozen causal LM (``text_encoder``,
default the packaged SmolLM2-135M, hidden states of the last layer mean-pooled over the text
tokens; the paper uses a 7B LLM). Preference alignment (:class:`PreferenceAlignment`): a linear
projection to ``hidden_size``, learned position embeddings, a causal Transformer, a linear output
layer and L2 normalisation. The user tower runs it over the history and takes the last position;
the item tower is the same module (the same weights) over a one-item sequence. Training:
user-to-item in-batch contrastive cross-entropy on cosine times ``logit_scale`` (20 in the
release); in-batch pairs whose items equal the positive are masked (RecBole's samples hold one
target per history prefix, never the padding item). Every item's tower output is scored for full
ranking; ``predict`` scores the given items.

Pre-training then fine-tuning: train on a mix of converted datasets
(``python -m recbole_llm.data.multi_domain``), then on the target with ``pretrained_file`` set to
the pre-training checkpoint. The module has no per-item parameters, so all of it transfers.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.model._layers import init_weights, transformer_encoder

logger = logging.getLogger(__name__)


class PreferenceAlignment(nn.Module):
    """Text embeddings [B, L, d] -> L2-normalised preference vectors [B, L, hidden_size] (causal)."""

    def __init__(self, config, text_dim: int, max_len: int):
        super().__init__()
        hidden = config["hidden_size"]
        self.input_projection = nn.Linear(text_dim, hidden)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.trm_encoder = transformer_encoder(config, hidden)
        self.output_projection = nn.Linear(hidden, hidden)

    def forward(self, text_emb: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(text_emb.size(1), device=text_emb.device)
        hidden = self.input_projection(text_emb) + self.position_embedding(positions).unsqueeze(0)
        hidden = self.dropout(self.LayerNorm(hidden))
        hidden = self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=False)[-1]
        return F.normalize(self.output_projection(hidden), dim=-1)


class LEARN(SequentialRecommender):
    """Twin towers sharing one preference-alignment module over frozen LLM item embeddings."""

    dataset_class = TextSeqDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.logit_scale = float(config["logit_scale"])
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {config['logit_scale']!r}")
        self.initializer_range = config["initializer_range"]
        self.register_buffer("item_text_emb", dataset.item_text_emb.clone(), persistent=False)
        self.alignment = PreferenceAlignment(config, dataset.item_text_emb.shape[1], self.max_seq_length)
        self.apply(lambda module: init_weights(module, self.initializer_range))
        if config["pretrained_file"]:
            self.load_pretrained(config["pretrained_file"])

    def load_pretrained(self, path: str) -> None:
        """Load the preference-alignment module of a LEARN checkpoint (e.g. multi-domain pre-training)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained_file {path!r} does not exist (a LEARN checkpoint .pth)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("state_dict", checkpoint)
        own = self.state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise ValueError(
                f"pretrained_file {path!r} is not a LEARN checkpoint of this shape: use the pre-training "
                "values of hidden_size, n_layers, n_heads, inner_size, MAX_ITEM_LIST_LENGTH and the same text_encoder"
            )
        self.load_state_dict(state)
        logger.info("loaded the preference-alignment module from %s", path)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """User tower: [B, hidden_size] unit vectors from the last history position."""
        aligned = self.alignment(self.item_text_emb[item_seq], self.get_attention_mask(item_seq))
        return self.gather_indexes(aligned, item_seq_len - 1)

    def item_tower(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item tower: the same module over one-item sequences; all items when ``items`` is None."""
        ids = torch.arange(self.n_items, device=self.item_text_emb.device) if items is None else items
        single = ids.reshape(-1, 1)
        return self.alignment(self.item_text_emb[single], self.get_attention_mask(single))[:, 0].reshape(*ids.shape, -1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        positives = interaction[self.POS_ITEM_ID]
        logits = self.logit_scale * users @ self.item_tower(positives).t()  # [B, B]
        same_item = positives.unsqueeze(0) == positives.unsqueeze(1)
        same_item.fill_diagonal_(False)
        logits = logits.masked_fill(same_item | (positives == 0).unsqueeze(0), float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(positives), device=logits.device))

    def predict(self, interaction) -> torch.Tensor:
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.logit_scale * (users * self.item_tower(interaction[self.ITEM_ID])).sum(dim=-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.logit_scale * users @ self.item_tower().t()  # [B, n_items]
