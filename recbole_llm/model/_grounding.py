"""Shared internals of the text-generation recommenders (CALRec, TransRecLLM).

Both fine-tune a causal LM to write (part of) the next item in language, then ground what it
wrote in the catalogue:

* :class:`SubstringIndex`: every token substring (up to ``max_length`` tokens) of one facet of
  every item, as a trie stored in flat CSR arrays (children of a node sorted by token, the items
  whose facet contains the node's substring, and its number of occurrences). It answers "which
  tokens may follow this generated prefix" for constrained decoding and "which items contain
  this substring" for grounding. It plays the part of TransRec's FM-index: bounded-length
  substrings cost ``O(total tokens x max_length)`` memory, which item facets keep small.
* :func:`constrained_generate`: beam search with a Hugging Face causal LM in which only
  continuations allowed by a :class:`SubstringIndex` can be generated.
* :func:`aggregate_facet_scores`: TransRec's aggregated grounding, generated substrings ->
  [B, n_items] scores.
* :class:`BM25Grounder` (``rank_bm25``) and :func:`round_robin_merge`: CALRec's grounding of
  generated texts into one ranked item list per user; :func:`ranked_lists_to_scores` scatters
  ranked lists into a [B, n_items] matrix (-inf elsewhere) for RecBole's full-ranking evaluator.
* Batching helpers for causal LMs: left-padded prompts, prompt + target sequences with labels,
  mean pooling, in-batch InfoNCE.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

IGNORE_INDEX = -100
_WORD = re.compile(r"\w+", re.UNICODE)


# ---------------------------------------------------------------------------- substring index
class SubstringIndex:
    """Trie of all token substrings of length 1..``max_length`` of a set of token sequences.

    ``sequences[k]`` belongs to item ``owners[k]``. Node 0 is the empty prefix. With
    ``prefixes_only`` only substrings that start at a sequence's first token are indexed (whole
    identifiers read from their start, e.g. ID strings). Arrays (all ``int64``):
    ``edge_start`` [n_nodes + 1], ``edge_token``/``edge_child`` [n_edges] (children of node n:
    ``edge_start[n]:edge_start[n+1]``, sorted by token), ``item_start`` [n_nodes + 1] /
    ``item_ids`` (distinct owners whose sequence contains the node's substring, sorted) and
    ``occurrences`` [n_nodes].
    """

    ARRAYS = ("edge_start", "edge_token", "edge_child", "item_start", "item_ids", "occurrences")

    def __init__(self, arrays: Dict[str, np.ndarray], max_length: int, total_tokens: int):
        for name in self.ARRAYS:
            setattr(self, name, np.asarray(arrays[name], dtype=np.int64))
        self.max_length = int(max_length)
        self.total_tokens = int(total_tokens)

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], owners: Sequence[int], max_length: int,
              prefixes_only: bool = False) -> "SubstringIndex":
        """Index ``sequences`` (token id lists, owned by ``owners``)."""
        if max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if len(sequences) != len(owners):
            raise ValueError(f"{len(sequences)} sequences but {len(owners)} owners")
        windows, window_owners = [], []
        for tokens, owner in zip(sequences, owners):
            tokens = np.asarray(list(tokens), dtype=np.int64)
            if tokens.size == 0:
                continue
            if (tokens < 0).any():
                raise ValueError(f"negative token id in the sequence of item {owner}")
            padded = np.concatenate([tokens, np.full(max_length - 1, -1, dtype=np.int64)])
            starts = 1 if prefixes_only else len(tokens)
            windows.append(np.lib.stride_tricks.sliding_window_view(padded, max_length)[:starts])
            window_owners.append(np.full(starts, owner, dtype=np.int64))
        total_tokens = int(sum(len(s) for s in sequences))
        if not windows:
            empty = np.zeros(0, dtype=np.int64)
            arrays = dict(edge_start=np.zeros(2, dtype=np.int64), edge_token=empty, edge_child=empty,
                          item_start=np.zeros(2, dtype=np.int64), item_ids=empty, occurrences=np.zeros(1, dtype=np.int64))
            return cls(arrays, max_length, total_tokens)
        rows = np.concatenate(windows)
        row_owner = np.concatenate(window_owners)
        node = np.zeros(len(rows), dtype=np.int64)
        n_nodes = 1
        edge_parent, edge_token, edge_child = [], [], []
        visit_node, visit_owner = [], []
        for depth in range(max_length):
            alive = rows[:, depth] >= 0
            rows, row_owner, node = rows[alive], row_owner[alive], node[alive]
            if len(rows) == 0:
                break
            pairs = np.stack([node, rows[:, depth]], axis=1)
            unique_pairs, inverse = np.unique(pairs, axis=0, return_inverse=True)
            children = n_nodes + np.arange(len(unique_pairs), dtype=np.int64)
            edge_parent.append(unique_pairs[:, 0])
            edge_token.append(unique_pairs[:, 1])
            edge_child.append(children)
            node = children[inverse.reshape(-1)]
            n_nodes += len(unique_pairs)
            visit_node.append(node)
            visit_owner.append(row_owner)
        edge_parent = np.concatenate(edge_parent)
        visits = np.concatenate(visit_node)
        occurrences = np.bincount(visits, minlength=n_nodes)
        node_items = np.unique(np.stack([visits, np.concatenate(visit_owner)], axis=1), axis=0)
        arrays = dict(
            edge_start=np.searchsorted(edge_parent, np.arange(n_nodes + 1)),
            edge_token=np.concatenate(edge_token),
            edge_child=np.concatenate(edge_child),
            item_start=np.searchsorted(node_items[:, 0], np.arange(n_nodes + 1)),
            item_ids=node_items[:, 1],
            occurrences=occurrences,
        )
        return cls(arrays, max_length, total_tokens)

    def arrays(self) -> Dict[str, np.ndarray]:
        """The index's arrays (to cache it)."""
        return {name: getattr(self, name) for name in self.ARRAYS}

    @property
    def n_nodes(self) -> int:
        return len(self.edge_start) - 1

    def next_tokens(self, node: int) -> np.ndarray:
        """Tokens that may follow the substring of ``node`` (sorted)."""
        return self.edge_token[self.edge_start[node]: self.edge_start[node + 1]]

    def child(self, node: int, token: int) -> int:
        """The node of ``node``'s substring extended by ``token``; -1 when no facet contains it."""
        start, stop = self.edge_start[node], self.edge_start[node + 1]
        position = start + int(np.searchsorted(self.edge_token[start:stop], token))
        if position < stop and self.edge_token[position] == token:
            return int(self.edge_child[position])
        return -1

    def find(self, tokens: Sequence[int]) -> int:
        """The node of substring ``tokens`` (0 for the empty one); -1 when it is not indexed."""
        node = 0
        for token in tokens:
            node = self.child(node, int(token))
            if node < 0:
                return -1
        return node

    def items(self, node: int) -> np.ndarray:
        """Items whose sequence contains the substring of ``node`` (sorted, distinct)."""
        return self.item_ids[self.item_start[node]: self.item_start[node + 1]]


def constrained_generate(
    lm,
    prompts: Sequence[Sequence[int]],
    index: SubstringIndex,
    pad_token_id: int,
    eos_token_id: int,
    n_beams: int,
) -> List[List[Tuple[List[int], float]]]:
    """Beam search in which every generated sequence is an indexed substring, then eos.

    Returns, per prompt, up to ``n_beams`` (tokens without eos, log-likelihood) pairs, best first.
    The log-likelihood is the sum of the unrenormalised next-token log-probabilities (the mask
    removes invalid tokens without renormalising), as in TIGER's constrained beam search.
    """
    input_ids, attention_mask = left_pad(prompts, pad_token_id, next(lm.parameters()).device)
    width = input_ids.shape[1]
    eos = [int(eos_token_id)]
    memo: Dict[Tuple[int, ...], List[int]] = {}

    def allowed(_: int, sequence: torch.Tensor) -> List[int]:
        generated = tuple(int(t) for t in sequence[width:])
        if generated and generated[-1] == eos_token_id:
            return eos
        if generated not in memo:
            node = index.find(generated)
            tokens = [] if node < 0 else index.next_tokens(node).tolist()
            memo[generated] = tokens + eos if generated else (tokens or eos)
        return memo[generated]

    n_beams = max(1, int(n_beams))
    output = lm.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=index.max_length + 1,
        num_beams=n_beams, num_return_sequences=n_beams, do_sample=False, length_penalty=0.0,
        early_stopping=True, prefix_allowed_tokens_fn=allowed, pad_token_id=pad_token_id,
        eos_token_id=eos_token_id, output_scores=True, return_dict_in_generate=True,
    )
    return _beams_per_prompt(output, width, len(prompts), n_beams, eos_token_id, pad_token_id)


def free_generate(
    lm,
    prompts: Sequence[Sequence[int]],
    pad_token_id: int,
    eos_token_id: int,
    n_beams: int,
    max_new_tokens: int,
) -> List[List[Tuple[List[int], float]]]:
    """Unconstrained beam search: per prompt, ``n_beams`` (tokens without eos, log-likelihood)."""
    input_ids, attention_mask = left_pad(prompts, pad_token_id, next(lm.parameters()).device)
    n_beams = max(1, int(n_beams))
    output = lm.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
        num_beams=n_beams, num_return_sequences=n_beams, do_sample=False, length_penalty=0.0,
        early_stopping=True, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        output_scores=True, return_dict_in_generate=True,
    )
    return _beams_per_prompt(output, input_ids.shape[1], len(prompts), n_beams, eos_token_id, pad_token_id)


def _beams_per_prompt(output, width: int, n_prompts: int, n_beams: int, eos_token_id: int,
                      pad_token_id: int) -> List[List[Tuple[List[int], float]]]:
    sequences = output.sequences[:, width:].tolist()
    scores = output.sequences_scores.tolist()
    results: List[List[Tuple[List[int], float]]] = []
    for prompt in range(n_prompts):
        beams = []
        for row in range(prompt * n_beams, (prompt + 1) * n_beams):
            tokens = sequences[row]
            if eos_token_id in tokens:
                tokens = tokens[: tokens.index(eos_token_id)]
            tokens = [t for t in tokens if t != pad_token_id or pad_token_id == eos_token_id]
            beams.append((tokens, float(scores[row])))
        results.append(beams)
    return results


def substring_scores(log_likelihood: np.ndarray, occurrences: np.ndarray, total_tokens: int,
                     smoothing: float) -> np.ndarray:
    """SEAL-style n-gram scores: max(0, log-odds of the generation - log-odds of the corpus frequency).

    A substring that the LM is sure of but that is rare in the facet corpus scores high; one
    that is frequent everywhere scores near zero.
    """
    probability = np.clip(np.exp(log_likelihood), 1e-12, 1 - 1e-6)
    frequency = np.clip((occurrences + smoothing) / (total_tokens + smoothing), 1e-12, 1 - 1e-6)
    score = np.log(probability / (1 - probability)) - np.log(frequency / (1 - frequency))
    return np.maximum(score, 0.0)


@dataclass(frozen=True)
class FacetGrounding:
    """TransRec's aggregation settings: intra-facet exponent gamma and one bias per facet."""

    gamma: float
    biases: Tuple[float, ...]
    smoothing: float


def aggregate_facet_scores(
    generated: Sequence[Sequence[Sequence[Tuple[List[int], float]]]],
    indexes: Sequence[SubstringIndex],
    n_items: int,
    settings: FacetGrounding,
) -> torch.Tensor:
    """[B, n_items] item scores from the substrings generated per facet.

    ``generated[f][b]`` are user b's (tokens, log-likelihood) beams in facet f. Within a facet an
    item scores the sum of ``substring_score ** gamma`` over the distinct generated substrings it
    contains; across facets it sums, over the facets where it has any evidence, the facet score
    plus that facet's bias. Items without evidence (and the padding item 0) stay at -inf.
    """
    if len(generated) != len(indexes) or len(indexes) != len(settings.biases):
        raise ValueError(f"{len(generated)} generated facets, {len(indexes)} indexes, {len(settings.biases)} biases")
    n_users = len(generated[0]) if generated else 0
    total = np.zeros((n_users, n_items), dtype=np.float64)
    evidence = np.zeros((n_users, n_items), dtype=bool)
    for facet, (beams_per_user, index, bias) in enumerate(zip(generated, indexes, settings.biases)):
        facet_score = np.zeros((n_users, n_items), dtype=np.float64)
        facet_hit = np.zeros((n_users, n_items), dtype=bool)
        for user, beams in enumerate(beams_per_user):
            best: Dict[int, float] = {}
            for tokens, log_likelihood in beams:
                node = index.find(tokens) if tokens else -1
                if node > 0:
                    best[node] = max(best.get(node, -np.inf), log_likelihood)
            if not best:
                continue
            nodes = np.fromiter(best, dtype=np.int64)
            scores = substring_scores(np.fromiter(best.values(), dtype=np.float64),
                                      index.occurrences[nodes], index.total_tokens, settings.smoothing)
            for node, score in zip(nodes, scores):
                items = index.items(int(node))
                facet_score[user, items] += score ** settings.gamma
                facet_hit[user, items] = True
        total += np.where(facet_hit, facet_score + bias, 0.0)
        evidence |= facet_hit
    matrix = torch.from_numpy(np.where(evidence, total, -np.inf)).float()
    matrix[:, 0] = float("-inf")
    return matrix


# ---------------------------------------------------------------------------- BM25 grounding
def bm25_terms(text: str) -> List[str]:
    """Lower-cased word tokens (the BM25 vocabulary)."""
    return _WORD.findall(text.lower())


class BM25Grounder:
    """Grounds generated item texts in the catalogue with Okapi BM25 (``rank_bm25``).

    ``item_texts[i]`` is the text of internal item i (index 0, the padding item, is never
    returned). A generated text equal to a catalogue text (after whitespace and case
    normalisation) ranks that item first.
    """

    def __init__(self, item_texts: Sequence[str]):
        from rank_bm25 import BM25Okapi

        if len(item_texts) < 2:
            raise ValueError("the catalogue holds no item (only the padding item)")
        self.item_ids = np.arange(1, len(item_texts))
        corpus = [bm25_terms(text) or ["<empty>"] for text in item_texts[1:]]
        self.bm25 = BM25Okapi(corpus)
        self.exact: Dict[str, int] = {}
        for item in range(len(item_texts) - 1, 0, -1):  # the lowest id wins among equal texts
            self.exact[_normalise(item_texts[item])] = item

    def exact_item(self, text: str) -> Optional[int]:
        """The item whose text equals ``text`` exactly (normalised), else None."""
        return self.exact.get(_normalise(text))

    def ground(self, text: str, top_k: int) -> List[int]:
        """Up to ``top_k`` items for one generated text, best first (only items sharing a term)."""
        exact = self.exact_item(text)
        terms = bm25_terms(text)
        ranked: List[int] = [] if exact is None else [exact]
        if terms:
            scores = self.bm25.get_scores(terms)
            count = min(top_k, len(scores))
            top = np.argpartition(-scores, count - 1)[:count]
            top = top[np.argsort(-scores[top], kind="stable")]
            ranked += [int(self.item_ids[i]) for i in top if scores[i] > 0 and self.item_ids[i] != exact]
        return ranked[:top_k]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def round_robin_merge(ranked_lists: Sequence[Sequence[int]], length: int) -> List[int]:
    """CALRec's quasi-round-robin merge: round r takes the r-th item of every beam's list, in beam
    order, skipping items already taken, until ``length`` items are taken."""
    merged: List[int] = []
    taken = set()
    depth = max((len(items) for items in ranked_lists), default=0)
    for rank in range(depth):
        for items in ranked_lists:
            if rank < len(items) and items[rank] not in taken:
                taken.add(items[rank])
                merged.append(items[rank])
                if len(merged) == length:
                    return merged
    return merged


def ranked_lists_to_scores(ranked: Sequence[Sequence[int]], n_items: int, device=None) -> torch.Tensor:
    """[B, n_items]: rank r of user b's list scores ``-r`` (first = 0), every other item -inf."""
    matrix = torch.full((len(ranked), n_items), float("-inf"), device=device)
    for user, items in enumerate(ranked):
        if items:
            columns = torch.as_tensor(list(items), dtype=torch.long, device=device)
            matrix[user, columns] = -torch.arange(len(items), dtype=torch.float, device=device)
    matrix[:, 0] = float("-inf")
    return matrix


# ---------------------------------------------------------------------------- LM batching
def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input ids [B, T], attention mask [B, T]) with padding on the left, for generation."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        if tokens:
            ids[row, width - len(tokens):] = torch.as_tensor(list(tokens), dtype=torch.long)
            mask[row, width - len(tokens):] = 1
    return ids.to(device), mask.to(device)


def prompt_target_batch(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_token_id: int,
                        device=None) -> Dict[str, torch.Tensor]:
    """Right-padded ``prompt + target`` sequences for teacher forcing.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (the target tokens, -100 elsewhere) and
    ``prompt_mask`` (1 on the prompt tokens), all [B, T].
    """
    width = max(len(p) + len(t) for p, t in zip(prompts, targets))
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        length = len(prompt) + len(target)
        ids[row, :length] = torch.as_tensor(list(prompt) + list(target), dtype=torch.long)
        labels[row, len(prompt): length] = torch.as_tensor(list(target), dtype=torch.long)
        mask[row, :length] = 1
        prompt_mask[row, : len(prompt)] = 1
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels, prompt_mask=prompt_mask)
    return {key: value.to(device) for key, value in batch.items()}


def target_cross_entropy(lm, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of the labelled positions; the LM head runs on those positions only.

    ``hidden`` [B, T, d] are the last-layer states of the inputs and ``labels`` [B, T] the input
    tokens to predict (-100 elsewhere), aligned with the inputs.
    """
    positions = labels[:, 1:] != IGNORE_INDEX
    logits = lm.get_output_embeddings()(hidden[:, :-1][positions])
    return F.cross_entropy(logits.float(), labels[:, 1:][positions])


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, d] over the positions where ``mask`` [B, T] is 1."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE: row b of ``queries`` should match row b of ``keys`` (cosine / temperature)."""
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


# ---------------------------------------------------------------------------- LM and texts
def load_trainable_lm(name_or_path: str, device, llm_cache_dir: Optional[str] = None):
    """``(lm, tokenizer, pad_token_id, eos_token_id)``: a causal LM whose weights will be fine-tuned."""
    from recbole_llm.llm.loader import load_causal_lm

    lm, tokenizer = load_causal_lm(name_or_path, device, llm_cache_dir)
    lm.requires_grad_(True)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer of LM {name_or_path!r} defines no eos token: generation cannot stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return lm, tokenizer, int(pad), int(eos)


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int, stage_folder, llm_folder, name: str) -> List[List[int]]:
    """Token ids (no special tokens, at most ``max_tokens``) of every text, cached as a stage."""
    from recbole_llm import stages

    def compute():
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        tokens = [list(map(int, ids[:max_tokens])) for ids in encoded]
        return tokens, {"texts": len(texts), "truncated": sum(len(ids) > max_tokens for ids in encoded)}

    stage = stages.Stage(name, stage_folder, inputs={
        "texts": stages.digest(list(texts)), "max_tokens": int(max_tokens), "tokenizer": stages.path_input(llm_folder)})
    return stage.run(compute, kind="json")


def facet_texts(dataset, fields: Sequence[str]) -> List[str]:
    """One text per internal item id from ``fields`` (joined with ", "); index 0 is ''."""
    from recbole_llm.text.assemble import assemble_item_texts

    columns = [assemble_item_texts(dataset, [field]) for field in fields]
    texts = [", ".join(part for part in parts if part) for parts in zip(*columns)]
    texts[0] = ""
    return texts
