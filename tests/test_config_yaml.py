"""Model yaml files load along the class hierarchy: a subclass's file holds only what differs."""

import yaml
from recbole.model.sequential_recommender import SASRec

from recbole_llm import Config
from recbole_llm.config import properties_dir


def _config(model, **overrides):
    return Config(model=model, dataset="ml-100k", config_dict={"state": "ERROR", **overrides})


def test_letter_inherits_tiger_yaml_and_overrides_only_its_own_keys():
    props = properties_dir() / "model"
    tiger = yaml.safe_load((props / "TIGER.yaml").read_text())
    letter = yaml.safe_load((props / "LETTER.yaml").read_text())
    config = _config("LETTER")
    assert set(letter) < set(tiger) | {"ranking_temperature"}
    for key in set(tiger) - set(letter):
        assert config[key] == tiger[key], key
    for key, value in letter.items():
        assert config[key] == value, key


def test_a_sasrec_subclass_gets_recbole_sasrec_yaml_then_the_plugin_protocol():
    class SubSASRec(SASRec):
        pass

    config = _config(SubSASRec)
    assert config["n_layers"] == 2 and config["hidden_size"] == 64  # RecBole's SASRec.yaml
    assert config["topk"] == [10, 50] and config["valid_metric"] == "NDCG@10"  # plugin overall.yaml


def test_user_values_still_win_over_every_yaml():
    assert _config("LETTER", d_model=32, ranking_temperature=1.0)["d_model"] == 32
    assert _config("LETTER", ranking_temperature=1.0)["ranking_temperature"] == 1.0
