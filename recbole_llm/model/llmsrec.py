"""LLM-SRec: a frozen LLM that reads the user's sequence, distilled from a frozen SASRec (CF-SRec).

Reference:
    Sein Kim, Hongseok Kang, Kibum Kim, Jiwan Kim, Donghyun Kim, Minchul Yang, Kwangjin Oh,
    Julian McAuley and Chanyoung Park. "Lost in Sequence: Do Large Language Models Understand
    Sequential Recommendation?" In Proceedings of the 31st ACM SIGKDD Conference on Knowledge
    Discovery and Data Mining (KDD '25), 2025. arXiv:2502.13909.

A SASRec teacher (CF-SRec) is trained first on the same data (or read from ``cf_checkpoint``) and
frozen. The user prompt lists the titles of the latest ``llmsrec_history`` items, each followed
by a history slot whose input embedding is the teacher's item embedding through an MLP (teacher
width -> LM width), and ends with a user-output token; the last-layer hidden state there is the
user representation. The item prompt is the item's title, its slot and an item-output token.
Only the two output-token embeddings, the slot MLP and three heads (LM user, LM item and the
teacher's user vector, each into a shared space) learn; the LM and the teacher stay frozen and
are kept out of the state dict. The loss is the cross-entropy of user·item over a shared
candidate pool (the batch's positives and sampled negatives), plus the MSE between the
normalised LM user vector and the normalised teacher user vector and the uniformity of both.
At evaluation every item goes through the LM once (cached until training resumes).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_llm import teachers
from recbole_llm.llm.loader import load_causal_lm
from recbole_llm.text.assemble import assemble_item_texts

# Sentinel token ids (negative, so they never collide with the vocabulary).
SLOT, USER_OUT, ITEM_OUT, PAD = -1, -2, -3, -4

USER_PREFIX = "This user has made a series of purchases in the following order:"
USER_SUFFIX = ". Based on this sequence of purchases, generate user representation token:"
ITEM_PREFIX = "The item title and item embedding are as follows:"
ITEM_SUFFIX = ", then generate item representation token:"


def uniformity(x: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian potential exp(-2 ||x_i - x_j||^2) over the pairs of rows (as the authors' code)."""
    if x.size(0) < 2:
        return x.new_zeros(())
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean()


def _head(in_size: int, hidden: int, out_size: int, activation: nn.Module) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(in_size, hidden), nn.LayerNorm(hidden), activation, nn.Linear(hidden, out_size))
    nn.init.xavier_normal_(head[0].weight)
    nn.init.xavier_normal_(head[3].weight)
    return head


class LLMSRec(SequentialRecommender):
    """Frozen causal LM over titles + injected SASRec item embeddings, distilled from SASRec."""

    single_process_reason = "the SASRec teacher trains first in one process and item vectors are cached per process"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["loss_type"] != "CE":
            raise ValueError(f"LLMSRec trains with loss_type 'CE', got {config['loss_type']!r}")
        self.history = int(config["llmsrec_history"])
        self.negatives = int(config["llmsrec_negatives"])
        self.item_batch_size = int(config["llmsrec_item_batch_size"])
        self.distill_weight = float(config["llmsrec_distill_weight"])
        self.uniformity_weight = float(config["llmsrec_uniformity_weight"])
        if self.history < 1 or self.negatives < 0 or self.item_batch_size < 1:
            raise ValueError("llmsrec_history and llmsrec_item_batch_size must be >= 1, llmsrec_negatives >= 0; got "
                             f"{self.history}, {self.item_batch_size}, {self.negatives}")

        teacher = self._load_teacher(config, dataset)
        self._check_teacher(teacher)
        lm, tokenizer = load_causal_lm(config["llmsrec_llm"], device=config["device"],
                                       llm_cache_dir=config["llmsrec_llm_cache_dir"])
        # Frozen parts live outside the module tree: no optimizer, state dict or train() reaches them.
        object.__setattr__(self, "teacher", teacher.to(config["device"]))
        object.__setattr__(self, "lm", lm)
        lm_size = int(lm.config.hidden_size)
        cf_size = int(teacher.item_embedding.weight.shape[1])
        hidden, shared = int(config["llmsrec_head_hidden"]), int(config["llmsrec_shared_size"])

        embeddings = lm.get_input_embeddings().weight
        self.user_out = nn.Parameter(torch.randn(lm_size) * embeddings.std() + embeddings.mean())
        self.item_out = nn.Parameter(torch.randn(lm_size) * embeddings.std() + embeddings.mean())
        self.item_proj = _head(cf_size, lm_size, lm_size, nn.LeakyReLU())
        self.user_head = _head(lm_size, hidden, shared, nn.LeakyReLU())
        self.item_head = _head(lm_size, hidden, shared, nn.LeakyReLU())
        self.cf_head = _head(cf_size, shared, shared, nn.GELU())

        try:
            titles = assemble_item_texts(dataset, config["llmsrec_text_fields"], config["missing_text"] or "empty")
        except ValueError as err:
            raise ValueError(f"llmsrec_text_fields {config['llmsrec_text_fields']!r}: {err}") from err
        if int(config["llmsrec_title_tokens"]) < 0:
            raise ValueError(f"llmsrec_title_tokens must be >= 0 (0: prompts without titles), got {config['llmsrec_title_tokens']}")
        self.title_ids = self._tokenize(tokenizer, titles, int(config["llmsrec_title_tokens"]))
        self.pieces = {name: self._tokenize(tokenizer, [text], None)[0] for name, text in (
            ("user_prefix", USER_PREFIX), ("user_suffix", USER_SUFFIX), ("separator", ","),
            ("item_prefix", ITEM_PREFIX), ("item_suffix", ITEM_SUFFIX))}
        self._item_cache: torch.Tensor | None = None

    @staticmethod
    def _load_teacher(config, dataset) -> nn.Module:
        if config["cf_checkpoint"]:
            return teachers.sasrec_teacher_from_checkpoint(config["cf_checkpoint"], dataset)
        teacher, tokens = teachers.sasrec_teacher(config, dataset, config["cf_epochs"], config["cf_hidden_size"])
        own = [str(token) for token in dataset.field2id_token[dataset.iid_field]]
        if list(tokens) != own:
            raise ValueError("the SASRec teacher was trained on a different item order than this dataset")
        return teacher

    def _check_teacher(self, teacher: nn.Module) -> None:
        if teacher.max_seq_length < self.max_seq_length:
            raise ValueError(f"the SASRec teacher reads {teacher.max_seq_length} history items but MAX_ITEM_LIST_LENGTH "
                             f"is {self.max_seq_length}: train the teacher with the same MAX_ITEM_LIST_LENGTH")

    @staticmethod
    def _tokenize(tokenizer, texts: Sequence[str], max_tokens: int | None) -> List[List[int]]:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(row) if max_tokens is None else list(row[:max_tokens]) for row in ids]

    def train(self, mode: bool = True):
        """Training invalidates the cached item vectors of the last evaluation."""
        if mode:
            self._item_cache = None
        return super().train(mode)

    # ----------------------------------------------------------------------------------------------
    # prompts
    def _user_prompt(self, history: Sequence[int]) -> Tuple[List[int], List[int]]:
        """(token ids with sentinels, item id per position for the history slots) of one user."""
        ids, slots = list(self.pieces["user_prefix"]), [0] * len(self.pieces["user_prefix"])
        for position, item in enumerate(history):
            piece = self.title_ids[item] + [SLOT] + (self.pieces["separator"] if position < len(history) - 1 else [])
            ids += piece
            slots += [0] * len(self.title_ids[item]) + [item] + [0] * (len(piece) - len(self.title_ids[item]) - 1)
        tail = self.pieces["user_suffix"] + [USER_OUT]
        return ids + tail, slots + [0] * len(tail)

    def _item_prompt(self, item: int) -> Tuple[List[int], List[int]]:
        head = self.pieces["item_prefix"] + self.title_ids[item]
        tail = self.pieces["item_suffix"] + [ITEM_OUT]
        return head + [SLOT] + tail, [0] * len(head) + [item] + [0] * len(tail)

    def _run_prompts(self, prompts: List[Tuple[List[int], List[int]]], out_token: int) -> torch.Tensor:
        """Last-layer LM hidden state at each prompt's output token: [len(prompts), LM width]."""
        device = self.user_out.device
        length = max(len(ids) for ids, _ in prompts)
        ids = torch.full((len(prompts), length), PAD, dtype=torch.long)
        slots = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, (prompt_ids, prompt_slots) in enumerate(prompts):
            ids[row, :len(prompt_ids)] = torch.tensor(prompt_ids)
            slots[row, :len(prompt_slots)] = torch.tensor(prompt_slots)
        ids, slots = ids.to(device), slots.to(device)
        inputs = self.lm.get_input_embeddings()(ids.clamp(min=0))
        injected = self.item_proj(self.teacher.item_embedding(slots))
        inputs = torch.where((ids == SLOT).unsqueeze(-1), injected, inputs)
        inputs = torch.where((ids == USER_OUT).unsqueeze(-1), self.user_out.expand_as(inputs), inputs)
        inputs = torch.where((ids == ITEM_OUT).unsqueeze(-1), self.item_out.expand_as(inputs), inputs)
        hidden = self.lm.base_model(inputs_embeds=inputs, attention_mask=(ids != PAD).long()).last_hidden_state
        return hidden[ids == out_token]

    # ----------------------------------------------------------------------------------------------
    # representations
    def lm_user(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """LM user representations (before the head) of a batch of histories: [B, LM width]."""
        prompts = []
        for row, length in zip(item_seq.tolist(), item_seq_len.tolist()):
            history = row[:length][-self.history:]
            prompts.append(self._user_prompt(history))
        return self._run_prompts(prompts, USER_OUT)

    def lm_items(self, items: Sequence[int]) -> torch.Tensor:
        """LM item representations (before the head) of ``items``: [len(items), LM width]."""
        return self._run_prompts([self._item_prompt(int(item)) for item in items], ITEM_OUT)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """User vectors in the shared space: [B, shared size]."""
        return self.user_head(self.lm_user(item_seq, item_seq_len))

    def _sample_negatives(self, positives: torch.Tensor) -> torch.Tensor:
        count = self.negatives * positives.numel()
        return torch.randint(1, self.n_items, (count,), device=positives.device)

    def calculate_loss(self, interaction) -> torch.Tensor:
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        positives = interaction[self.POS_ITEM_ID]
        candidates, target = torch.unique(torch.cat([positives, self._sample_negatives(positives)]),
                                          return_inverse=True)
        users = self.forward(item_seq, item_seq_len)
        items = self.item_head(self.lm_items(candidates.tolist()))
        rec_loss = F.cross_entropy(users @ items.t(), target[:positives.numel()])
        with torch.no_grad():
            teacher_users = self.teacher(item_seq, item_seq_len)
        lm_users = F.normalize(users, dim=-1)
        cf_users = F.normalize(self.cf_head(teacher_users), dim=-1)
        distill = F.mse_loss(lm_users, cf_users)
        uniform = uniformity(lm_users) + uniformity(cf_users)
        return rec_loss + self.distill_weight * distill + self.uniformity_weight * uniform

    # ----------------------------------------------------------------------------------------------
    # evaluation
    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """Shared-space vectors of every item [n_items, shared size] (row 0, padding, is zero); cached."""
        if self._item_cache is None:
            table = torch.zeros(self.n_items, self.item_head[3].out_features, device=self.user_out.device)
            for start in range(1, self.n_items, self.item_batch_size):
                items = list(range(start, min(start + self.item_batch_size, self.n_items)))
                table[start:start + len(items)] = self.item_head(self.lm_items(items))
            self._item_cache = table
        return self._item_cache

    def predict(self, interaction) -> torch.Tensor:
        # Sampled evaluation repeats each history once per candidate: run each distinct one once.
        histories = torch.cat([interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN].unsqueeze(1)], dim=1)
        distinct, inverse = torch.unique(histories, dim=0, return_inverse=True)
        users = self.forward(distinct[:, :-1], distinct[:, -1])[inverse]
        return (users * self.item_table()[interaction[self.ITEM_ID]]).sum(dim=-1)  # [B]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return users @ self.item_table().t()  # [B, n_items]
