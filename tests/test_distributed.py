"""Data-parallel training and sharded evaluation over two CPU processes (gloo)."""
from __future__ import annotations

import socket

import pytest

from recbole_llm.quick_start import run

# tiny TIGER/LETTER: a 2-level tokenizer and a one-layer T5 (see tests/test_tiger_letter.py)
TINY_GENREC = {
    "rqvae_hidden_sizes": [32], "rqvae_code_dim": 8, "rqvae_levels": 2, "rqvae_codebook_size": 8,
    "rqvae_epochs": 2, "rqvae_batch_size": 256, "cf_epochs": 1, "cf_hidden_size": 16, "d_model": 16, "d_kv": 8,
    "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "MAX_ITEM_LIST_LENGTH": 5,
    "topk": [10, 20], "valid_metric": "NDCG@10", "beam_size": 20, "train_batch_size": 256,
    "user_inter_num_interval": "[0,60]",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(model: str, config: dict, **kwargs) -> dict:
    return run(model=model, dataset=config["dataset"], config_dict=config, saved=False, nproc=2,
               ip="127.0.0.1", port=str(_free_port()), **kwargs)


def _model_config(model: str, tiny_config: dict, tiny_lm: str) -> dict:
    config = {**tiny_config, "train_batch_size": 128}
    if model in ("TIGER", "LETTER"):
        config.update(TINY_GENREC)
    elif model == "VQRec":
        config.update(code_dim=8, code_cap=16)
    elif model == "LLMSeqSim":
        config.update(text_encoder="all-MiniLM-L6-v2")  # the packaged encoder: the LLM extra is optional
    elif model == "SAID":
        config.update(said_llm=tiny_lm, said_soft_tokens=1, said_projector_hidden=16, said_max_text_tokens=6,
                      said_batch_size=128, said_eval_items=32)
    return config


@pytest.mark.parametrize("model", ["SASRec", "VQRec", "TIGER", "LETTER", "SAID"])
def test_two_cpu_processes_keep_identical_weights(model, tiny_config, tiny_lm):
    config = {**_model_config(model, tiny_config, tiny_lm), "epochs": 2}
    result = _two_processes(model, config)
    ranks = result["rank_results"]
    assert len(ranks) == 2
    assert ranks[0]["model_fingerprint"] == ranks[1]["model_fingerprint"]
    assert ranks[0]["test_result"] == ranks[1]["test_result"] == result["test_result"]


@pytest.mark.parametrize("model", ["SASRec", "TIGER", "LLMSeqSim"])
def test_sharded_evaluation_equals_one_process_exactly(model, tiny_config, tiny_lm):
    """Zero epochs: both runs evaluate rank 0's initial weights (DDP broadcasts them)."""
    config = {**_model_config(model, tiny_config, tiny_lm), "epochs": 0, "eval_batch_size": 7}
    single = run(model=model, dataset=config["dataset"], config_dict=config, saved=False)
    sharded = _two_processes(model, config)
    assert sharded["test_result"] == single["test_result"]
    assert sharded["rank_results"][1]["test_result"] == single["test_result"]


def test_two_node_rendezvous_with_world_size_and_group_offset(tiny_config):
    """Two 'nodes' of one process each on this machine: --world_size 2, --group_offset 0 and 1."""
    import multiprocessing

    port = str(_free_port())
    config = {**tiny_config, "epochs": 1, "train_batch_size": 128}
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    nodes = [context.Process(target=_node, args=(offset, port, config, queue)) for offset in (0, 1)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(timeout=600)
    assert all(node.exitcode == 0 for node in nodes)
    results = dict(queue.get() for _ in nodes)
    assert results[0]["model_fingerprint"] == results[1]["model_fingerprint"]
    assert results[0]["test_result"] == results[1]["test_result"]


def _node(offset: int, port: str, config: dict, queue) -> None:
    result = run(model="SASRec", dataset=config["dataset"], config_dict=config, saved=False, nproc=1,
                 world_size=2, ip="127.0.0.1", port=port, group_offset=offset)
    queue.put((offset, {"model_fingerprint": result["model_fingerprint"], "test_result": dict(result["test_result"])}))
