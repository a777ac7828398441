"""TransRecLLM: the substring index, constrained decoding, aggregated grounding, a tiny end-to-end run."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from recbole_llm import Config, create_dataset, run_recbole_llm
from recbole_llm.model._grounding import FacetGrounding, SubstringIndex, aggregate_facet_scores, constrained_generate
from recbole_llm.registry import get_model
from tiny_llm import ml100k_item_lines, save_tiny_llama

PROMPT_WORDS = ["Items a user interacted with, most recent last, by ID: title: attribute:", "Next item ;"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    item_ids = [line.split("\t")[0] for line in ml100k_item_lines()]
    return save_tiny_llama(tmp_path_factory.mktemp("transrec_lm"), ml100k_item_lines() + item_ids + PROMPT_WORDS)


def _substrings(sequences, max_length, prefixes_only=False):
    found = set()
    for tokens in sequences:
        for start in range(1 if prefixes_only else len(tokens)):
            for length in range(1, max_length + 1):
                if start + length <= len(tokens):
                    found.add(tuple(tokens[start: start + length]))
    return found


@pytest.mark.parametrize("prefixes_only", [False, True])
def test_substring_index_allows_exactly_the_indexed_substrings(prefixes_only):
    rng = random.Random(3)
    sequences = [[rng.randrange(3, 8) for _ in range(rng.randrange(1, 7))] for _ in range(12)]
    index = SubstringIndex.build(sequences, list(range(1, 13)), max_length=3, prefixes_only=prefixes_only)
    valid = _substrings(sequences, 3, prefixes_only)
    for length in range(1, 4):
        for candidate in itertools.product(range(2, 9), repeat=length):
            node = index.find(candidate)
            assert (node > 0) == (candidate in valid), candidate
            if node > 0:
                owners = {k + 1 for k, s in enumerate(sequences) if candidate in _substrings([s], 3, prefixes_only)}
                assert set(index.items(node).tolist()) == owners
                # every allowed next token extends into a valid substring, and nothing else is allowed
                allowed = set(index.next_tokens(node).tolist())
                assert allowed == {t for t in range(2, 9) if candidate + (t,) in valid}
    assert index.occurrences[index.find(sequences[0][:1])] == sum(
        s[i] == sequences[0][0] for s in sequences for i in range(1 if prefixes_only else len(s)))


def test_constrained_generation_only_writes_indexed_substrings(tiny_lm):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    rng = random.Random(0)
    sequences = [[rng.randrange(3, 40) for _ in range(6)] for _ in range(5)]
    index = SubstringIndex.build(sequences, list(range(1, 6)), max_length=4)
    valid = _substrings(sequences, 4)
    with torch.no_grad():
        beams = constrained_generate(lm, [[5, 6, 7], [8], [9, 10, 11, 12]], index, pad_token_id=0, eos_token_id=2,
                                     n_beams=6)
    assert len(beams) == 3
    for user_beams in beams:
        assert len(user_beams) == 6
        scores = [score for _, score in user_beams]
        assert scores == sorted(scores, reverse=True)
        for tokens, score in user_beams:
            assert tuple(tokens) in valid and math.isfinite(score)


def test_grounding_scores_only_catalogue_items_and_an_exact_title_first():
    titles = [[], [10, 11, 12], [10, 11, 13, 14], [15, 11], [16]]
    ids = [[], [20], [21], [22], [23]]
    indexes = [SubstringIndex.build(t[1:], [1, 2, 3, 4], 4, prefixes_only=p) for t, p in ((ids, True), (titles, False))]
    settings = FacetGrounding(gamma=2.0, biases=(0.0, 0.0), smoothing=0.0)
    generated_ids = [[([21], -9.0)]]
    generated_titles = [[([10, 11, 13, 14], -0.5), ([11], -0.1), ([99], -0.1)]]  # 99 is in no title
    scores = aggregate_facet_scores([generated_ids, generated_titles], indexes, n_items=5, settings=settings)
    assert scores.shape == (1, 5)
    assert torch.isinf(scores[0, 0])
    assert scores[0].argmax().item() == 2, "the exactly generated title must rank its item first"
    finite = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert set(finite) <= {1, 2, 3, 4} and set(finite) == {1, 2, 3}  # item 4 shares nothing with the generation
    biased = aggregate_facet_scores([[[([23], -0.01)]], [[([16], -5.0)]]], indexes, 5, FacetGrounding(2.0, (9.0, 0.0), 0.0))
    plain = aggregate_facet_scores([[[([23], -0.01)]], [[([16], -5.0)]]], indexes, 5, FacetGrounding(2.0, (0.0, 0.0), 0.0))
    assert biased[0, 4].item() == pytest.approx(plain[0, 4].item() + 9.0)


def _transrec_config(tiny_config, tiny_lm, **overrides) -> dict:
    return {**tiny_config, "transrec_llm": tiny_lm, "transrec_title_field": "movie_title",
            "transrec_attribute_fields": ["class"], "transrec_history_items": 3, "transrec_max_facet_tokens": 10,
            "transrec_substring_length": 3, "beam_size": 2, "train_batch_size": 256, "eval_batch_size": 64,
            "generate_users": 64, "learning_rate": 1e-3, **overrides}


def test_registered_as_transrecllm_beside_recboles_transrec():
    assert get_model("TransRecLLM").__module__ == "recbole_llm.model.transrec_llm"
    assert get_model("TransRec").__module__.startswith("recbole.model")


def test_end_to_end_full_sort_predict_and_cached_index(tiny_config, tiny_lm):
    config = _transrec_config(tiny_config, tiny_lm)
    result = run_recbole_llm(model="TransRecLLM", dataset=config["dataset"], config_dict=config, saved=False)
    assert all(math.isfinite(v) for v in result["test_result"].values())
    assert result["test_result"]["recall@50"] >= result["test_result"]["recall@10"]

    from recbole.data import data_preparation

    from recbole_llm.model.transrec_llm import TransRecLLM

    cfg = Config(model="TransRecLLM", dataset=config["dataset"], config_dict=config)
    train_data, _, test_data = data_preparation(cfg, create_dataset(cfg))
    model = TransRecLLM(cfg, train_data._dataset)
    reports = model.index_report
    assert set(reports) == {"id", "title", "attribute"} and all(r["nodes"] > 1 for r in reports.values())
    assert all(r["cached"] for r in reports.values()), "the indexes built by the first run were not reused"
    assert result["preparation"]["transrec_title_index"]["cached"] is False
    assert result["preparation"]["transrec_title_index"]["nodes"] == reports["title"]["nodes"]
    batch = next(iter(train_data))[:64]

    def fixed_loss():
        torch.manual_seed(0)  # the same random target substrings every call
        return model.calculate_loss(batch)

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = fixed_loss()
    for _ in range(15):
        optimizer.zero_grad()
        fixed_loss().backward()
        optimizer.step()
    assert torch.isfinite(before) and fixed_loss().item() < 0.8 * before.item(), "the substring loss does not learn"
    model.eval()
    interaction = next(iter(test_data))[0][:4]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
    assert scores.shape == (4, train_data._dataset.item_num)
    assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores).any(dim=1).all()
    finite_items = torch.isfinite(scores[0]).nonzero().flatten().numpy()
    assert np.all((finite_items >= 1) & (finite_items < train_data._dataset.item_num))
