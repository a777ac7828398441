"""Data-parallel training and exact sharded evaluation for the models beyond tests/test_distributed.py:
the text-transfer, LLM-embedding, LLM-sequence, text-generation and search models, each over two CPU
processes (gloo) with tiny sizes and a tiny random Llama."""
from __future__ import annotations

import socket

import pytest

from recbole_llm.quick_start import run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(model: str, config: dict) -> dict:
    return run(model=model, dataset=config["dataset"], config_dict=config, saved=False, nproc=2,
               ip="127.0.0.1", port=str(_free_port()))


def _config(model: str, tiny_config: dict, tiny_lm: str, tmp_path, search_data: dict) -> dict:
    """Tiny settings per model (the same keys its own test file uses)."""
    base = {**tiny_config, "train_batch_size": 64, "cache_dir": str(tmp_path / "cache")}
    text = {"text_encoder": tiny_lm}
    per_model = {
        "UniSRec": {"n_exps": 3},
        "LLM2SASRec": text,
        "LLM2BERT4Rec": text,
        "LEARN": text,
        "LLMSRec": {"llmsrec_llm": tiny_lm, "llmsrec_text_fields": ["movie_title"], "llmsrec_history": 5,
                    "llmsrec_title_tokens": 6, "llmsrec_head_hidden": 16, "llmsrec_shared_size": 8,
                    "llmsrec_item_batch_size": 128, "cf_epochs": 1, "cf_hidden_size": 8, "train_batch_size": 16,
                    "eval_batch_size": 64, "user_inter_num_interval": "[0,40]"},
        "LiteLLM4Rec": {**text, "litellm4rec_llm": tiny_lm, "text_fields": ["movie_title", "class"],
                        "text_max_length": 16, "train_batch_size": 32, "user_inter_num_interval": "[0,40]"},
        "CALRec": {"calrec_llm": tiny_lm, "calrec_text_fields": ["movie_title", "class"], "calrec_history_items": 3,
                   "calrec_max_item_tokens": 12, "beam_size": 3, "calrec_max_new_tokens": 8, "calrec_bm25_top": 60,
                   "topk": [10, 150], "valid_metric": "NDCG@10", "eval_batch_size": 16, "generate_users": 64},
        "TransRecLLM": {"transrec_llm": tiny_lm, "transrec_title_field": "movie_title",
                        "transrec_attribute_fields": ["class"], "transrec_history_items": 3,
                        "transrec_max_facet_tokens": 10, "transrec_substring_length": 3, "beam_size": 2,
                        "eval_batch_size": 16, "generate_users": 64, "user_inter_num_interval": "[0,40]"},
    }
    if model == "UniSAR":
        import yaml

        settings = yaml.safe_load(open(search_data["config_file"], encoding="utf-8"))
        return {**settings, **search_data["config_dict"], "dataset": "MLSearch",
                "data_path": str(search_data["folder"].parent)}
    return {**base, **per_model[model]}


TRAINED = ["UniSRec", "LLM2SASRec", "LLM2BERT4Rec", "LEARN", "LLMSRec", "LiteLLM4Rec", "CALRec", "TransRecLLM", "UniSAR"]


@pytest.mark.parametrize("model", TRAINED)
def test_two_cpu_processes_keep_identical_weights(model, tiny_config, tiny_lm, tmp_path, search_data):
    config = {**_config(model, tiny_config, tiny_lm, tmp_path, search_data), "epochs": 1}
    result = _two_processes(model, config)
    ranks = result["rank_results"]
    assert len(ranks) == 2
    assert ranks[0]["model_fingerprint"] == ranks[1]["model_fingerprint"]
    assert ranks[0]["test_result"] == ranks[1]["test_result"] == result["test_result"]


@pytest.mark.parametrize("model", ["CALRec", "TransRecLLM", "UniSAR", "LLMSRec"])
def test_sharded_evaluation_equals_one_process_exactly(model, tiny_config, tiny_lm, tmp_path, search_data):
    """Zero epochs: both runs evaluate rank 0's initial weights (DDP broadcasts them)."""
    config = {**_config(model, tiny_config, tiny_lm, tmp_path, search_data), "epochs": 0}
    single = run(model=model, dataset=config["dataset"], config_dict=config, saved=False)
    assert any(value > 0 for value in single["test_result"].values()), "nothing ranked: the comparison would be empty"
    sharded = _two_processes(model, config)
    assert sharded["test_result"] == single["test_result"]
    assert sharded["rank_results"][1]["test_result"] == single["test_result"]
