"""VQRec's all-item code pooling (a sparse product) and its scores equal the plain formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_llm import Config
from recbole_llm.model.vqrec import _SparsePooling, mean_pooling_matrices
from recbole_llm.quick_start import build

TINY_CODES = {"code_dim": 4, "code_cap": 16, "opq_iter": 5}


def _reference_items(model) -> torch.Tensor:
    """The item table as the model defined it before the sparse pooling: embedding_bag means."""
    items = F.embedding_bag(model.item_codes, model.code_table(), mode="mean", padding_idx=0)
    if model.item_id_embedding is not None:
        items = items + model.item_id_embedding.weight
    return items


def _reference_user_and_items(model, batch):
    items = _reference_items(model)
    user = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], items)
    return user, F.normalize(items, dim=-1)


def test_sparse_pooling_equals_embedding_bag_forward_and_backward():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(1, 41, (50, 5), generator=generator)
    codes[0] = 0  # the padding item
    codes[3, :2] = 0  # a row with some padding codes: averaged over the other three
    codes[4, 1] = codes[4, 0]  # a code repeated in one row counts twice, as in embedding_bag
    table = torch.randn(41, 8, generator=generator, requires_grad=True)
    grad = torch.randn(50, 8, generator=generator)

    expected = F.embedding_bag(codes, table, mode="mean", padding_idx=0)
    (expected_grad,) = torch.autograd.grad(expected, table, grad)
    pooled = _SparsePooling.apply(table, *mean_pooling_matrices(codes, len(table), table.dtype))
    (pooled_grad,) = torch.autograd.grad(pooled, table, grad)

    assert torch.allclose(pooled, expected, atol=1e-6)
    assert torch.allclose(pooled_grad, expected_grad, atol=1e-6)
    assert torch.equal(pooled[0], torch.zeros(8))


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_loss_gradients_and_scores_equal_the_reference(tiny_config, stage):
    config = Config(model="VQRec", dataset=tiny_config["dataset"],
                    config_dict={**tiny_config, **TINY_CODES, "train_stage": stage})
    _, (train_data, _, _), model = build(config)
    model.eval()  # no dropout: both computations see the same network
    batch = next(iter(train_data))

    user, items = _reference_user_and_items(model, batch)
    logits = user @ items.t() / model.temperature
    logits[:, 0] = float("-inf")
    expected_loss = F.cross_entropy(logits, batch[model.POS_ITEM_ID])
    parameters = [p for p in model.parameters() if p.requires_grad]
    expected_grads = torch.autograd.grad(expected_loss, parameters, allow_unused=True)
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)

    assert torch.allclose(loss, expected_loss, rtol=1e-5)
    for name, got, want in zip([n for n, p in model.named_parameters() if p.requires_grad], grads, expected_grads):
        assert (got is None) == (want is None), name
        if want is not None:
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), name

    with torch.no_grad():
        user, items = _reference_user_and_items(model, batch)
        expected_scores = user @ items.t() / model.temperature
        scores = model.full_sort_predict(batch)
        sampled = model.predict(batch)
    assert torch.allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    positives = batch[model.ITEM_ID]
    assert torch.allclose(sampled, expected_scores[torch.arange(len(positives)), positives], rtol=1e-5, atol=1e-5)


def test_pooling_follows_new_item_codes(tiny_config):
    config = Config(model="VQRec", dataset=tiny_config["dataset"],
                    config_dict={**tiny_config, **TINY_CODES, "train_stage": "inductive_ft"})
    _, _, model = build(config)
    with torch.no_grad():
        before = model.item_embeddings()
        state = model.state_dict()
        state["item_codes"] = torch.roll(state["item_codes"], 1, dims=0)  # another item -> codes table
        model.load_state_dict(state)
        after = model.item_embeddings()
        expected = _reference_items(model)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, expected, atol=1e-6)


def test_pretrain_loss_equals_the_reference(tiny_config):
    config = Config(model="VQRec", dataset=tiny_config["dataset"],
                    config_dict={**tiny_config, **TINY_CODES, "train_stage": "pretrain", "fake_idx_ratio": 0.0})
    _, (train_data, _, _), model = build(config)
    model.eval()
    batch = next(iter(train_data))[:16]
    positives = batch[model.POS_ITEM_ID]
    items = _reference_items(model)
    user = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], items)
    targets = F.normalize(items[positives], dim=-1)
    logits = user @ targets.t() / model.temperature
    same = (positives.unsqueeze(0) == positives.unsqueeze(1)) & ~torch.eye(len(positives), dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    fake = (user * targets).sum(-1, keepdim=True) / model.temperature  # ratio 0: the fake item is the positive
    expected = F.cross_entropy(torch.cat([logits, fake], 1), torch.arange(len(positives)))
    expected_grad = torch.autograd.grad(expected, model.code_embedding.weight)[0]
    loss = model.calculate_loss(batch)
    grad = torch.autograd.grad(loss, model.code_embedding.weight)[0]
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
