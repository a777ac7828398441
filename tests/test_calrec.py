"""CALRec: BM25 grounding, quasi-round-robin merge, the two-tower loss, a tiny end-to-end run."""
from __future__ import annotations

import math

import pytest
import torch

from recbole_llm import Config, create_dataset, run_recbole_llm
from recbole_llm.model._grounding import BM25Grounder, info_nce, ranked_lists_to_scores, round_robin_merge
from tiny_llm import ml100k_item_lines, save_tiny_llama

CATALOGUE = [
    "",
    "title: Digital multimeter; categories: Test equipment; brand: Fluke",
    "title: Nitrile gloves, powder free; categories: Lab supplies; brand: Kimberly",
    "title: Safety goggles; categories: Lab supplies; brand: 3M",
    "title: Digital caliper; categories: Measuring tools; brand: Mitutoyo",
    "title: Safety goggles; categories: Lab supplies; brand: Uvex",
]
PROMPT_WORDS = ["Purchase history of a user, most recent last:", "Next item:", "movie title: class:", "1. 2. 3. 4. ;"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("calrec_lm"), ml100k_item_lines() + PROMPT_WORDS)


def test_grounding_returns_only_catalogue_items_and_an_exact_text_first():
    grounder = BM25Grounder(CATALOGUE)
    for text in ["digital tools", "Safety goggles from 3M", "something unrelated entirely", ""]:
        items = grounder.ground(text, top_k=10)
        assert all(1 <= item < len(CATALOGUE) for item in items)
        assert len(items) == len(set(items))
    # an exact catalogue text maps to its own item first, even where another item shares its title
    assert grounder.ground(CATALOGUE[5], top_k=3)[0] == 5
    assert grounder.ground("  TITLE: digital caliper;  categories: Measuring tools; brand: Mitutoyo ", 3)[0] == 4
    assert grounder.exact_item("title: Safety goggles") is None
    assert grounder.ground("multimeter", top_k=10) == [1]  # only items sharing a term


def test_round_robin_merge_takes_each_beams_next_item_in_turn():
    assert round_robin_merge([[3, 1, 2], [3, 4], [5]], length=10) == [3, 5, 1, 4, 2]
    assert round_robin_merge([[3, 1, 2], [3, 4], [5]], length=2) == [3, 5]
    scores = ranked_lists_to_scores([[3, 5, 1], []], n_items=6)
    assert scores.shape == (2, 6)
    assert scores[0].argsort(descending=True)[:3].tolist() == [3, 5, 1]
    assert torch.isinf(scores[0, [0, 2, 4]]).all() and torch.isinf(scores[1]).all()


def test_info_nce_prefers_matching_rows():
    keys = torch.eye(4)
    assert info_nce(keys, keys, 0.1) < info_nce(keys, keys.roll(1, dims=0), 0.1)


def _calrec_config(tiny_config, tiny_lm, **overrides) -> dict:
    return {**tiny_config, "calrec_llm": tiny_lm, "calrec_text_fields": ["movie_title", "class"],
            "calrec_history_items": 3, "calrec_max_item_tokens": 12, "beam_size": 3, "calrec_max_new_tokens": 8,
            "calrec_bm25_top": 10, "train_batch_size": 256, "eval_batch_size": 64, "generate_users": 64,
            "learning_rate": 1e-3, **overrides}


def test_loss_terms_and_full_sort_predict(tiny_config, tiny_lm):
    from recbole.data import data_preparation

    from recbole_llm.model.calrec import CALRec

    config = Config(model="CALRec", dataset=tiny_config["dataset"], config_dict=_calrec_config(tiny_config, tiny_lm))
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    model = CALRec(config, train_data._dataset)
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    model.alpha = 1.0
    generation_only = model.calculate_loss(batch)
    assert torch.isfinite(loss) and torch.isfinite(generation_only) and loss.item() != generation_only.item()
    loss.backward()
    assert model.lm.get_input_embeddings().weight.grad.abs().sum() > 0
    model.eval()
    interaction = next(iter(test_data))[0][:5]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
    assert scores.shape == (5, train_data._dataset.item_num)
    assert torch.isinf(scores[:, 0]).all()
    finite = torch.isfinite(scores)
    assert finite.any(dim=1).all(), "a user got no grounded item"
    report = model.generation_report()
    assert report["users"] == 5 and report["beams"] == 15 and 0 <= report["exact_rate"] <= 1
    title = model.item_texts[7].split(";")[0]
    model.rank_items([[model.item_texts[7], title + "; class: none", "no such item"]])
    after = model.generation_report()
    assert after["exact_beams"] - report["exact_beams"] == 1
    assert after["exact_first_field_beams"] - report["exact_first_field_beams"] == 2


def test_end_to_end_and_stage_two_starts_from_stage_one(tiny_config, tiny_lm):
    config = _calrec_config(tiny_config, tiny_lm)
    first = run_recbole_llm(model="CALRec", dataset=config["dataset"], config_dict=config, saved=True)
    assert all(math.isfinite(v) for v in first["test_result"].values())
    assert first["test_result"]["recall@50"] >= first["test_result"]["recall@10"]
    stage_one = torch.load(first["saved_model_file"], map_location="cpu", weights_only=False)["state_dict"]

    from recbole.data import data_preparation

    from recbole_llm.model.calrec import CALRec

    second = Config(model="CALRec", dataset=config["dataset"],
                    config_dict={**config, "calrec_init": first["saved_model_file"]})
    train_data, _, _ = data_preparation(second, create_dataset(second))
    model = CALRec(second, train_data._dataset)
    weight = "lm.model.embed_tokens.weight"
    assert torch.equal(model.state_dict()[weight], stage_one[weight])
    with pytest.raises(ValueError, match="calrec_init"):
        CALRec(Config(model="CALRec", dataset=config["dataset"],
                      config_dict={**config, "calrec_init": str(tiny_lm) + "/config.json"}), train_data._dataset)
