"""LLMSRec with a tiny random Llama: training, frozen parts, the injected slots, the teacher cache."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_llm import ml100k_item_lines, save_tiny_llama  # noqa: E402

from recbole_llm import Config, create_dataset, run_recbole_llm  # noqa: E402
from recbole_llm.model import llmsrec  # noqa: E402
from recbole_llm.utils import cache_dir  # noqa: E402

PROMPTS = [llmsrec.USER_PREFIX, llmsrec.USER_SUFFIX, llmsrec.ITEM_PREFIX, llmsrec.ITEM_SUFFIX, ","]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), PROMPTS + ml100k_item_lines())


@pytest.fixture
def llmsrec_config(tiny_config, tiny_lm, tmp_path):
    return {**tiny_config, "model": "LLMSRec", "llmsrec_llm": tiny_lm, "llmsrec_text_fields": ["movie_title"],
            "llmsrec_history": 5, "llmsrec_title_tokens": 6, "llmsrec_head_hidden": 16, "llmsrec_shared_size": 8,
            "llmsrec_item_batch_size": 128, "cf_epochs": 1, "cf_hidden_size": 8, "learning_rate": 0.01,
            "train_batch_size": 16, "eval_batch_size": 64, "user_inter_num_interval": "[0,80]",
            "cache_dir": str(tmp_path / "cache")}


def _build(config_dict):
    from recbole.data import data_preparation

    config = Config(model="LLMSRec", config_dict=config_dict)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    return config, llmsrec.LLMSRec(config, train_data._dataset), train_data, valid_data


def _first_batch(train_data):
    return next(iter(train_data))


def _frozen_state(model):
    return {**{f"lm.{k}": v.clone() for k, v in model.lm.state_dict().items()},
            **{f"teacher.{k}": v.clone() for k, v in model.teacher.state_dict().items()}}


def test_loss_falls_and_frozen_parts_do_not_change(llmsrec_config):
    _, model, train_data, _ = _build(llmsrec_config)
    assert not any(name.startswith(("lm.", "teacher.")) for name in model.state_dict()), "frozen parts in the state dict"
    assert all(not p.requires_grad for p in model.lm.parameters()) and all(not p.requires_grad for p in model.teacher.parameters())
    frozen = _frozen_state(model)
    trainable = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = _first_batch(train_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(20):
        torch.manual_seed(0)  # the same sampled negatives each step
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    for name, tensor in _frozen_state(model).items():
        assert torch.equal(tensor, frozen[name]), f"frozen {name} changed"
    for name in ("user_out", "item_out", "item_proj.0.weight", "user_head.0.weight", "item_head.3.weight", "cf_head.0.weight"):
        assert not torch.equal(dict(model.named_parameters())[name], trainable[name]), f"{name} did not learn"


def test_history_slots_carry_the_projected_sasrec_embeddings(llmsrec_config):
    _, model, train_data, _ = _build(llmsrec_config)
    model.eval()
    batch = _first_batch(train_data)
    item_seq, item_seq_len = batch[model.ITEM_SEQ][:4], batch[model.ITEM_SEQ_LEN][:4]
    seen = {}

    def capture(_module, _args, kwargs):
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach()

    handle = model.lm.base_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model.lm_user(item_seq, item_seq_len)
        projected = model.item_proj(model.teacher.item_embedding.weight)
    handle.remove()
    inputs = seen["inputs_embeds"]
    token_table = model.lm.get_input_embeddings().weight
    for row in range(item_seq.size(0)):
        history = item_seq[row, :item_seq_len[row]].tolist()[-model.history:]
        ids, _ = model._user_prompt(history)
        slot_positions = [i for i, token in enumerate(ids) if token == llmsrec.SLOT]
        assert len(slot_positions) == len(history)
        for position, item in zip(slot_positions, history):
            assert torch.allclose(inputs[row, position], projected[item], atol=1e-6)
        out = ids.index(llmsrec.USER_OUT)
        assert torch.equal(inputs[row, out], model.user_out.detach())
        word = next(i for i, token in enumerate(ids) if token >= 0)
        assert torch.equal(inputs[row, word], token_table[ids[word]])


def test_teacher_is_trained_once_and_reused(llmsrec_config):
    config, first, _, _ = _build(llmsrec_config)
    _, second, _, _ = _build(llmsrec_config)
    files = sorted(cache_dir(config, "teachers").glob("sasrec_teacher_*.pt"))
    assert len(files) == 1
    for name, tensor in first.teacher.state_dict().items():
        assert torch.equal(tensor, second.teacher.state_dict()[name])


def test_scores_full_ranking_and_sampled_agree_and_item_vectors_are_cached(llmsrec_config, monkeypatch):
    _, model, _, valid_data = _build(llmsrec_config)
    model.eval()
    calls = []
    encode = model.lm_items
    monkeypatch.setattr(model, "lm_items", lambda items: calls.append(len(items)) or encode(items))
    interaction = next(iter(valid_data))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (len(interaction), model.n_items)
        picked = model.predict(interaction)
    assert torch.allclose(picked, scores[torch.arange(len(interaction)), interaction[model.ITEM_ID]], atol=1e-5)
    users = []
    run_users = model.lm_user
    monkeypatch.setattr(model, "lm_user", lambda seq, length: users.append(len(seq)) or run_users(seq, length))
    with torch.no_grad():
        repeated = model.predict(interaction.repeat_interleave(3))
    assert users == [len(interaction)], "each distinct history runs through the LM once"
    assert torch.allclose(repeated, picked.repeat_interleave(3), atol=1e-5)
    assert sum(calls) == model.n_items - 1, "every item once, then the cache"
    model.train()
    model.eval()
    with torch.no_grad():
        model.full_sort_predict(interaction)
    assert sum(calls) == 2 * (model.n_items - 1), "training must invalidate the cached item vectors"


def test_history_longer_than_the_teacher_is_refused(llmsrec_config):
    config, model, _, _ = _build(llmsrec_config)
    model.teacher.max_seq_length = config["MAX_ITEM_LIST_LENGTH"] - 1
    with pytest.raises(ValueError, match="MAX_ITEM_LIST_LENGTH"):
        model._check_teacher(model.teacher)


def test_runs_end_to_end_under_full_ranking(llmsrec_config):
    result = run_recbole_llm(model="LLMSRec", config_dict={**llmsrec_config, "epochs": 1}, saved=False)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    assert "sasrec_teacher" in result["preparation"], result["preparation"]


def test_teacher_from_a_sasrec_checkpoint(llmsrec_config):
    sasrec = run_recbole_llm(model="SASRec", config_dict={**llmsrec_config, "model": "SASRec", "hidden_size": 8,
                                                          "inner_size": 16, "train_batch_size": 256}, saved=True)
    checkpoint = torch.load(sasrec["saved_model_file"], map_location="cpu", weights_only=False)
    config, model, _, _ = _build({**llmsrec_config, "cf_checkpoint": sasrec["saved_model_file"]})
    assert not list(cache_dir(config, "teachers").glob("sasrec_teacher_*.pt")), "a checkpoint must not train a teacher"
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(model.teacher.state_dict()[name], tensor), name


def test_a_missing_checkpoint_is_named(llmsrec_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="cf_checkpoint"):
        _build({**llmsrec_config, "cf_checkpoint": str(tmp_path / "none.pth")})


def test_unknown_title_field_names_the_key(llmsrec_config):
    with pytest.raises(ValueError, match="llmsrec_text_fields"):
        _build({**llmsrec_config, "llmsrec_text_fields": ["no_such_field"]})


def test_zero_title_tokens_leaves_only_the_slots(llmsrec_config):
    _, model, _, _ = _build({**llmsrec_config, "llmsrec_title_tokens": 0})
    ids, slots = model._user_prompt([1, 2, 3])
    body = ids[len(model.pieces["user_prefix"]):len(ids) - len(model.pieces["user_suffix"]) - 1]
    assert body == [llmsrec.SLOT] + model.pieces["separator"] + [llmsrec.SLOT] + model.pieces["separator"] + [llmsrec.SLOT]
    assert [item for item in slots if item] == [1, 2, 3]
