"""Packaging, registry, Config and quick start."""
from __future__ import annotations

import math

import pytest

import recbole_llm
from recbole_llm import Config, available_models, get_model, run_recbole_llm
from recbole_llm.config import properties_dir
from recbole_llm.errors import UserError


def _finite(result: dict) -> bool:
    return all(math.isfinite(v) for v in result.values())


@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec"])
def test_builtin_models_train_through_plugin_entry_point(model, tiny_config):
    result = run_recbole_llm(model=model, dataset=tiny_config["dataset"], config_dict=tiny_config, saved=False)
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10", "mrr@10", "recall@50", "ndcg@50"}
    assert _finite(result["test_result"]) and _finite(result["best_valid_result"])
    assert result["model"] == model


def test_unknown_model_lists_available_models():
    with pytest.raises(UserError) as err:
        get_model("NoSuchModel")
    message = str(err.value)
    assert "NoSuchModel" in message and "SASRec" in message and "BERT4Rec" in message


def test_model_names_resolve_case_insensitively():
    assert get_model("sasrec").__name__ == "SASRec"
    names = available_models()
    assert {"SASRec", "BERT4Rec", "GRU4Rec", "LightGCN"} <= set(names["recbole"])
    assert {"VQRec", "TIGER", "LETTER", "SAID", "UniSAR"} <= set(names["recbole_llm"])


def test_plugin_defaults_apply_to_builtin_models():
    config = Config(model="SASRec", dataset="ml-100k")
    assert config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["valid_metric"] == "NDCG@10"
    assert config["topk"] == [10, 50]
    assert config["text_fields"] == ["movie_title", "release_year", "class"]


def test_properties_found(tmp_path):
    assert (properties_dir() / "overall.yaml").is_file()


def test_missing_dataset_folder_is_a_clear_error(tmp_path, tiny_config):
    config = {**tiny_config, "data_path": str(tmp_path / "nowhere")}
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        run_recbole_llm(model="SASRec", dataset="not-converted", config_dict=config, saved=False)
    assert isinstance(err.value, UserError)


def test_malformed_yaml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlearning_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.yaml.*not valid YAML"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(bad)])


def test_non_mapping_yaml_is_a_clear_error(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- epochs\n- 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="list.yaml.*mapping"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(bad)])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        Config(model="SASRec", dataset="ml-100k", config_file_list=[str(tmp_path / "absent.yaml")])


def test_version():
    assert recbole_llm.__version__
