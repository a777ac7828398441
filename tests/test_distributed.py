"""Data-parallel training over two CPU processes (gloo) through the plugin's runner."""
from __future__ import annotations

import socket

import pytest

from recbole_llm.quick_start import run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model", ["SASRec", "VQRec"])
def test_two_cpu_processes_keep_identical_weights(model, tiny_config):
    config = {**tiny_config, "epochs": 2, "train_batch_size": 128, "code_dim": 8, "code_cap": 16}
    result = run(
        model=model, dataset=tiny_config["dataset"], config_dict=config, saved=False,
        nproc=2, ip="127.0.0.1", port=str(_free_port()),
    )
    ranks = result["rank_results"]
    assert len(ranks) == 2
    assert ranks[0]["model_fingerprint"] == ranks[1]["model_fingerprint"]
    assert ranks[0]["test_result"] == ranks[1]["test_result"] == result["test_result"]


def test_single_process_models_refuse_clearly(monkeypatch):
    from recbole_llm import quick_start

    class Stub:
        single_process_reason = "its tokenizer trains in one process"

    monkeypatch.setattr(quick_start, "get_model", lambda name: Stub)
    with pytest.raises(ValueError, match="cannot train in several processes: its tokenizer"):
        run(model="Stub", dataset="ml-100k", nproc=2)
