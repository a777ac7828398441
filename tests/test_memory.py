"""Evaluation batches adapt to the catalogue so full ranking fits in eval_memory_mb."""
from recbole_llm import Config
from recbole_llm.memory import fit_eval_batch_size, fitted_eval_batch_size


def test_batch_shrinks_with_the_catalogue_and_never_grows():
    assert fitted_eval_batch_size(2048, 2_000, 2048) == 2048
    large = fitted_eval_batch_size(2048, 100_000, 2048)
    assert large < 2048 and large * 100_000 * 12 <= 2048 * 2**20 < (large + 1) * 100_000 * 12
    assert fitted_eval_batch_size(2048, 10**9, 1) == 1
    assert fitted_eval_batch_size(64, 100_000, 0) == 64


def test_config_value_is_lowered_in_place():
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"state": "ERROR", "eval_memory_mb": 10})
    fit_eval_batch_size(config, 100_000)
    assert config["eval_batch_size"] == 10 * 2**20 // (100_000 * 12)
