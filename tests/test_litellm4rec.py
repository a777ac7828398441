"""LiteLLM4Rec with a tiny random Llama as both item LLM and recommendation LLM."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_llm import ml100k_item_lines, save_tiny_llama  # noqa: E402

from recbole_llm import Config, create_dataset, run_recbole_llm  # noqa: E402
from recbole_llm.model.litellm4rec import LiteLLM4Rec  # noqa: E402
from recbole_llm.utils import cache_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), ml100k_item_lines())


@pytest.fixture
def lite_config(tiny_config, tiny_lm, tmp_path):
    return {**tiny_config, "model": "LiteLLM4Rec", "text_encoder": tiny_lm, "litellm4rec_llm": tiny_lm,
            "text_fields": ["movie_title", "class"], "text_max_length": 16, "learning_rate": 0.01,
            "train_batch_size": 32, "user_inter_num_interval": "[0,80]", "cache_dir": str(tmp_path / "cache")}


def _build(config_dict):
    from recbole.data import data_preparation

    config = Config(model="LiteLLM4Rec", config_dict=config_dict)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    return config, LiteLLM4Rec(config, train_data._dataset), train_data, valid_data


def _train_steps(model, batch, steps):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _base_weights(model):
    return {name: p.detach().clone() for name, p in model.rec_llm.named_parameters() if "lora_" not in name}


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_loss_falls_and_only_the_chosen_weights_learn(lite_config, mode):
    _, model, train_data, _ = _build({**lite_config, "litellm4rec_finetune": mode, "litellm4rec_dropout": 0.0})
    batch = next(iter(train_data))
    before = _base_weights(model)
    losses = _train_steps(model, batch, 15)
    assert losses[-1] < 0.8 * losses[0], losses
    after = _base_weights(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora_params = [name for name, _ in model.rec_llm.named_parameters() if "lora_" in name]
    if mode == "full":
        assert changed and all("embed_tokens" not in name for name in changed)
        assert not lora_params
    else:
        assert not changed, f"{mode}: base weights changed: {sorted(changed)[:3]}"
        assert bool(lora_params) == (mode == "lora")
    assert not torch.equal(model.item_head.weight, torch.zeros_like(model.item_head.weight))


def test_scores_are_a_full_item_matrix_and_predict_agrees(lite_config):
    _, model, _, valid_data = _build(lite_config)
    model.eval()
    interaction = next(iter(valid_data))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        picked = model.predict(interaction)
    assert scores.shape == (len(interaction), model.n_items)
    assert torch.allclose(picked, scores[torch.arange(len(interaction)), interaction[model.ITEM_ID]], atol=1e-5)
    with torch.no_grad():
        repeated = model.predict(interaction.repeat_interleave(3))
    assert torch.allclose(repeated, picked.repeat_interleave(3), atol=1e-5)


def test_item_vectors_are_the_cached_item_llm_encoding(lite_config, tiny_lm):
    config, first, _, _ = _build(lite_config)
    _, second, _, _ = _build(lite_config)
    assert first.item_vectors.shape[1] == 32  # the tiny LM's width: the causal LM encoded the texts
    assert torch.equal(first.item_vectors, second.item_vectors)
    assert torch.all(first.item_vectors[0] == 0) and first.item_vectors[1:].abs().sum() > 0
    assert len(list(cache_dir(config, "text").glob("text_emb_*.npy"))) == 1


def test_a_history_change_changes_the_scores(lite_config):
    _, model, train_data, _ = _build(lite_config)
    model.eval()
    batch = next(iter(train_data))
    item_seq, item_seq_len = batch[model.ITEM_SEQ][:2].clone(), batch[model.ITEM_SEQ_LEN][:2]
    with torch.no_grad():
        base = model.forward(item_seq, item_seq_len)
        item_seq[:, 0] = (item_seq[:, 0] % (model.n_items - 1)) + 1
        moved = model.forward(item_seq, item_seq_len)
    assert not torch.allclose(base, moved)


def test_unknown_finetune_mode_is_refused(lite_config):
    with pytest.raises(ValueError, match="litellm4rec_finetune"):
        _build({**lite_config, "litellm4rec_finetune": "adapters"})


def test_runs_end_to_end_under_full_ranking(lite_config):
    result = run_recbole_llm(model="LiteLLM4Rec", config_dict={**lite_config, "epochs": 1}, saved=False)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    assert "text_emb" in result["preparation"], result["preparation"]
