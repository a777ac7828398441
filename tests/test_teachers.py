"""The SASRec teacher stage (LETTER's CF table, LLM-SRec's CF-SRec): every input invalidates it."""
import pytest

from recbole_llm import Config, teachers
from recbole_llm.utils import cache_dir

TEACHER = {"model": "LETTER", "cf_epochs": 1, "cf_hidden_size": 8, "MAX_ITEM_LIST_LENGTH": 5,
           "user_inter_num_interval": "[0,60]", "rqvae_epochs": 1}


def _teacher_files(config):
    return sorted(cache_dir(config, "teachers").glob("sasrec_teacher_*.pt"))


@pytest.fixture
def letter_config(tiny_config, tmp_path):
    return {**tiny_config, **TEACHER, "cache_dir": str(tmp_path / "cache")}


def test_teacher_is_trained_once_then_read(letter_config):
    config = Config(model="LETTER", config_dict=letter_config)
    from recbole.data.dataset import SequentialDataset

    dataset = SequentialDataset(config)
    first = teachers.collaborative_embeddings(config, dataset)
    second = teachers.collaborative_embeddings(config, dataset)
    assert (first == second).all() and first.shape == (dataset.item_num - 1, 8)
    assert len(_teacher_files(config)) == 1


@pytest.mark.parametrize("override", [{"learning_rate": 0.01}, {"n_layers": 2}, {"MAX_ITEM_LIST_LENGTH": 4},
                                      {"cf_epochs": 2}, {"cf_hidden_size": 16}, {"seed": 7}])
def test_changing_any_teacher_input_trains_a_new_teacher(letter_config, override):
    from recbole.data.dataset import SequentialDataset

    base = Config(model="LETTER", config_dict=letter_config)
    teachers.collaborative_embeddings(base, SequentialDataset(base))
    changed = Config(model="LETTER", config_dict={**letter_config, **override})
    teachers.collaborative_embeddings(changed, SequentialDataset(changed))
    assert len(_teacher_files(base)) == 2
