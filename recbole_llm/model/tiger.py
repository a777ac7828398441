"""TIGER: generative retrieval over RQ-VAE semantic ids with a T5 encoder-decoder.

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval."
    NeurIPS 2023, arXiv:2305.05065.

Each item is a tuple of codes (RQ-VAE levels + one de-duplication level, see
:mod:`recbole_llm.quantize.semantic_ids`). The encoder reads the flattened codes of the last
``history_items`` items (at most ``MAX_ITEM_LIST_LENGTH``); the decoder generates the next item's
codes. Ranking: a constrained beam search over the trie of valid ids (``scoring: beam``; the beam
log-likelihoods are scattered into a -inf matrix) or the exact teacher-forced log-likelihood of
every item (``scoring: exact``). ``predict`` returns the candidate's teacher-forced
log-likelihood.
"""
from __future__ import annotations

import logging

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch.nn import functional as F
from transformers import T5Config, T5ForConditionalGeneration

from recbole_llm.data.semantic_id_dataset import SemanticIdDataset
from recbole_llm.model._generative import (
    EOS_TOKEN,
    PAD_TOKEN,
    PrefixTrie,
    SemanticIdVocabulary,
    SharedMemoryDecoder,
    chunks,
    constrained_beam_search,
    sequence_log_likelihood,
    shift_right,
)

logger = logging.getLogger(__name__)

SCORING_MODES = ("beam", "exact")


class TIGER(SequentialRecommender):
    """Semantic-id generative recommender (RecBole sequential model)."""

    dataset_class = SemanticIdDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        codes = dataset.item_semantic_ids
        level_sizes = [config["rqvae_codebook_size"]] * config["rqvae_levels"]
        level_sizes.append(int(codes[1:, -1].max()) + 1)
        self.vocabulary = SemanticIdVocabulary(tuple(level_sizes))
        self.register_buffer("item_tokens", self.vocabulary.item_tokens(codes), persistent=False)
        self.trie = PrefixTrie(codes, level_sizes)
        self.t5 = T5ForConditionalGeneration(self._t5_config(config))
        self.loss_temperature = 1.0
        self.scoring = config["scoring"]
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, got {self.scoring!r}")
        self.beam_size = max(int(config["beam_size"]), max(config["topk"]))
        if self.beam_size != config["beam_size"]:
            logger.info("beam_size raised to %d = max(topk)", self.beam_size)
        self.decode_batch_tokens = int(config["decode_batch_tokens"])
        history_items = config["history_items"]
        self.history_items = self.max_seq_length if history_items is None else int(history_items)
        if self.history_items < 1:
            raise ValueError(f"history_items must be a positive integer or ~, got {history_items!r}")

    def _t5_config(self, config) -> T5Config:
        return T5Config(
            vocab_size=self.vocabulary.size,
            d_model=config["d_model"],
            d_kv=config["d_kv"],
            d_ff=config["d_ff"],
            num_layers=config["num_layers"],
            num_decoder_layers=config["num_decoder_layers"],
            num_heads=config["num_heads"],
            dropout_rate=config["dropout_rate"],
            feed_forward_proj=config["feed_forward_proj"],
            pad_token_id=PAD_TOKEN,
            eos_token_id=EOS_TOKEN,
            decoder_start_token_id=PAD_TOKEN,
        )

    # ------------------------------------------------------------------ inputs and training
    def encoder_inputs(self, interaction):
        """Flattened tokens [B, n*T] of each user's latest ``history_items`` items, and their mask.

        RecBole stores a history oldest first with padding after it, so the window is gathered
        from each row's length; the batch is cut to its longest window (less padding to encode).
        """
        items, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        window = min(self.history_items, items.shape[1])
        start = (lengths - window).clamp(min=0)
        positions = start.unsqueeze(1) + torch.arange(window, device=items.device)
        recent = items.gather(1, positions.clamp(max=items.shape[1] - 1))
        recent = recent.masked_fill(positions >= lengths.unsqueeze(1), 0)
        recent = recent[:, : max(1, int(lengths.clamp(max=window).max()))]
        tokens = self.item_tokens[recent].reshape(len(recent), -1)
        return tokens, tokens != PAD_TOKEN

    def calculate_loss(self, interaction) -> torch.Tensor:
        tokens, mask = self.encoder_inputs(interaction)
        targets = self.item_tokens[interaction[self.POS_ITEM_ID]]
        logits = self.t5(input_ids=tokens, attention_mask=mask, decoder_input_ids=shift_right(targets)).logits
        logits = logits / self.loss_temperature
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    # ------------------------------------------------------------------ scoring
    def predict(self, interaction) -> torch.Tensor:
        """Teacher-forced log-likelihood [B] of each row's candidate item."""
        tokens, mask = self.encoder_inputs(interaction)
        targets = self.item_tokens[interaction[self.ITEM_ID]]
        logits = self.t5(input_ids=tokens, attention_mask=mask, decoder_input_ids=shift_right(targets)).logits
        return sequence_log_likelihood(torch.log_softmax(logits.float(), dim=-1), targets)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """[B, n_items]: beam log-likelihoods (else -inf), or every item's log-likelihood."""
        tokens, mask = self.encoder_inputs(interaction)
        per_chunk = self._users_per_chunk()
        return torch.cat([self._score_users(tokens[rows], mask[rows]) for rows in chunks(len(tokens), per_chunk)])

    def _users_per_chunk(self) -> int:
        candidates = self.beam_size if self.scoring == "beam" else 64
        return max(1, self.decode_batch_tokens // (candidates * len(self.vocabulary.level_sizes)))

    def _decoder(self, tokens: torch.Tensor, mask: torch.Tensor) -> SharedMemoryDecoder:
        hidden = self.t5.get_encoder()(input_ids=tokens, attention_mask=mask).last_hidden_state
        return SharedMemoryDecoder(self.t5, hidden, mask)

    def _score_users(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.scoring == "exact":
            return self.exact_scores(tokens, mask)
        items, scores = self.beam_search(tokens, mask)
        matrix = torch.full((len(tokens), self.n_items), float("-inf"), device=tokens.device)
        return matrix.scatter_(1, items, scores)

    def beam_search(self, tokens: torch.Tensor, mask: torch.Tensor):
        """Top ``beam_size`` (items [B, W], log-likelihoods [B, W]) by constrained beam search."""
        decoder = self._decoder(tokens, mask)
        return constrained_beam_search(
            decoder.next_log_probs, self.trie, self.vocabulary, len(tokens), self.beam_size, tokens.device
        )

    def exact_scores(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-likelihood of every item [B, n_items] (column 0: -inf)."""
        decoder = self._decoder(tokens, mask)
        n_levels = len(self.vocabulary.level_sizes)
        items_per_chunk = max(1, self.decode_batch_tokens // (len(tokens) * n_levels))
        scores = []
        for columns in chunks(self.n_items, items_per_chunk):
            targets = self.item_tokens[columns].unsqueeze(0).expand(len(tokens), -1, -1)
            scores.append(sequence_log_likelihood(decoder.log_probs(shift_right(targets)), targets))
        matrix = torch.cat(scores, dim=1)
        matrix[:, 0] = float("-inf")
        return matrix
