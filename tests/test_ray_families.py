"""Ray Tune runs every model family: two trials each of a text, generative, LLM, search, LLM-embedding,
LLM-sequence and text-generation model."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO_ROOT
from test_cli import _run

pytest.importorskip("ray.tune")

FAMILY_SETTINGS = {
    "VQRec": {"code_dim": 8, "code_cap": 16},
    "TIGER": {"rqvae_hidden_sizes": [32], "rqvae_code_dim": 8, "rqvae_levels": 2, "rqvae_codebook_size": 8,
              "rqvae_epochs": 2, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1,
              "num_heads": 2, "MAX_ITEM_LIST_LENGTH": 5, "topk": [10, 20], "beam_size": 20,
              "user_inter_num_interval": "[0,60]"},
}


def _tune(tmp_path, model: str, settings: dict, dataset: str) -> str:
    config_file = tmp_path / "fixed.yaml"
    config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
    params = tmp_path / "space.hyper"
    params.write_text("learning_rate choice [0.001,0.005]\n", encoding="utf-8")
    output = tmp_path / "ray.result"
    proc = _run([str(REPO_ROOT / "run_hyper.py"), "--tool=ray", f"--model={model}", f"--dataset={dataset}",
                 f"--config_files={config_file}", f"--params_file={params}", f"--output_file={output}",
                 "--max_evals=2"], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    text = output.read_text(encoding="utf-8")
    assert text.count("'learning_rate'") == 2 and text.count("test_ndcg@10") == 2
    return text


@pytest.mark.parametrize("model", ["VQRec", "TIGER"])
def test_ray_tunes_text_and_generative_models(tmp_path, tiny_config, model):
    settings = {**{k: v for k, v in tiny_config.items() if k != "dataset"}, **FAMILY_SETTINGS[model]}
    _tune(tmp_path, model, settings, tiny_config["dataset"])


def test_ray_tunes_an_llm_model(tmp_path, tiny_config, tiny_lm):
    settings = {**{k: v for k, v in tiny_config.items() if k != "dataset"}, "said_llm": tiny_lm,
                "said_soft_tokens": 1, "said_projector_hidden": 16, "said_max_text_tokens": 6, "said_eval_items": 32}
    _tune(tmp_path, "SAID", settings, tiny_config["dataset"])


def test_ray_tunes_the_search_model(tmp_path, search_data):
    settings = {**yaml.safe_load(open(search_data["config_file"], encoding="utf-8")), **search_data["config_dict"]}
    settings.pop("dataset", None)
    _tune(tmp_path, "UniSAR", settings, "MLSearch")


@pytest.mark.parametrize("model", ["LLM2SASRec", "LiteLLM4Rec", "TransRecLLM"])
def test_ray_tunes_the_wave_two_families(tmp_path, tiny_config, tiny_lm, search_data, model):
    """LLM item embeddings in a sequential model, an LLM reading the sequence, text generation."""
    from test_distributed_models import _config

    settings = _config(model, tiny_config, tiny_lm, tmp_path, search_data)
    settings.pop("dataset")
    _tune(tmp_path, model, settings, tiny_config["dataset"])
