"""Lite-LLM4Rec: a recommendation LLM over one LLM vector per item, scored by an item projection head.

Reference:
    Hanbing Wang, Xiaorui Liu, Wenqi Fan, Xiangyu Zhao, Venkataramana Kini, Devendra Pratap Yadav,
    Fei Wang, Zhen Wen, Jiliang Tang and Hui Liu. "Rethinking Large Language Model Architectures
    for Sequential Recommendations." In Proceedings of IJCNLP-AACL 2025. arXiv:2402.09543.

Hierarchical: an item LLM compresses each item's text into one vector, computed once and cached
(the dataset's ``item_text_emb``: :class:`recbole_llm.data.TextSeqDataset` with a causal LM as
``text_encoder``, pooled as ``text_pooling`` from ``text_llm_layer``). A linear projection maps
those vectors to the width of the recommendation LLM, which reads the history as
``inputs_embeds``; its last-layer hidden state at the latest item goes through the item
projection head (a linear layer over all items) and the model trains with cross-entropy. One
forward pass gives the full-ranking scores, with no beam search. The recommendation LLM is
fine-tuned fully, with LoRA adapters (peft), or kept frozen (``litellm4rec_finetune``).
"""
from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_llm.data import TextSeqDataset
from recbole_llm.llm.loader import load_causal_lm

FINETUNE_MODES = ("full", "lora", "frozen")


def _recommendation_llm(config):
    """The decoder stack of the causal LM (no LM head), trainable as ``litellm4rec_finetune`` says."""
    mode = config["litellm4rec_finetune"]
    if mode not in FINETUNE_MODES:
        raise ValueError(f"litellm4rec_finetune must be one of {FINETUNE_MODES}, got {mode!r}")
    causal_lm, _ = load_causal_lm(config["litellm4rec_llm"], device="cpu", llm_cache_dir=config["litellm4rec_llm_cache_dir"])
    decoder = causal_lm.base_model
    decoder.get_input_embeddings().requires_grad_(False)  # the history enters as inputs_embeds
    if mode == "full":
        for name, parameter in decoder.named_parameters():
            parameter.requires_grad_(not name.startswith("embed_tokens"))
    elif mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=int(config["litellm4rec_lora_r"]), lora_alpha=int(config["litellm4rec_lora_alpha"]),
                          lora_dropout=float(config["litellm4rec_lora_dropout"]),
                          target_modules=list(config["litellm4rec_lora_targets"]))
        decoder = get_peft_model(decoder, lora)
    return decoder.train()


class LiteLLM4Rec(SequentialRecommender):
    """Recommendation LLM over cached item-LLM vectors with an item projection head (CE over all items)."""

    dataset_class = TextSeqDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["loss_type"] != "CE":
            raise ValueError(f"LiteLLM4Rec trains with loss_type 'CE' (cross-entropy over all items), got {config['loss_type']!r}")
        self.register_buffer("item_vectors", dataset.item_text_emb.clone().float())  # [n_items, item LLM width]
        self.rec_llm = _recommendation_llm(config)
        width = int(self.rec_llm.config.hidden_size)
        self.projection = nn.Linear(self.item_vectors.shape[1], width)
        self.dropout = nn.Dropout(float(config["litellm4rec_dropout"]))
        self.item_head = nn.Linear(width, self.n_items)
        self.loss_fct = nn.CrossEntropyLoss()

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden state of the recommendation LLM at each history's latest item: [B, width]."""
        inputs = self.dropout(self.projection(self.item_vectors[item_seq]))
        attention_mask = (item_seq != 0).long()
        hidden = self.rec_llm(inputs_embeds=inputs, attention_mask=attention_mask).last_hidden_state
        return self.gather_indexes(hidden, item_seq_len - 1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        scores = self.full_sort_predict(interaction)
        return self.loss_fct(scores, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        # Sampled evaluation repeats each history once per candidate: run each distinct one once.
        histories = torch.cat([interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN].unsqueeze(1)], dim=1)
        distinct, inverse = torch.unique(histories, dim=0, return_inverse=True)
        hidden = self.forward(distinct[:, :-1], distinct[:, -1])[inverse]
        return (hidden * self.item_head.weight[interaction[self.ITEM_ID]]).sum(dim=-1) + self.item_head.bias[interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        hidden = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_head(hidden)  # [B, n_items]
