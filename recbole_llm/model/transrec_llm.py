"""TransRecLLM: multi-facet identifiers, position-free constrained generation, aggregated grounding.

Reference:
    Xinyu Lin, Wenjie Wang, Yongqi Li, Fuli Feng, See-Kiong Ng and Tat-Seng Chua. "Bridging Items
    and Language: A Transition Paradigm for Large Language Model-Based Recommendation."
    KDD 2024, arXiv:2310.06491.

Registered as ``TransRecLLM``: RecBole already ships ``TransRec`` (He et al., RecSys 2017,
translation-based recommendation), a different model.

Every item has three identifiers (facets): its ID string, its title (``transrec_title_field``)
and its attributes (``transrec_attribute_fields``, e.g. categories). For each facet the
instruction lists that facet of the user's latest items, most recent last, and the LM writes a
substring of the next item's identifier in that facet. Training targets are random substrings
("position-free": any start, 1..``transrec_substring_length`` tokens; the ID facet is written
from its start). Decoding is constrained per facet by a :class:`SubstringIndex` of all bounded
token substrings of that facet over the catalogue (the paper's FM-index), so only substrings of
some item's identifier can be generated. Grounding: each generated substring scores the items
containing it; an item's facet score is the sum of its substrings' scores raised to
``transrec_gamma``, and its total the sum over facets of facet score + ``transrec_facet_bias``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_llm import stages
from recbole_llm.llm.loader import resolve_causal_lm
from recbole_llm.model._grounding import (
    FacetGrounding,
    SubstringIndex,
    aggregate_facet_scores,
    constrained_generate,
    facet_texts,
    load_trainable_lm,
    prompt_target_batch,
    target_cross_entropy,
    tokenize_texts,
)
from recbole_llm.utils import cache_dir

FACETS = ("id", "title", "attribute")
FACET_NAMES = {"id": "ID", "title": "title", "attribute": "attribute"}


class TransRecLLM(SequentialRecommender):
    """Multi-facet generative recommender (RecBole sequential model)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.history_items = int(config["transrec_history_items"])
        self.substring_length = int(config["transrec_substring_length"])
        self.beam_size = int(config["beam_size"])
        self.generate_users = max(1, int(config["generate_users"]))
        biases = list(config["transrec_facet_bias"])
        if len(biases) != len(FACETS):
            raise ValueError(f"transrec_facet_bias needs one bias per facet {FACETS}, got {biases!r}")
        self.grounding = FacetGrounding(float(config["transrec_gamma"]), tuple(float(b) for b in biases),
                                        float(config["transrec_smoothing"]))
        llm_cache = config["transrec_llm_cache_dir"]
        self.lm, self.tokenizer, self.pad_id, self.eos_id = load_trainable_lm(config["transrec_llm"], "cpu", llm_cache)
        folder = cache_dir(config, "transrec_llm")
        llm_folder = resolve_causal_lm(config["transrec_llm"], llm_cache)
        self.facet_values = self._facet_values(config, dataset)
        max_tokens = int(config["transrec_max_facet_tokens"])
        self.facet_tokens = [
            tokenize_texts(self.tokenizer, [" " + value if value else "" for value in values], max_tokens, folder,
                           llm_folder, f"transrec_{facet}_tokens")
            for facet, values in zip(FACETS, self.facet_values)
        ]
        pieces = [f"Items a user interacted with, most recent last, by {FACET_NAMES[f]}:" for f in FACETS]
        pieces += [f" Next item {FACET_NAMES[f]}:" for f in FACETS] + [";"]
        piece_tokens = tokenize_texts(self.tokenizer, pieces, 64, folder, llm_folder, "transrec_prompt_tokens")
        self.headers, self.trailers, self.separator = piece_tokens[:3], piece_tokens[3:6], piece_tokens[6]
        self.indexes, self.index_report = [], {}
        for facet, tokens in zip(FACETS, self.facet_tokens):
            index, self.index_report[facet] = self._substring_index(folder, facet, tokens)
            self.indexes.append(index)

    @staticmethod
    def _facet_values(config, dataset) -> List[List[str]]:
        title_field = config["transrec_title_field"]
        attribute_fields = list(config["transrec_attribute_fields"] or [])
        if not title_field:
            raise ValueError("transrec_title_field is not set: name the item field that holds the title")
        if not attribute_fields:
            raise ValueError("transrec_attribute_fields is empty: name the item fields of the attribute facet")
        ids = [str(token) for token in dataset.field2id_token[dataset.iid_field]]
        ids[0] = ""
        return [ids, facet_texts(dataset, [title_field]), facet_texts(dataset, attribute_fields)]

    def _substring_index(self, folder, facet: str, tokens: Sequence[Sequence[int]]) -> Tuple[SubstringIndex, dict]:
        """The facet's substring index over all items (cached as a stage) and the stage's report."""
        owners = list(range(1, len(tokens)))
        prefixes_only = facet == "id"

        def compute():
            index = SubstringIndex.build(tokens[1:], owners, self.substring_length, prefixes_only=prefixes_only)
            arrays = {name: torch.from_numpy(value) for name, value in index.arrays().items()}
            arrays["total_tokens"] = torch.tensor(index.total_tokens)
            return arrays, {"nodes": index.n_nodes, "tokens": index.total_tokens}

        stage = stages.Stage(f"transrec_{facet}_index", folder, inputs={
            "tokens": stages.digest([list(t) for t in tokens]), "max_length": self.substring_length,
            "prefixes_only": prefixes_only})
        arrays = stage.run(compute, kind="torch")
        index = SubstringIndex({k: v.numpy() for k, v in arrays.items() if k != "total_tokens"},
                               self.substring_length, int(arrays["total_tokens"]))
        return index, dict(stage.report)

    # ------------------------------------------------------------------ prompts
    def prompt(self, facet: int, items: Sequence[int]) -> List[int]:
        """Instruction listing facet ``facet`` of the latest history ``items`` (oldest first)."""
        items = [i for i in items if i > 0][-self.history_items:]
        tokens = list(self.headers[facet])
        for position, item in enumerate(items):
            tokens += self.facet_tokens[facet][item] + (self.separator if position + 1 < len(items) else [])
        return tokens + self.trailers[facet]

    def _histories(self, interaction) -> List[List[int]]:
        sequences, lengths = interaction[self.ITEM_SEQ].tolist(), interaction[self.ITEM_SEQ_LEN].tolist()
        return [row[:length] for row, length in zip(sequences, lengths)]

    def _target_substring(self, facet: int, item: int, generator: torch.Generator) -> List[int]:
        tokens = self.facet_tokens[facet][item]
        if not tokens:
            return []
        if FACETS[facet] == "id":
            return tokens[: self.substring_length]
        start = int(torch.randint(len(tokens), (1,), generator=generator))
        longest = min(self.substring_length, len(tokens) - start)
        return tokens[start: start + 1 + int(torch.randint(longest, (1,), generator=generator))]

    # ------------------------------------------------------------------ training
    def calculate_loss(self, interaction) -> torch.Tensor:
        """Cross-entropy of one random identifier substring of the next item per facet."""
        histories = self._histories(interaction)
        targets = interaction[self.POS_ITEM_ID].tolist()
        generator = torch.Generator().manual_seed(int(torch.randint(2 ** 31, (1,))))
        prompts, answers = [], []
        for facet in range(len(FACETS)):
            for history, target in zip(histories, targets):
                substring = self._target_substring(facet, target, generator)
                if substring:
                    prompts.append(self.prompt(facet, history))
                    answers.append(substring + [self.eos_id])
        batch = prompt_target_batch(prompts, answers, self.pad_id, interaction[self.ITEM_SEQ].device)
        hidden = self.lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return target_cross_entropy(self.lm, hidden, batch["labels"])

    # ------------------------------------------------------------------ ranking
    def generate_substrings(self, histories: List[List[int]]):
        """Per facet, per user: ``beam_size`` (substring tokens, log-likelihood), best first."""
        generated = []
        for facet, index in enumerate(self.indexes):
            per_user = []
            for start in range(0, len(histories), self.generate_users):
                prompts = [self.prompt(facet, h) for h in histories[start: start + self.generate_users]]
                per_user += constrained_generate(self.lm, prompts, index, self.pad_id, self.eos_id, self.beam_size)
            generated.append(per_user)
        return generated

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """[B, n_items]: aggregated facet scores of the items containing generated substrings, else -inf."""
        generated = self.generate_substrings(self._histories(interaction))
        scores = aggregate_facet_scores(generated, self.indexes, self.n_items, self.grounding)
        return scores.to(interaction[self.ITEM_SEQ].device)

    def predict(self, interaction) -> torch.Tensor:
        """Sampled evaluation: the full-ranking score of each row's candidate (-inf when not grounded)."""
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

