"""Shared internals of the semantic-id generative recommenders (TIGER, LETTER).

* :class:`SemanticIdVocabulary`: token layout (pad, eos, one block of tokens per code level).
* :class:`PrefixTrie`: the valid semantic ids as dense per-level tables: ``allowed[t]`` [P_t, S_t]
  says which level-t codes may follow prefix ``p`` and ``child[t]`` [P_t, S_t] gives the id of the
  longer prefix (at the last level: the item id), -1 where not allowed.
* :class:`SharedMemoryDecoder`: the T5 decoder evaluated for many candidate continuations per
  user at once. The cross-attention keys and values of the encoder output are computed once per
  user and broadcast over that user's beams (a generic ``generate`` copies them per beam). In beam
  search it decodes incrementally: each step feeds only the newest token and reuses the
  self-attention keys and values of the earlier steps, reordered to follow the surviving beams.
* :func:`constrained_beam_search`: beam search on tensors over the trie.

Beam scores are sums of full-vocabulary log-probabilities (the trie masks without
renormalising), so a returned item's score equals its teacher-forced log-likelihood.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

PAD_TOKEN = 0
EOS_TOKEN = 1
FIRST_CODE_TOKEN = 2


@dataclass(frozen=True)
class SemanticIdVocabulary:
    """Token ids: 0 = pad (and decoder start), 1 = eos, then one block per level's codes."""

    level_sizes: Tuple[int, ...]

    @property
    def offsets(self) -> Tuple[int, ...]:
        starts = np.cumsum((FIRST_CODE_TOKEN,) + tuple(self.level_sizes))
        return tuple(int(value) for value in starts[:-1])

    @property
    def size(self) -> int:
        return FIRST_CODE_TOKEN + sum(self.level_sizes)

    def item_tokens(self, item_codes: torch.Tensor) -> torch.Tensor:
        """Token ids [n_items, T] of codes [n_items, T]; rows of -1 (padding) become pad tokens."""
        offsets = torch.tensor(self.offsets, dtype=torch.long)
        tokens = item_codes + offsets
        return torch.where(item_codes < 0, torch.full_like(tokens, PAD_TOKEN), tokens)


class PrefixTrie(nn.Module):
    """Dense per-level tables of the valid semantic ids (buffers, so they follow ``.to()``)."""

    def __init__(self, item_codes: torch.Tensor, level_sizes: Sequence[int]):
        super().__init__()
        codes = item_codes[1:].cpu().numpy()
        item_ids = np.arange(1, item_codes.shape[0])
        self.n_levels = codes.shape[1]
        prefix = np.zeros(len(codes), dtype=np.int64)
        for level in range(self.n_levels):
            if level + 1 < self.n_levels:
                _, longer = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)
                longer = longer.reshape(-1)
            else:
                longer = item_ids
            child = np.full((int(prefix.max()) + 1, level_sizes[level]), -1, dtype=np.int64)
            child[prefix, codes[:, level]] = longer
            self.register_buffer(f"child_{level}", torch.from_numpy(child), persistent=False)
            prefix = longer

    def child(self, level: int) -> torch.Tensor:
        """[P_level, S_level] long: next prefix id (item id at the last level), -1 if invalid."""
        return getattr(self, f"child_{level}")


class SharedMemoryDecoder:
    """Runs a ``T5ForConditionalGeneration`` decoder on [B, K, t] token blocks (eval only).

    The encoder output of each of the B users is projected to cross-attention keys/values once
    and shared by the K continuations of that user.
    """

    def __init__(self, t5: nn.Module, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor):
        self.t5 = t5
        self.decoder = t5.get_decoder()
        config = t5.config
        self.n_heads, self.d_kv = config.num_heads, config.d_kv
        self.output_scale = config.d_model ** -0.5 if getattr(
            config, "scale_decoder_outputs", config.tie_word_embeddings) else 1.0
        self.memory_bias = torch.zeros(encoder_mask.shape, dtype=encoder_hidden.dtype, device=encoder_hidden.device)
        self.memory_bias = self.memory_bias.masked_fill(~encoder_mask.bool(), float("-inf"))[:, None, None, :]
        self.memory = [self._keys_values(block.layer[1].EncDecAttention, encoder_hidden) for block in self.decoder.block]
        self.self_cache: List[Tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values [B, K, H, t, d]

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        """[B, N, H*d] -> [B, H, N, d]."""
        return states.view(*states.shape[:2], self.n_heads, self.d_kv).transpose(1, 2)

    def _keys_values(self, attention: nn.Module, encoder_hidden: torch.Tensor):
        return self._heads(attention.k(encoder_hidden)), self._heads(attention.v(encoder_hidden))

    def next_log_probs(self, decoded: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        """Incremental beam step: next-token log-probabilities [B, K, V] after ``decoded`` [B, K, t].

        Only the newest token (the start token when t = 0) goes through the decoder; the keys and
        values of the earlier positions come from the previous call, whose beam ``parents`` [B, K]
        each current beam extends. Calls must follow one another with t = 0, 1, 2, ...
        """
        batch, n_beams, length = decoded.shape
        if length == 0:
            newest = torch.full((batch, n_beams), PAD_TOKEN, dtype=torch.long, device=decoded.device)
            self.self_cache = []
        else:
            newest = decoded[..., -1]
            users = torch.arange(batch, device=decoded.device).unsqueeze(1)
            self.self_cache = [(keys[users, parents], values[users, parents]) for keys, values in self.self_cache]
        hidden = self.decoder.embed_tokens(newest).reshape(batch * n_beams, 1, -1)
        bias = self.decoder.block[0].layer[0].SelfAttention.compute_bias(
            length + 1, length + 1, device=hidden.device)[:, :, -1:, :]
        for index, (block, (keys, values)) in enumerate(zip(self.decoder.block, self.memory)):
            hidden = hidden + self._cached_self_attention(index, block.layer[0], hidden, bias, batch)
            hidden = hidden + self._cross_attention(block.layer[1], hidden, keys, values, n_beams)
            hidden = block.layer[2](hidden)
        return self._output_log_probs(hidden).view(batch, n_beams, -1)

    def _cached_self_attention(self, index: int, layer: nn.Module, hidden: torch.Tensor,
                               bias: torch.Tensor, batch: int) -> torch.Tensor:
        """Self-attention of the newest position [B*K, 1, d] over the cached and new keys/values."""
        attention = layer.SelfAttention
        normed = layer.layer_norm(hidden)
        query, key, value = (self._heads(proj(normed)) for proj in (attention.q, attention.k, attention.v))
        key, value = (tensor.view(batch, -1, *tensor.shape[1:]) for tensor in (key, value))
        if index < len(self.self_cache):
            cached_keys, cached_values = self.self_cache[index]
            key, value = torch.cat([cached_keys, key], dim=3), torch.cat([cached_values, value], dim=3)
            self.self_cache[index] = (key, value)
        else:
            self.self_cache.append((key, value))
        key, value = key.flatten(0, 1), value.flatten(0, 1)
        weights = torch.softmax(query @ key.transpose(-1, -2) + bias, dim=-1)
        return attention.o((weights @ value).transpose(1, 2).reshape(hidden.shape[0], 1, -1))

    def _output_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder.final_layer_norm(hidden) * self.output_scale
        return torch.log_softmax(self.t5.lm_head(hidden).float(), dim=-1)

    def log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities [B, K, t, V] after each prefix of ``tokens`` [B, K, t]."""
        batch, n_candidates, length = tokens.shape
        hidden = self.decoder.embed_tokens(tokens).reshape(batch * n_candidates, length, -1)
        self_bias = self._self_attention_bias(length, hidden.device)
        for block, (keys, values) in zip(self.decoder.block, self.memory):
            hidden = hidden + self._self_attention(block.layer[0], hidden, self_bias)
            hidden = hidden + self._cross_attention(block.layer[1], hidden, keys, values, n_candidates)
            hidden = block.layer[2](hidden)
        return self._output_log_probs(hidden).view(batch, n_candidates, length, -1)

    def _self_attention_bias(self, length: int, device: torch.device) -> torch.Tensor:
        first = self.decoder.block[0].layer[0].SelfAttention
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        bias = first.compute_bias(length, length, device=device)
        return bias.masked_fill(~causal, float("-inf"))

    def _self_attention(self, layer: nn.Module, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attention = layer.SelfAttention
        normed = layer.layer_norm(hidden)
        query, key, value = (self._heads(proj(normed)) for proj in (attention.q, attention.k, attention.v))
        weights = torch.softmax(query @ key.transpose(-1, -2) + bias, dim=-1)
        return attention.o((weights @ value).transpose(1, 2).reshape(*hidden.shape[:2], -1))

    def _cross_attention(self, layer: nn.Module, hidden: torch.Tensor, keys: torch.Tensor,
                         values: torch.Tensor, n_candidates: int) -> torch.Tensor:
        attention = layer.EncDecAttention
        flat, length = hidden.shape[0], hidden.shape[1]
        batch = flat // n_candidates
        normed = layer.layer_norm(hidden).reshape(batch, n_candidates * length, -1)
        query = self._heads(attention.q(normed))
        weights = torch.softmax(query @ keys.transpose(-1, -2) + self.memory_bias, dim=-1)
        mixed = (weights @ values).transpose(1, 2).reshape(batch, n_candidates * length, -1)
        return attention.o(mixed).reshape(flat, length, -1)


def constrained_beam_search(
    next_log_probs: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
    trie: PrefixTrie,
    vocabulary: SemanticIdVocabulary,
    batch_size: int,
    beam_size: int,
    device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top ``beam_size`` valid items per user and their log-likelihoods, best first.

    ``next_log_probs(tokens [B, K, t], parents) -> [B, K, V]`` gives the next-token
    log-probabilities after each beam's decoded tokens (t may be 0); ``parents`` [B, K] (None at
    t = 0) names the previous step's beam that each beam extends, for decoders that cache. Returns item ids [B, W] and scores [B, W]
    (W = min(beam_size, number of items)); unused slots hold item 0 and score -inf.
    """
    scores = torch.zeros(batch_size, 1, device=device)
    prefixes = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    tokens = torch.zeros(batch_size, 1, 0, dtype=torch.long, device=device)
    parents = None
    for level, (offset, size) in enumerate(zip(vocabulary.offsets, vocabulary.level_sizes)):
        level_log_probs = next_log_probs(tokens, parents)[..., offset: offset + size]
        children = trie.child(level)[prefixes]  # [B, K, S]
        candidates = (scores.unsqueeze(-1) + level_log_probs).masked_fill(children < 0, float("-inf"))
        width = min(beam_size, candidates.shape[1] * size)
        scores, flat = candidates.view(batch_size, -1).topk(width, dim=1)
        parents, codes = flat // size, flat % size
        prefixes = children.view(batch_size, -1).gather(1, flat).clamp(min=0)
        tokens = torch.cat(
            [tokens.gather(1, parents.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])),
             (codes + offset).unsqueeze(-1)], dim=-1,
        )
    items = prefixes.masked_fill(torch.isinf(scores), 0)
    return items, scores


def sequence_log_likelihood(step_log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of the log-probabilities [..., T, V] of ``targets`` [..., T]."""
    return step_log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)


def with_start(decoded: torch.Tensor) -> torch.Tensor:
    """Decoder inputs [..., t+1]: the start (pad) token followed by the ``decoded`` tokens."""
    start = torch.full((*decoded.shape[:-1], 1), PAD_TOKEN, dtype=decoded.dtype, device=decoded.device)
    return torch.cat([start, decoded], dim=-1)


def shift_right(targets: torch.Tensor) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start (pad) token, then all but the last target."""
    return with_start(targets[..., :-1])


def chunks(total: int, size: int) -> List[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    return [slice(start, min(start + size, total)) for start in range(0, total, max(size, 1))]
