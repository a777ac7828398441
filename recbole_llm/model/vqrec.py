"""VQ-Rec: item text -> discrete codes -> code embeddings, for transferable sequential recommendation.

Reference:
    Yupeng Hou, Zhankui He, Julian McAuley, Wayne Xin Zhao. "Learning Vector-Quantized Item
    Representation for Transferable Sequential Recommenders." TheWebConf (WWW) 2023.
    arXiv:2210.12316.

Each item's text embedding is quantized by OPQ + PQ into ``code_dim`` codes (one per sub-codebook
of ``code_cap`` codes, :mod:`recbole_llm.quantize.pq`); the item representation is the mean of
its code embeddings (plus an ID embedding in ``transductive_ft``). A causal Transformer encodes
the sequence; scores are cosine similarities over ``temperature``.

Stages (``train_stage``): ``pretrain`` (sequence-item contrastive loss with in-batch and
semi-synthetic negatives), ``inductive_ft`` (codes only: unseen items work) and
``transductive_ft`` (codes plus ID embeddings). A model built with ``pretrained_file`` starts from
that checkpoint's code embeddings and encoder; fine-tuning it first learns
a per-sub-codebook permutation of the pre-trained code embeddings (hard Hungarian assignment in
the forward pass, Sinkhorn gradient in the backward pass), then fixes it and trains the model;
:class:`recbole_llm.trainer.vqrec.VQRecTrainer` runs that schedule.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from scipy.optimize import linear_sum_assignment
from torch import nn

from recbole_llm.model._layers import transformer_encoder
from recbole_llm.data.text_dataset import TextSeqDataset
from recbole_llm.quantize.pq import cached_item_codes
from recbole_llm.trainer.vqrec import VQRecTrainer
from recbole_llm.utils import cache_dir

logger = logging.getLogger(__name__)

TRAIN_STAGES = ("pretrain", "inductive_ft", "transductive_ft")
# Parameters a pre-trained checkpoint hands to fine-tuning (item codes and IDs are per dataset).
TRANSFERRED_PREFIXES = ("code_embedding.", "position_embedding.", "trm_encoder.", "LayerNorm.")
ENCODER_PREFIXES = ("position_embedding.", "trm_encoder.")


def log_sinkhorn(log_scores: torch.Tensor, n_iter: int) -> torch.Tensor:
    """Log of the doubly stochastic matrices nearest to ``exp(log_scores)`` [..., n, n]."""
    for _ in range(n_iter):
        log_scores = log_scores - torch.logsumexp(log_scores, dim=-1, keepdim=True)
        log_scores = log_scores - torch.logsumexp(log_scores, dim=-2, keepdim=True)
    return log_scores


def hard_assignment(scores: torch.Tensor) -> torch.Tensor:
    """For each [n, n] score matrix, the bijection maximising the summed scores: [..., n] long.

    ``result[d, i] = j`` maps row ``i`` to column ``j`` (Hungarian algorithm). Sinkhorn only
    adds row and column constants in log space, so this is also the argmax of its output.
    """
    matrices = scores.detach().cpu().double().numpy().reshape(-1, *scores.shape[-2:])
    columns = [linear_sum_assignment(matrix, maximize=True)[1] for matrix in matrices]
    return torch.as_tensor(np.stack(columns), device=scores.device).reshape(scores.shape[:-1])


class CodePermutation(nn.Module):
    """Learnable permutation of each sub-codebook's ``code_cap`` code embeddings.

    The forward pass returns hard permutation matrices [n_codebooks, code_cap, code_cap] whose
    gradient is that of their Sinkhorn relaxation (straight-through), so the score matrix learns
    while every forward pass uses a true bijection. Scores start at the identity.
    """

    def __init__(self, n_codebooks: int, code_cap: int, tau: float = 1.0, n_iter: int = 10):
        super().__init__()
        self.tau = tau
        self.n_iter = n_iter
        self.scores = nn.Parameter(torch.eye(code_cap).repeat(n_codebooks, 1, 1))

    def assignment(self) -> torch.Tensor:
        """[n_codebooks, code_cap] long: code ``i`` of codebook ``d`` takes embedding ``[d, result[d, i]]``."""
        return hard_assignment(self.scores)

    def forward(self) -> torch.Tensor:
        soft = log_sinkhorn(self.scores / self.tau, self.n_iter).exp()
        hard = F.one_hot(self.assignment(), soft.shape[-1]).to(soft.dtype)
        return hard + soft - soft.detach()


class VQRec(SequentialRecommender):
    """VQ-Rec as a RecBole sequential model; see the module docstring."""

    dataset_class = TextSeqDataset
    trainer_class = VQRecTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = config["train_stage"]
        if self.train_stage not in TRAIN_STAGES:
            raise ValueError(f"train_stage must be one of {TRAIN_STAGES}, got {self.train_stage!r}")
        self.code_dim = config["code_dim"]
        self.code_cap = config["code_cap"]
        self.temperature = config["temperature"]
        if not self.temperature or self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        self.fake_idx_ratio = config["fake_idx_ratio"]
        self.hidden_size = config["hidden_size"]
        if config["loss_type"] != "CE":
            raise ValueError(f"VQRec trains with loss_type: CE, got {config['loss_type']!r}")

        self.register_buffer("item_codes", self._load_item_codes(config, dataset))
        self.register_buffer(
            "codebook_offsets", torch.arange(self.code_dim, dtype=torch.long) * self.code_cap + 1
        )
        self.code_embedding = nn.Embedding(self.code_dim * self.code_cap + 1, self.hidden_size, padding_idx=0)
        self.item_id_embedding = (
            nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
            if self.train_stage == "transductive_ft" else None
        )
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = transformer_encoder(config, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.initializer_range = config["initializer_range"]
        self.apply(self._init_weights)

        self.permutation = None
        if config["pretrained_file"] and config["permutation_epochs"] > 0:
            self.permutation = CodePermutation(
                self.code_dim, self.code_cap, config["sinkhorn_tau"], config["sinkhorn_iter"]
            )
        self.register_buffer("permutation_active", torch.tensor(False))
        if config["pretrained_file"]:
            self.load_pretrained(config["pretrained_file"])

    # ----- construction -------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def _load_item_codes(self, config, dataset) -> torch.Tensor:
        """[n_items, code_dim] rows of the code-embedding table; row 0 (padding) is all 0.

        The quantizer is fitted on the items of the training split only and cached beside the
        dataset (``cache_dir(config, "vqrec")``).
        """
        embeddings = dataset.item_text_emb.numpy()
        codes = cached_item_codes(
            embeddings[1:],
            self._training_items(dataset) - 1,
            cache_dir(config, "vqrec"),
            code_dim=self.code_dim,
            code_cap=self.code_cap,
            seed=config["seed"],
            threads=config["pq_threads"],
            opq_iter=config["opq_iter"],
        )
        table_rows = torch.zeros(len(embeddings), self.code_dim, dtype=torch.long)
        table_rows[1:] = torch.from_numpy(codes) + torch.arange(self.code_dim) * self.code_cap + 1
        return table_rows

    def _training_items(self, dataset) -> np.ndarray:
        """Internal ids (> 0) of the items in the training interactions (targets and histories)."""
        items = [dataset.inter_feat[self.ITEM_ID].numpy().ravel()]
        if self.ITEM_SEQ in dataset.inter_feat:
            items.append(dataset.inter_feat[self.ITEM_SEQ].numpy().ravel())
        unique = np.unique(np.concatenate(items))
        return unique[unique > 0]

    # ----- item and sequence representations ---------------------------------------------
    def code_table(self) -> torch.Tensor:
        """The code-embedding table, permuted per sub-codebook while the permutation learns."""
        weight = self.code_embedding.weight
        if self.permutation is None or not bool(self.permutation_active):
            return weight
        books = weight[1:].view(self.code_dim, self.code_cap, self.hidden_size)
        if torch.is_grad_enabled():
            permuted = torch.bmm(self.permutation(), books)
        else:  # the exact rows, no straight-through arithmetic
            rows = self.permutation.assignment().unsqueeze(-1).expand(-1, -1, self.hidden_size)
            permuted = torch.gather(books, 1, rows)
        return torch.cat([weight[:1], permuted.reshape(-1, self.hidden_size)], dim=0)

    def _pool_codes(self, codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(codes, table, mode="mean", padding_idx=0)

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, hidden_size]: mean code embedding (+ ID embedding in ``transductive_ft``)."""
        items = self._pool_codes(self.item_codes, self.code_table())
        if self.item_id_embedding is not None:
            items = items + self.item_id_embedding.weight
        return items

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """L2-normalised user representations [B, hidden_size] (the last position's output)."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        hidden = self.LayerNorm(items[item_seq] + self.position_embedding(positions))
        hidden = self.dropout(hidden)
        mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]
        return F.normalize(self.gather_indexes(output, item_seq_len - 1), dim=-1)

    def _user_and_items(self, interaction):
        items = self.item_embeddings()
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], items)
        return user, F.normalize(items, dim=-1)

    # ----- losses -------------------------------------------------------------------------
    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.train_stage == "pretrain":
            return self._contrastive_loss(interaction)
        user, items = self._user_and_items(interaction)
        logits = user @ items.t() / self.temperature
        logits[:, 0] = float("-inf")  # the padding item is never a target
        return F.cross_entropy(logits, interaction[self.POS_ITEM_ID])

    def semi_synthetic_items(self, positives: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Hard negatives [B, hidden_size]: each code of a positive item is replaced by a random
        code of its sub-codebook with probability ``fake_idx_ratio``, then pooled."""
        codes = self.item_codes[positives]
        random_codes = torch.randint_like(codes, self.code_cap) + self.codebook_offsets
        replaced = torch.rand(codes.shape, device=codes.device) < self.fake_idx_ratio
        return self._pool_codes(torch.where(replaced, random_codes, codes), table)

    def _contrastive_loss(self, interaction) -> torch.Tensor:
        """Sequence-item InfoNCE: in-batch targets and one semi-synthetic item per row as negatives;
        other rows sharing the same target item are masked out with -inf."""
        table = self.code_table()
        items = self._pool_codes(self.item_codes, table)
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], items)
        positives = interaction[self.POS_ITEM_ID]
        targets = F.normalize(items[positives], dim=-1)
        logits = user @ targets.t() / self.temperature
        same_target = positives.unsqueeze(0) == positives.unsqueeze(1)
        same_target.fill_diagonal_(False)
        logits = logits.masked_fill(same_target, float("-inf"))
        fake = F.normalize(self.semi_synthetic_items(positives, table), dim=-1)
        fake_logits = (user * fake).sum(dim=-1, keepdim=True) / self.temperature
        labels = torch.arange(len(positives), device=positives.device)
        return F.cross_entropy(torch.cat([logits, fake_logits], dim=1), labels)

    # ----- evaluation -------------------------------------------------------------------------
    def predict(self, interaction) -> torch.Tensor:
        user, items = self._user_and_items(interaction)
        return (user * items[interaction[self.ITEM_ID]]).sum(dim=-1) / self.temperature

    def full_sort_predict(self, interaction) -> torch.Tensor:
        user, items = self._user_and_items(interaction)
        return user @ items.t() / self.temperature

    # ----- transfer from a pre-trained checkpoint ------------------------------------------
    def load_pretrained(self, path: str) -> List[str]:
        """Copy the code embeddings and the sequence encoder of a pre-trained checkpoint.

        Item codes and ID embeddings belong to the pre-training data and are not copied. Returns
        the names of the copied tensors.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained_file {path!r} does not exist (a VQRec checkpoint .pth)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state: Dict[str, torch.Tensor] = checkpoint.get("state_dict", checkpoint)
        own = self.state_dict()
        copied = [key for key in state if key.startswith(TRANSFERRED_PREFIXES)]
        if "code_embedding.weight" not in copied:
            raise ValueError(f"pretrained_file {path!r} holds no VQRec code embeddings")
        for key in copied:
            if key not in own or own[key].shape != state[key].shape:
                raise ValueError(
                    f"pretrained_file {path!r}: {key} has shape {tuple(state[key].shape)}, this model "
                    f"expects {tuple(own[key].shape) if key in own else 'no such tensor'}; use the "
                    "pre-training values of hidden_size, n_layers, inner_size, code_dim, code_cap "
                    "and MAX_ITEM_LIST_LENGTH"
                )
        self.load_state_dict({key: state[key] for key in copied}, strict=False)
        logger.info("loaded %d pre-trained tensors from %s", len(copied), path)
        return copied

    def learn_permutation(self) -> None:
        """Train the code permutation only; everything else is frozen."""
        if self.permutation is None:
            raise RuntimeError("no code permutation: set pretrained_file and permutation_epochs > 0")
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.permutation.scores.requires_grad_(True)
        self.permutation_active.fill_(True)

    def fix_permutation(self) -> None:
        """Write the hard permutation into the code-embedding table and stop learning it."""
        with torch.no_grad():
            self.code_embedding.weight.copy_(self.code_table())
        self.permutation_active.fill_(False)
        self.permutation.scores.requires_grad_(False)

    def set_trainable(self, encoder: bool) -> None:
        """Make every parameter but the permutation trainable; the sequence encoder only if ``encoder``."""
        for name, parameter in self.named_parameters():
            if name.startswith("permutation."):
                continue
            parameter.requires_grad_(encoder or not name.startswith(ENCODER_PREFIXES))

    def permutation_parameters(self) -> List[nn.Parameter]:
        return [] if self.permutation is None else [self.permutation.scores]
