"""CALRec: a causal LM fine-tuned to write the next item's text, aligned contrastively.

Reference:
    Yaoyiran Li, Xiang Zhai, Moustafa Alzantot, Keyi Yu, Ivan Vulic, Anna Korhonen and Mohamed
    Hammad. "CALRec: Contrastive Alignment of Generative LLMs for Sequential Recommendation."
    RecSys 2024, arXiv:2405.02429.

Pure text in, pure text out. The user's latest ``calrec_history_items`` items are written as a
numbered list of item texts (``field: value`` for each of ``calrec_text_fields``, e.g. title,
category, brand), most recent last; the LM writes the next item's text. One LM serves as two
towers: the user tower reads the history prompt, the item tower reads an item's text. The loss
mixes next-item generation (cross-entropy on the target text) with two in-batch InfoNCE terms
between mean-pooled last-layer states: ``L_TT`` aligns each history with its target item's text
(user tower vs item tower), ``L_UT`` aligns each history with the whole training sequence
(history followed by the target text), ``loss = alpha * L_NIG + (1 - alpha) / 2 * (L_TT + L_UT)``.

The paper's two stages are two ordinary runs: a multi-category run on a mix of converted datasets
(``python -m recbole_llm.data.multi_domain``), then a target-domain run that starts from it
(``calrec_init``: the first run's checkpoint; only LM weights are read, so the catalogues may
differ). Ranking: beam search writes ``beam_size`` texts per user; BM25 (``rank_bm25``) grounds
each in the catalogue (a text equal to an item's text ranks that item first); the per-beam lists
are merged quasi-round-robin and scattered into a [B, n_items] matrix (-inf elsewhere).
"""
from __future__ import annotations

import logging
import pickle
from typing import Dict, List

import torch
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_llm.llm.loader import resolve_causal_lm
from recbole_llm.model._grounding import (
    BM25Grounder,
    facet_texts,
    free_generate,
    info_nce,
    load_trainable_lm,
    mean_pool,
    prompt_target_batch,
    ranked_lists_to_scores,
    round_robin_merge,
    target_cross_entropy,
    tokenize_texts,
)
from recbole_llm.utils import cache_dir

logger = logging.getLogger(__name__)

HEADER = "Purchase history of a user, most recent last:\n"
TRAILER = "Next item:"


class CALRec(SequentialRecommender):
    """Generative text recommender with contrastive two-tower alignment (RecBole sequential model)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.alpha = float(config["calrec_alpha"])
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"calrec_alpha must lie in [0, 1], got {self.alpha!r}")
        self.temperature = float(config["calrec_temperature"])
        if self.temperature <= 0:
            raise ValueError(f"calrec_temperature must be positive, got {self.temperature!r}")
        self.history_items = int(config["calrec_history_items"])
        self.beam_size = int(config["beam_size"])
        self.bm25_top = int(config["calrec_bm25_top"])
        self.max_new_tokens = int(config["calrec_max_new_tokens"])
        self.generate_users = max(1, int(config["generate_users"]))
        fields = list(config["calrec_text_fields"] or config["text_fields"] or [])
        if not fields:
            raise ValueError("calrec_text_fields (or text_fields) is empty: name the item fields of the item text")

        llm_cache = config["calrec_llm_cache_dir"]
        self.lm, self.tokenizer, self.pad_id, self.eos_id = load_trainable_lm(config["calrec_llm"], "cpu", llm_cache)
        columns = [facet_texts(dataset, [field]) for field in fields]
        labels = [field.replace("_", " ") for field in fields]
        self.item_texts = [""] + ["; ".join(f"{label}: {value}" for label, value in zip(labels, parts) if value)
                                  for parts in list(zip(*columns))[1:]]
        folder = cache_dir(config, "calrec")
        llm_folder = resolve_causal_lm(config["calrec_llm"], llm_cache)
        pieces = [HEADER, TRAILER, "\n"] + [f"{k}. " for k in range(1, self.history_items + 1)]
        self.item_tokens = tokenize_texts(self.tokenizer, self.item_texts, int(config["calrec_max_item_tokens"]),
                                          folder, llm_folder, "calrec_item_tokens")
        piece_tokens = tokenize_texts(self.tokenizer, pieces, 64, folder, llm_folder, "calrec_prompt_tokens")
        self.header, self.trailer, self.newline = piece_tokens[:3]
        self.numbers = piece_tokens[3:]
        self.grounder = BM25Grounder(self.item_texts)
        self.first_fields = {_first_field(text) for text in self.item_texts[1:]}
        self.generation_counts = {"users": 0, "beams": 0, "exact_beams": 0, "exact_top_beams": 0,
                                  "exact_first_field_beams": 0}
        if config["calrec_init"]:
            self._load_stage_one(config["calrec_init"])

    def _load_stage_one(self, path: str) -> None:
        """Start from the LM weights of an earlier CALRec run (the multi-category stage)."""
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise ValueError(f"calrec_init {path!r} could not be read as a RecBole checkpoint: {err}") from err
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        lm_state = {k[len("lm."):]: v for k, v in (state or {}).items() if k.startswith("lm.")}
        if not lm_state:
            raise ValueError(f"calrec_init {path!r} holds no CALRec LM weights (no 'lm.' keys in its state_dict)")
        missing, unexpected = self.lm.load_state_dict(lm_state, strict=False)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise ValueError(f"calrec_init {path!r} was trained with another LM: missing {missing[:3]}, unexpected {unexpected[:3]}")
        logger.info("CALRec LM initialised from %s", path)

    # ------------------------------------------------------------------ prompts
    def prompt(self, items: List[int]) -> List[int]:
        """Token ids of the history prompt of ``items`` (oldest first; the latest ones are kept)."""
        items = [i for i in items if i > 0][-self.history_items:]
        tokens = list(self.header)
        for position, item in enumerate(items):
            tokens += self.numbers[position] + self.item_tokens[item] + self.newline
        return tokens + self.trailer

    def _prompts(self, interaction) -> List[List[int]]:
        sequences, lengths = interaction[self.ITEM_SEQ].tolist(), interaction[self.ITEM_SEQ_LEN].tolist()
        return [self.prompt(row[:length]) for row, length in zip(sequences, lengths)]

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # ------------------------------------------------------------------ training
    def calculate_loss(self, interaction) -> torch.Tensor:
        device = interaction[self.ITEM_SEQ].device
        targets = interaction[self.POS_ITEM_ID].tolist()
        batch = prompt_target_batch(self._prompts(interaction),
                                    [self.item_tokens[t] + [self.eos_id] for t in targets], self.pad_id, device)
        hidden = self._hidden(batch["input_ids"], batch["attention_mask"])
        nig = target_cross_entropy(self.lm, hidden, batch["labels"])
        if self.alpha == 1.0:
            return nig
        user = mean_pool(hidden, batch["prompt_mask"])
        sequence = mean_pool(hidden, batch["attention_mask"])
        item_batch = prompt_target_batch([[]] * len(targets), [self.item_tokens[t] + [self.eos_id] for t in targets],
                                         self.pad_id, device)
        item = mean_pool(self._hidden(item_batch["input_ids"], item_batch["attention_mask"]), item_batch["attention_mask"])
        two_tower = info_nce(user, item, self.temperature)
        user_sequence = info_nce(user, sequence, self.temperature)
        return self.alpha * nig + (1.0 - self.alpha) / 2.0 * (two_tower + user_sequence)

    # ------------------------------------------------------------------ ranking
    def generate_texts(self, prompts: List[List[int]]) -> List[List[str]]:
        """``beam_size`` generated item texts per prompt, best beam first."""
        texts = []
        for start in range(0, len(prompts), self.generate_users):
            beams = free_generate(self.lm, prompts[start: start + self.generate_users], self.pad_id, self.eos_id,
                                  self.beam_size, self.max_new_tokens)
            for user_beams in beams:
                texts.append([self.tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens, _ in user_beams])
        return texts

    def rank_items(self, generated: List[List[str]]) -> List[List[int]]:
        """Ground every generated text with BM25 and merge each user's beams quasi-round-robin."""
        ranked = []
        for beams in generated:
            exact = [self.grounder.exact_item(text) is not None for text in beams]
            self.generation_counts["users"] += 1
            self.generation_counts["beams"] += len(beams)
            self.generation_counts["exact_beams"] += sum(exact)
            self.generation_counts["exact_top_beams"] += int(bool(exact and exact[0]))
            self.generation_counts["exact_first_field_beams"] += sum(_first_field(t) in self.first_fields for t in beams)
            lists = [self.grounder.ground(text, self.bm25_top) for text in beams]
            ranked.append(round_robin_merge(lists, self.n_items - 1))
        return ranked

    def generation_report(self) -> Dict[str, float]:
        """How often generated texts equal a catalogue item's whole text, or its first field (the
        title), exactly (case and whitespace normalised), since the model was built."""
        counts = self.generation_counts
        return {**counts,
                "exact_rate": counts["exact_beams"] / max(1, counts["beams"]),
                "exact_first_field_rate": counts["exact_first_field_beams"] / max(1, counts["beams"]),
                "exact_top_rate": counts["exact_top_beams"] / max(1, counts["users"])}

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """[B, n_items]: the merged ranked list scored -rank, every other item -inf."""
        ranked = self.rank_items(self.generate_texts(self._prompts(interaction)))
        return ranked_lists_to_scores(ranked, self.n_items, interaction[self.ITEM_SEQ].device)

    def predict(self, interaction) -> torch.Tensor:
        """Teacher-forced log-likelihood [B] of each row's candidate item text."""
        items = interaction[self.ITEM_ID].tolist()
        batch = prompt_target_batch(self._prompts(interaction), [self.item_tokens[i] + [self.eos_id] for i in items],
                                    self.pad_id, interaction[self.ITEM_ID].device)
        hidden = self._hidden(batch["input_ids"], batch["attention_mask"])
        log_probs = torch.log_softmax(self.lm.get_output_embeddings()(hidden[:, :-1]).float(), dim=-1)
        labels = batch["labels"][:, 1:]
        picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (labels != -100)).sum(-1)


def _first_field(text: str) -> str:
    """The first ``field: value`` entry of an item text (the title), normalised."""
    return " ".join(text.split(";", 1)[0].lower().split())
