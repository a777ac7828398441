"""The same seed gives the same weights and metrics; the result records its timing."""
from __future__ import annotations

from recbole_llm import run_recbole_llm


def test_same_seed_same_metrics(tiny_config):
    config = {**tiny_config, "epochs": 2}
    first = run_recbole_llm(model="SASRec", dataset=config["dataset"], config_dict=config, saved=False)
    second = run_recbole_llm(model="SASRec", dataset=config["dataset"], config_dict=config, saved=False)
    assert first["test_result"] == second["test_result"]
    assert first["model_fingerprint"] == second["model_fingerprint"]
    other = run_recbole_llm(model="SASRec", dataset=config["dataset"], config_dict={**config, "seed": 7}, saved=False)
    assert other["model_fingerprint"] != first["model_fingerprint"]
    assert first["timing"]["epochs"] == 2 and first["timing"]["train_seconds_per_epoch"] > 0
