"""VQ-Rec: item text -> discrete codes -> code embeddings, for transferable sequential recommendation.

Reference:
    Yupeng Hou, Zhankui He, Julian McAuley, Wayne Xin Zhao. "Learning Vector-Quantized Item
    Representation for Transferable Sequential Recommenders." TheWebConf (WWW) 2023.
    arXiv:2210.12316.

Each item's text embedding is quantized by OPQ + PQ into ``n_codebooks`` codes (one per
sub-codebook of ``codebook_size`` codes, :mod:`recbole_llm.quantize.pq`; config keys ``code_dim``
and ``code_cap``, the upstream names), fitted here or read from a released faiss index
(``pq_index_file``); the item representation is the mean of
its code embeddings (plus an ID embedding in ``transductive_ft``). A causal Transformer encodes
the sequence; scores are cosine similarities over ``temperature``.

Stages (``train_stage``): ``pretrain`` (sequence-item contrastive loss with in-batch and
semi-synthetic negatives), ``inductive_ft`` (codes only: unseen items work) and
``transductive_ft`` (codes plus ID embeddings). A model built with ``pretrained_file`` starts from
that checkpoint's code embeddings and encoder; fine-tuning it first learns
a per-sub-codebook permutation of the pre-trained code embeddings (hard Hungarian assignment in
the forward pass, Sinkhorn gradient in the backward pass), then fixes it and trains the model;
:class:`recbole_llm.trainer.transfer.TransferTrainer` runs that schedule. ``pretrained_file`` may
also be a checkpoint of the authors' release (RUCAIBox/VQ-Rec): its names and code-table layout
are mapped to ours (:func:`from_official_state`).
"""
from __future__ import annotations

import warnings
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from scipy.optimize import linear_sum_assignment
from torch import nn

from recbole_llm.data.transfer_dataset import TransferTextDataset
from recbole_llm.model._layers import init_weights, transformer_encoder
from recbole_llm.model._transfer import StateDict, copy_transferred, read_state_dict
from recbole_llm.quantize.pq import cached_item_codes, released_item_codes
from recbole_llm.trainer.transfer import TransferTrainer
from recbole_llm.utils import cache_dir

TRAIN_STAGES = ("pretrain", "inductive_ft", "transductive_ft")
# Parameters a pre-trained checkpoint hands to fine-tuning (item codes and IDs are per dataset).
TRANSFERRED_PREFIXES = ("code_embedding.", "position_embedding.", "trm_encoder.", "LayerNorm.")
ENCODER_PREFIXES = ("position_embedding.", "trm_encoder.")
SIZE_KEYS = "hidden_size, n_layers, inner_size, code_dim, code_cap and MAX_ITEM_LIST_LENGTH"
OFFICIAL_CODE_TABLE = "pq_code_embedding.weight"


def from_official_state(state: StateDict) -> StateDict:
    """A RUCAIBox/VQ-Rec state dict with our names and code-table layout.

    The release keeps one padding row per sub-codebook (``pq_code_embedding``:
    ``[n_codebooks * (codebook_size + 1), hidden]``, code ``c`` of book ``d`` at row
    ``d * (codebook_size + 1) + 1 + c``); ours has one padding row 0 and code ``c`` of book ``d``
    at row ``1 + d * codebook_size + c``. Its permutation logits (``trans_matrix``
    ``[n_codebooks, codebook_size + 1, codebook_size + 1]``) are dropped: ours start at the
    identity. A state dict without ``pq_code_embedding`` is returned unchanged.
    """
    if OFFICIAL_CODE_TABLE not in state:
        return state
    official = state[OFFICIAL_CODE_TABLE]
    trans = state.get("trans_matrix")
    if trans is None or trans.dim() != 3 or trans.shape[1] != trans.shape[2]:
        raise ValueError(
            "a RUCAIBox/VQ-Rec checkpoint holds trans_matrix [n_codebooks, codebook_size + 1, codebook_size + 1] "
            "beside pq_code_embedding; it is missing or malformed"
        )
    n_codebooks, codebook_size = trans.shape[0], trans.shape[1] - 1
    if official.shape[0] != n_codebooks * (codebook_size + 1):
        raise ValueError(
            f"pq_code_embedding has {official.shape[0]} rows, expected n_codebooks * (codebook_size + 1) = "
            f"{n_codebooks} * {codebook_size + 1}"
        )
    books = official.view(n_codebooks, codebook_size + 1, -1)[:, 1:]
    table = torch.cat([official.new_zeros(1, official.shape[1]), books.reshape(-1, official.shape[1])])
    mapped = {key: value for key, value in state.items() if key not in (OFFICIAL_CODE_TABLE, "trans_matrix")}
    mapped["code_embedding.weight"] = table
    return mapped


def to_official_state(state: StateDict, n_codebooks: int, codebook_size: int) -> StateDict:
    """Our VQRec state dict in the release's names and layout (the inverse of :func:`from_official_state`,
    with an identity-initialised ``trans_matrix``); for exchanging checkpoints with RUCAIBox/VQ-Rec."""
    table = state["code_embedding.weight"]
    books = table[1:].view(n_codebooks, codebook_size, -1)
    official = torch.cat([books.new_zeros(n_codebooks, 1, books.shape[-1]), books], dim=1)
    mapped = {key: value for key, value in state.items()
              if key.startswith(TRANSFERRED_PREFIXES) and key != "code_embedding.weight"}
    mapped[OFFICIAL_CODE_TABLE] = official.reshape(-1, books.shape[-1])
    mapped["trans_matrix"] = torch.eye(codebook_size + 1).repeat(n_codebooks, 1, 1)
    return mapped


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


def mean_pooling_matrices(codes: torch.Tensor, n_rows: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sparse CSR matrices ``P`` [n, n_rows] and ``P.T`` with ``P @ table`` equal to
    ``F.embedding_bag(codes, table, mode="mean", padding_idx=0)``: row ``i`` averages the table
    rows of its non-zero codes (a row of only padding codes is zero)."""
    present = codes != 0
    items, slots = present.nonzero(as_tuple=True)
    counts = present.sum(dim=1).clamp(min=1).to(dtype)
    indices = torch.stack([items, codes[items, slots]])
    pool = torch.sparse_coo_tensor(indices, 1.0 / counts[items], (len(codes), n_rows), check_invariants=True).coalesce()
    with warnings.catch_warnings():  # torch calls its CSR layout beta; these two products are all we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return pool.to_sparse_csr(), pool.t().coalesce().to_sparse_csr()


class _SparsePooling(torch.autograd.Function):
    """``pool @ table`` whose backward is ``pool_t @ grad`` with the transpose built once, not per step."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, pool: torch.Tensor, pool_t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pool_t)
        return pool @ table

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (pool_t,) = ctx.saved_tensors
        return pool_t @ grad, None, None


class CodePermutation(nn.Module):
    """Learnable permutation of each sub-codebook's ``codebook_size`` code embeddings.

    The forward pass returns hard permutation matrices [n_codebooks, codebook_size, codebook_size] whose
    gradient is that of their Sinkhorn relaxation (straight-through), so the score matrix learns
    while every forward pass uses a true bijection. Scores start at the identity.
    """

    def __init__(self, n_codebooks: int, codebook_size: int, tau: float = 1.0, n_iter: int = 10):
        super().__init__()
        self.tau = tau
        self.n_iter = n_iter
        self.scores = nn.Parameter(torch.eye(codebook_size).repeat(n_codebooks, 1, 1))

    def assignment(self) -> torch.Tensor:
        """[n_codebooks, codebook_size] long: code ``i`` of book ``d`` takes embedding ``[d, result[d, i]]``."""
        return hard_assignment(self.scores)

    def forward(self) -> torch.Tensor:
        soft = log_sinkhorn(self.scores / self.tau, self.n_iter).exp()
        hard = F.one_hot(self.assignment(), soft.shape[-1]).to(soft.dtype)
        return hard + soft - soft.detach()


class VQRec(SequentialRecommender):
    """VQ-Rec as a RecBole sequential model; see the module docstring."""

    dataset_class = TransferTextDataset
    trainer_class = TransferTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = config["train_stage"]
        if self.train_stage not in TRAIN_STAGES:
            raise ValueError(f"train_stage must be one of {TRAIN_STAGES}, got {self.train_stage!r}")
        self.n_codebooks = config["code_dim"]  # the upstream key names
        self.codebook_size = config["code_cap"]
        self.temperature = config["temperature"]
        if not self.temperature or self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        self.fake_idx_ratio = config["fake_idx_ratio"]
        self.hidden_size = config["hidden_size"]
        if config["loss_type"] != "CE":
            raise ValueError(f"VQRec trains with loss_type: CE, got {config['loss_type']!r}")

        self.register_buffer("item_codes", self._load_item_codes(config, dataset))
        self.register_buffer("codebook_offsets", self.codebook_offsets_for(self.n_codebooks, self.codebook_size))
        self.code_embedding = nn.Embedding(self.n_codebooks * self.codebook_size + 1, self.hidden_size, padding_idx=0)
        self.item_id_embedding = (
            nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
            if self.train_stage == "transductive_ft" else None
        )
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = transformer_encoder(config, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.apply(lambda module: init_weights(module, config["initializer_range"]))

        self.permutation = None
        if config["pretrained_file"] and config["permutation_epochs"] > 0:
            self.permutation = CodePermutation(
                self.n_codebooks, self.codebook_size, config["sinkhorn_tau"], config["sinkhorn_iter"]
            )
        self.register_buffer("permutation_active", torch.tensor(False))
        self._pooling = None  # (key, P, P.T) of item_codes; see _item_pooling
        if config["pretrained_file"]:
            self.load_pretrained(config["pretrained_file"])

    # ----- construction -------------------------------------------------------------------
    def _load_item_codes(self, config, dataset) -> torch.Tensor:
        """[n_items, n_codebooks] rows of the code-embedding table; row 0 (padding) is all 0.

        With ``pq_index_file`` the codes come from that released faiss index; otherwise the
        quantizer is fitted on the items of the training split only and cached beside the dataset
        (``cache_dir(config, "vqrec")``).
        """
        embeddings = dataset.item_text_emb.numpy()
        if config["pq_index_file"]:
            codes = released_item_codes(config["pq_index_file"], embeddings[1:], self.n_codebooks, self.codebook_size)
        else:
            codes = cached_item_codes(
                embeddings[1:],
                self._training_items(dataset) - 1,
                cache_dir(config, "vqrec"),
                code_dim=self.n_codebooks,
                code_cap=self.codebook_size,
                seed=config["seed"],
                threads=config["pq_threads"],
                opq_iter=config["opq_iter"],
            )
        table_rows = torch.zeros(len(embeddings), self.n_codebooks, dtype=torch.long)
        table_rows[1:] = torch.from_numpy(codes) + self.codebook_offsets_for(self.n_codebooks, self.codebook_size)
        return table_rows

    @staticmethod
    def codebook_offsets_for(n_codebooks: int, codebook_size: int) -> torch.Tensor:
        """Row of code 0 of each sub-codebook in the code-embedding table (row 0 is padding)."""
        return torch.arange(n_codebooks, dtype=torch.long) * codebook_size + 1

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
        books = weight[1:].view(self.n_codebooks, self.codebook_size, self.hidden_size)
        if torch.is_grad_enabled():
            permuted = torch.bmm(self.permutation(), books)
        else:  # the exact rows, no straight-through arithmetic
            rows = self.permutation.assignment().unsqueeze(-1).expand(-1, -1, self.hidden_size)
            permuted = torch.gather(books, 1, rows)
        return torch.cat([weight[:1], permuted.reshape(-1, self.hidden_size)], dim=0)

    def _pool_codes(self, codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(codes, table, mode="mean", padding_idx=0)

    def _item_pooling(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sparse mean-pooling matrices of ``item_codes``, rebuilt only when the codes (their
        storage, device or version: loading a state dict bumps it) or the dtype change."""
        codes = self.item_codes
        key = (codes.device, codes.data_ptr(), codes._version, dtype)
        if self._pooling is None or self._pooling[0] != key:
            self._pooling = (key, *mean_pooling_matrices(codes, self.code_embedding.num_embeddings, dtype))
        return self._pooling[1], self._pooling[2]

    def _pool_items(self, table: torch.Tensor) -> torch.Tensor:
        """[n_items, hidden_size]: every item's mean code embedding from ``table``.

        Every item is pooled at each step, so the pooling is a sparse product with a fixed
        [n_items, table rows] matrix (forward) and its transpose (backward): the same sums as
        ``embedding_bag`` without sorting n_items x n_codebooks indices in every backward pass.
        """
        return _SparsePooling.apply(table, *self._item_pooling(table.dtype))

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, hidden_size]: mean code embedding (+ ID embedding in ``transductive_ft``)."""
        items = self._pool_items(self.code_table())
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
        # Items 1..n only (the padding item 0 is never a target: a -inf column in effect), and the
        # temperature divides the [B, hidden] users, not the [B, n_items] logits.
        logits = (user / self.temperature) @ items[1:].t()
        return F.cross_entropy(logits, interaction[self.POS_ITEM_ID] - 1)

    def semi_synthetic_items(self, positives: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Hard negatives [B, hidden_size]: each code of a positive item is replaced by a random
        code of its sub-codebook with probability ``fake_idx_ratio``, then pooled."""
        codes = self.item_codes[positives]
        random_codes = torch.randint_like(codes, self.codebook_size) + self.codebook_offsets
        replaced = torch.rand(codes.shape, device=codes.device) < self.fake_idx_ratio
        return self._pool_codes(torch.where(replaced, random_codes, codes), table)

    def _contrastive_loss(self, interaction) -> torch.Tensor:
        """Sequence-item InfoNCE: in-batch targets and one semi-synthetic item per row as negatives;
        other rows sharing the same target item are masked out with -inf."""
        table = self.code_table()
        items = self._pool_items(table)
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
        return ((user / self.temperature) * items[interaction[self.ITEM_ID]]).sum(dim=-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        user, items = self._user_and_items(interaction)
        return (user / self.temperature) @ items.t()

    # ----- transfer from a pre-trained checkpoint ------------------------------------------
    def load_pretrained(self, path: str) -> List[str]:
        """Copy the code embeddings and the sequence encoder of a pre-trained checkpoint (ours or
        the authors' release, whose names are mapped by :func:`from_official_state`).

        Item codes and ID embeddings belong to the pre-training data and are not copied. Returns
        the names of the copied tensors.
        """
        return copy_transferred(self, read_state_dict(path), TRANSFERRED_PREFIXES, path,
                                required="code_embedding.weight", size_keys=SIZE_KEYS, convert=from_official_state)

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
