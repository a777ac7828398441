"""UniSRec: universal sequence representations from item text, for transferable recommendation.

Reference:
    Yupeng Hou, Shanlei Mu, Wayne Xin Zhao, Yaliang Li, Bolin Ding, Ji-Rong Wen. "Towards
    Universal Sequence Representation Learning for Recommender Systems." KDD 2022.
    arXiv:2206.05941.

Each item's frozen text embedding passes through a mixture-of-experts adaptor of parametric
whitening experts (expert ``e``: ``W_e (dropout(x) - b_e)``, mixed by a softmax gate over
``x @ G`` with learned Gaussian noise in training); a causal Transformer (RecBole's, as SASRec)
encodes the adapted sequence and its last position is the user; scores are cosine similarities
over ``temperature`` against every item's adapted text (plus an ID embedding in
``transductive_ft``, added at the input too, as in the authors' code).

Stages (``train_stage``): ``pretrain`` (sequence-item InfoNCE over in-batch targets, rows with
the same target masked with -inf, plus ``lambda`` times a sequence-sequence InfoNCE against an
augmented view: item drop, or word drop through the embeddings of word-dropped texts),
``inductive_ft`` (text only: unseen items work) and ``transductive_ft`` (text plus IDs). A model
built with ``pretrained_file`` (ours or the authors' ``UniSRec-FHCKM-300.pth``, whose names are
mapped by :func:`from_official_state`) starts from its adaptor and encoder; with
``freeze_encoder`` (the authors' ``fix_enc``) the position embeddings and Transformer stay fixed
(:class:`recbole_llm.trainer.transfer.TransferTrainer`).
"""
from __future__ import annotations

import re
from typing import List, Tuple

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_llm.data.transfer_dataset import TransferTextDataset, word_drop_embeddings
from recbole_llm.model._layers import init_weights, transformer_encoder
from recbole_llm.model._transfer import StateDict, copy_transferred, read_state_dict
from recbole_llm.trainer.transfer import TransferTrainer

TRAIN_STAGES = ("pretrain", "inductive_ft", "transductive_ft")
# Parameters a pre-trained checkpoint hands to fine-tuning (ID embeddings are per dataset).
TRANSFERRED_PREFIXES = ("adaptor.", "position_embedding.", "trm_encoder.", "LayerNorm.")
ENCODER_PREFIXES = ("position_embedding.", "trm_encoder.")
SIZE_KEYS = "hidden_size, n_layers, inner_size, n_exps, MAX_ITEM_LIST_LENGTH and the text embedding width"
GATE_NOISE_FLOOR = 1e-2
_OFFICIAL_EXPERT = re.compile(r"^moe_adaptor\.experts\.(\d+)\.(bias|lin\.weight)$")


class MoEAdaptor(nn.Module):
    """Mixture of ``n_experts`` parametric-whitening experts, [..., input_size] -> [..., output_size].

    Expert ``e`` maps ``x`` to ``W_e (dropout(x) - b_e)``; a softmax gate over ``x @ gate`` mixes
    them, with noise ``N(0, 1) * (softplus(x @ gate_noise) + 0.01)`` added to the gate logits in
    training when ``noisy_gate``. The gate starts uniform (zero logits). One dropout mask is
    shared by the experts, so the experts run as one batched product.
    """

    def __init__(self, n_experts: int, input_size: int, output_size: int, dropout: float,
                 noisy_gate: bool = True, std: float = 0.02):
        super().__init__()
        self.noisy_gate = noisy_gate
        self.dropout = nn.Dropout(dropout)
        self.centres = nn.Parameter(torch.zeros(n_experts, input_size))
        self.weights = nn.Parameter(torch.randn(n_experts, output_size, input_size) * std)
        self.gate = nn.Parameter(torch.zeros(input_size, n_experts))
        self.gate_noise = nn.Parameter(torch.zeros(input_size, n_experts))

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n_experts] mixing weights (each row sums to one)."""
        logits = x @ self.gate
        if self.noisy_gate and self.training:
            scale = F.softplus(x @ self.gate_noise) + GATE_NOISE_FLOOR
            logits = logits + torch.randn_like(logits) * scale
        return logits.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = torch.einsum("...i,eoi->...eo", self.dropout(x), self.weights)
        shifts = torch.einsum("ei,eoi->eo", self.centres, self.weights)
        return (self.gate_weights(x).unsqueeze(-1) * (projected - shifts)).sum(dim=-2)


def from_official_state(state: StateDict) -> StateDict:
    """A RUCAIBox/UniSRec state dict with our names and layouts.

    The release keeps one module per expert (``moe_adaptor.experts.<e>.bias`` [input] and
    ``.lin.weight`` [output, input]) and the gate as ``moe_adaptor.w_gate`` / ``w_noise``
    [input, n_experts]; ours stacks the experts (``adaptor.centres`` [n_experts, input],
    ``adaptor.weights`` [n_experts, output, input]). Its ``item_embedding`` and ``plm_embedding``
    belong to its data and are dropped. A state dict without ``moe_adaptor.`` names is returned
    unchanged.
    """
    if not any(key.startswith("moe_adaptor.") for key in state):
        return state
    experts = {}
    for key, value in state.items():
        match = _OFFICIAL_EXPERT.match(key)
        if match:
            experts.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if sorted(experts) != list(range(len(experts))) or any(len(parts) != 2 for parts in experts.values()):
        raise ValueError(
            f"the moe_adaptor of this RUCAIBox/UniSRec checkpoint is incomplete: experts {sorted(experts)}, each "
            "needs moe_adaptor.experts.<e>.bias and moe_adaptor.experts.<e>.lin.weight"
        )
    for name in ("moe_adaptor.w_gate", "moe_adaptor.w_noise"):
        if name not in state:
            raise ValueError(f"this RUCAIBox/UniSRec checkpoint has no {name}")
    mapped = {key: value for key, value in state.items()
              if not key.startswith(("moe_adaptor.", "item_embedding.", "plm_embedding."))}
    mapped["adaptor.centres"] = torch.stack([experts[e]["bias"] for e in range(len(experts))])
    mapped["adaptor.weights"] = torch.stack([experts[e]["lin.weight"] for e in range(len(experts))])
    mapped["adaptor.gate"] = state["moe_adaptor.w_gate"]
    mapped["adaptor.gate_noise"] = state["moe_adaptor.w_noise"]
    return mapped


def to_official_state(state: StateDict) -> StateDict:
    """Our transferable UniSRec tensors in the release's names (inverse of :func:`from_official_state`)."""
    mapped = {key: value for key, value in state.items()
              if key.startswith(TRANSFERRED_PREFIXES) and not key.startswith("adaptor.")}
    for e, (centre, weight) in enumerate(zip(state["adaptor.centres"], state["adaptor.weights"])):
        mapped[f"moe_adaptor.experts.{e}.bias"] = centre.clone()
        mapped[f"moe_adaptor.experts.{e}.lin.weight"] = weight.clone()
    mapped["moe_adaptor.w_gate"] = state["adaptor.gate"]
    mapped["moe_adaptor.w_noise"] = state["adaptor.gate_noise"]
    return mapped


class UniSRec(SequentialRecommender):
    """UniSRec as a RecBole sequential model; see the module docstring."""

    dataset_class = TransferTextDataset
    trainer_class = TransferTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_stage = config["train_stage"]
        if self.train_stage not in TRAIN_STAGES:
            raise ValueError(f"train_stage must be one of {TRAIN_STAGES}, got {self.train_stage!r}")
        self.temperature = config["temperature"]
        if not self.temperature or self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if config["loss_type"] != "CE":
            raise ValueError(f"UniSRec trains with loss_type: CE, got {config['loss_type']!r}")
        self.seq_seq_weight = float(config["lambda"])
        self.item_drop_ratio = float(config["item_drop_ratio"])
        self.item_drop_coefficient = float(config["item_drop_coefficient"])
        self.word_drop_ratio = float(config["word_drop_ratio"])
        self.hidden_size = config["hidden_size"]

        text = dataset.item_text_emb.float()
        self.register_buffer("item_text_emb", text, persistent=False)  # rebuilt from the data on reload
        self.uses_word_drop = (self.train_stage == "pretrain" and self.seq_seq_weight > 0
                               and self.item_drop_coefficient < 1)
        self.register_buffer(
            "word_drop_emb", word_drop_embeddings(dataset, config).float() if self.uses_word_drop else None,
            persistent=False,
        )

        self.adaptor = MoEAdaptor(config["n_exps"], text.shape[1], self.hidden_size,
                                  config["adaptor_dropout_prob"], bool(config["gate_noise"]), config["initializer_range"])
        self.item_id_embedding = (
            nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
            if self.train_stage == "transductive_ft" else None
        )
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = transformer_encoder(config, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.apply(lambda module: init_weights(module, config["initializer_range"]))
        if config["pretrained_file"]:
            self.load_pretrained(config["pretrained_file"])

    # ----- representations ------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        """[n_items, hidden_size]: adapted text (+ ID embedding in ``transductive_ft``)."""
        items = self.adaptor(self.item_text_emb)
        if self.item_id_embedding is not None:
            items = items + self.item_id_embedding.weight
        return items

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """L2-normalised user representations [B, hidden_size] from the item inputs [B, L, hidden_size]."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        hidden = self.dropout(self.LayerNorm(item_emb + self.position_embedding(positions)))
        output = self.trm_encoder(hidden, self.get_attention_mask(item_seq), output_all_encoded_layers=True)[-1]
        return F.normalize(self.gather_indexes(output, item_seq_len - 1), dim=-1)

    def _user_and_items(self, interaction) -> Tuple[torch.Tensor, torch.Tensor]:
        items = self.item_embeddings()
        item_seq = interaction[self.ITEM_SEQ]
        user = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN], items[item_seq])
        return user, F.normalize(items, dim=-1)

    # ----- pre-training -----------------------------------------------------------------------
    def item_drop(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each item but the first is dropped with probability ``item_drop_ratio``; the kept items
        move left in their order. Returns (sequences, lengths), every length >= 1."""
        keep = (torch.rand(item_seq.shape, device=item_seq.device) >= self.item_drop_ratio) & (item_seq > 0)
        keep[:, 0] = True
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        kept = torch.gather(keep, 1, order)
        return torch.gather(item_seq, 1, order) * kept, kept.sum(dim=1)

    def word_drop(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Text inputs [B, L, plm] where each item's text is its word-dropped text's with
        probability ``item_drop_ratio`` (the authors use one ratio for both augmentations)."""
        replaced = torch.rand(item_seq.shape, device=item_seq.device) < self.item_drop_ratio
        return torch.where(replaced.unsqueeze(-1), self.word_drop_emb[item_seq], self.item_text_emb[item_seq])

    def augmented_view(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor):
        """(sequences, lengths, text inputs) of one augmented view of the batch: item drop with
        probability ``item_drop_coefficient``, else word drop (one choice per batch)."""
        if not self.uses_word_drop or torch.rand(()) < self.item_drop_coefficient:
            aug_seq, aug_len = self.item_drop(item_seq, item_seq_len)
            return aug_seq, aug_len, self.item_text_emb[aug_seq]
        return item_seq, item_seq_len, self.word_drop(item_seq)

    def _info_nce(self, query: torch.Tensor, keys: torch.Tensor, same_target: torch.Tensor) -> torch.Tensor:
        """InfoNCE of row ``i`` against key ``i`` over the batch; other rows with the same target are masked."""
        logits = (query @ keys.t() / self.temperature).masked_fill(same_target, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(query), device=query.device))

    def _pretrain_loss(self, interaction) -> torch.Tensor:
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        positives = interaction[self.POS_ITEM_ID]
        user = self.forward(item_seq, item_seq_len, self.adaptor(self.item_text_emb[item_seq]))
        same_target = positives.unsqueeze(0) == positives.unsqueeze(1)
        same_target.fill_diagonal_(False)
        targets = F.normalize(self.adaptor(self.item_text_emb[positives]), dim=-1)
        loss = self._info_nce(user, targets, same_target)
        if self.seq_seq_weight > 0:
            aug_seq, aug_len, aug_text = self.augmented_view(item_seq, item_seq_len)
            view = self.forward(aug_seq, aug_len, self.adaptor(aug_text))
            loss = loss + self.seq_seq_weight * self._info_nce(user, view, same_target)
        return loss

    # ----- RecBole contract -------------------------------------------------------------------
    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.train_stage == "pretrain":
            return self._pretrain_loss(interaction)
        user, items = self._user_and_items(interaction)
        logits = user @ items.t() / self.temperature
        logits[:, 0] = float("-inf")  # the padding item is never a target
        return F.cross_entropy(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        user, items = self._user_and_items(interaction)
        return (user * items[interaction[self.ITEM_ID]]).sum(dim=-1) / self.temperature

    def full_sort_predict(self, interaction) -> torch.Tensor:
        user, items = self._user_and_items(interaction)
        return user @ items.t() / self.temperature

    # ----- transfer ---------------------------------------------------------------------------
    def load_pretrained(self, path: str) -> List[str]:
        """Copy the adaptor and the sequence encoder of a pre-trained checkpoint (ours or the
        authors'); returns the names of the copied tensors."""
        return copy_transferred(self, read_state_dict(path), TRANSFERRED_PREFIXES, path,
                                required="adaptor.weights", size_keys=SIZE_KEYS, convert=from_official_state)

    def set_trainable(self, encoder: bool) -> None:
        """Make every parameter trainable; the position embeddings and Transformer only if ``encoder``."""
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(encoder or not name.startswith(ENCODER_PREFIXES))

    def permutation_parameters(self) -> List[nn.Parameter]:
        """UniSRec learns no code permutation (see :class:`TransferTrainer`)."""
        return []
