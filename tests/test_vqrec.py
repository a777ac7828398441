"""VQRec: codes, permutation, the three stages, pre-train -> fine-tune, checkpoint round trip."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from recbole_llm import Config, load_data_and_model, run_recbole_llm
from recbole_llm.data.multi_domain import merge_domains
from recbole_llm.model.vqrec import CodePermutation, VQRec
from recbole_llm.quantize.pq import cached_item_codes, fit_item_codes
from recbole_llm.quick_start import build

TINY_CODES = {"code_dim": 4, "code_cap": 16, "opq_iter": 5}


def _vectors(n: int = 400, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, dim).astype(np.float32)


def test_codes_are_deterministic_and_fitted_on_given_rows_only(tmp_path):
    vectors = _vectors()
    fit_rows = np.arange(300)
    codes = fit_item_codes(vectors, fit_rows, code_dim=4, code_cap=16, opq_iter=5)
    assert codes.shape == (400, 4) and codes.min() >= 0 and codes.max() < 16
    assert np.array_equal(codes, fit_item_codes(vectors, fit_rows, code_dim=4, code_cap=16, opq_iter=5))
    other_rest = vectors.copy()
    other_rest[300:] = _vectors(seed=1)[300:]  # rows outside the fitting set must not move the quantizer
    again = fit_item_codes(other_rest, fit_rows, code_dim=4, code_cap=16, opq_iter=5)
    assert np.array_equal(codes[:300], again[:300])
    cached = cached_item_codes(vectors, fit_rows, tmp_path, code_dim=4, code_cap=16, opq_iter=5)
    assert np.array_equal(cached, codes) and len(list(tmp_path.glob("pq_codes_*.npy"))) == 1
    assert np.array_equal(cached_item_codes(vectors, fit_rows, tmp_path, code_dim=4, code_cap=16, opq_iter=5), codes)


def test_bad_code_settings_are_named():
    with pytest.raises(ValueError, match="code_cap"):
        fit_item_codes(_vectors(), np.arange(300), code_dim=4, code_cap=24)
    with pytest.raises(ValueError, match="code_dim"):
        fit_item_codes(_vectors(), np.arange(300), code_dim=5, code_cap=16)
    with pytest.raises(ValueError, match="code_cap=256"):
        fit_item_codes(_vectors(), np.arange(100), code_dim=4, code_cap=256)


def _is_bijection(assignment: torch.Tensor) -> bool:
    n = assignment.shape[-1]
    return all(sorted(row.tolist()) == list(range(n)) for row in assignment.reshape(-1, n))


def test_permutation_is_a_bijection_and_learns_a_target_order():
    torch.manual_seed(0)
    books, cap, dim = 3, 12, 8
    embeddings = torch.randn(books, cap, dim)
    target_order = torch.stack([torch.randperm(cap) for _ in range(books)])
    target = torch.gather(embeddings, 1, target_order.unsqueeze(-1).expand(-1, -1, dim))
    permutation = CodePermutation(books, cap, tau=0.5, n_iter=10)
    assert torch.equal(permutation.assignment(), torch.arange(cap).repeat(books, 1))
    optimizer = torch.optim.Adam(permutation.parameters(), lr=0.1)

    def loss() -> torch.Tensor:  # depends on the hard permutation only: it falls only if that moves
        return (torch.bmm(permutation(), embeddings) - target).pow(2).mean()

    start = loss().item()
    for _ in range(60):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.1 * start
    assert _is_bijection(permutation.assignment())
    assert torch.equal(permutation.assignment(), target_order)


@pytest.fixture
def vq_config(tiny_config):
    return {**tiny_config, **TINY_CODES}


@pytest.mark.parametrize("stage", ["pretrain", "inductive_ft", "transductive_ft"])
def test_each_stage_trains_and_evaluates(vq_config, stage):
    result = run_recbole_llm(model="VQRec", dataset=vq_config["dataset"],
                             config_dict={**vq_config, "train_stage": stage}, saved=False)
    assert all(math.isfinite(v) for v in result["test_result"].values())
    assert 0 <= result["test_result"]["recall@50"] <= 1


def _first_batch(train_data):
    return next(iter(train_data))


def test_pretrain_then_finetune_learns_permutation_and_round_trips(vq_config):
    pretrained = run_recbole_llm(model="VQRec", dataset=vq_config["dataset"],
                                 config_dict={**vq_config, "train_stage": "pretrain"}, saved=True)
    checkpoint = pretrained["saved_model_file"]
    finetune = {**vq_config, "train_stage": "inductive_ft", "pretrained_file": checkpoint,
                "permutation_epochs": 1, "epochs": 2, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}

    # the permutation alone lowers the loss of a fixed batch, and only by moving
    config = Config(model="VQRec", dataset=vq_config["dataset"], config_dict=finetune)
    _, (train_data, _, _), model = build(config)
    reference = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(model.code_embedding.weight, reference["code_embedding.weight"])
    model.learn_permutation()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["permutation.scores"]
    batch = _first_batch(train_data)
    with torch.no_grad():
        start = model.calculate_loss(batch).item()
    optimizer = torch.optim.Adam(model.permutation_parameters(), lr=0.5)
    for _ in range(10):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    with torch.no_grad():
        end = model.calculate_loss(batch).item()
    assignment = model.permutation.assignment()
    assert end < start
    assert _is_bijection(assignment)
    assert not torch.equal(assignment, torch.arange(model.codebook_size).repeat(model.n_codebooks, 1))
    with torch.no_grad():
        permuted = model.code_table().clone()
    model.fix_permutation()
    assert not bool(model.permutation_active)
    assert torch.equal(model.code_embedding.weight, permuted)

    # the full schedule through the trainer, then a checkpoint round trip
    result = run_recbole_llm(model="VQRec", dataset=vq_config["dataset"], config_dict=finetune, saved=True)
    _, loaded, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    assert isinstance(loaded, VQRec)
    state = torch.load(result["saved_model_file"], map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state.items())
    loaded.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        scores = loaded.full_sort_predict(batch)
        sampled = loaded.predict(batch)
    assert scores.shape == (len(batch), loaded.n_items)
    assert torch.allclose(sampled, scores.gather(1, batch[loaded.ITEM_ID].unsqueeze(1)).squeeze(1), atol=1e-5)


def test_missing_pretrained_file_is_named(vq_config):
    config = Config(model="VQRec", dataset=vq_config["dataset"],
                    config_dict={**vq_config, "pretrained_file": "/nonexistent/vqrec.pth"})
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        build(config)


def test_unknown_stage_is_named(vq_config):
    config = Config(model="VQRec", dataset=vq_config["dataset"], config_dict={**vq_config, "train_stage": "finetune"})
    with pytest.raises(ValueError, match="train_stage"):
        build(config)


def test_contrastive_loss_masks_duplicate_targets_with_minus_inf(vq_config):
    config = Config(model="VQRec", dataset=vq_config["dataset"],
                    config_dict={**vq_config, "train_stage": "pretrain", "fake_idx_ratio": 0.0})
    _, (train_data, _, _), model = build(config)
    model.eval()
    batch = _first_batch(train_data)[:8]
    batch[model.POS_ITEM_ID][1] = batch[model.POS_ITEM_ID][0]  # rows 0 and 1 share a target
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        items = model.item_embeddings()
        user = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], items)
        targets = F.normalize(items[batch[model.POS_ITEM_ID]], dim=-1)
        logits = user @ targets.t() / model.temperature
        logits[0, 1] = logits[1, 0] = float("-inf")
        fake = (user * targets).sum(-1, keepdim=True) / model.temperature  # ratio 0: fake == positive
        expected = F.cross_entropy(torch.cat([logits, fake], 1), torch.arange(8))
    assert torch.isfinite(loss) and torch.allclose(loss, expected, atol=1e-5)


def _copy_dataset(source_root: Path, name: str, target_root: Path, new_name: str) -> None:
    folder = target_root / new_name
    folder.mkdir(parents=True)
    for suffix in (".inter", ".item"):
        shutil.copy(source_root / name / f"{name}{suffix}", folder / f"{new_name}{suffix}")
    settings = {"load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                             "item": ["item_id", "movie_title", "release_year", "class"]},
                "text_fields": ["movie_title", "release_year", "class"]}
    (folder / f"{new_name}.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")


def test_multi_domain_merge_keeps_each_users_order_and_text(vq_config, tmp_path):
    source_root = Path(vq_config["data_path"])
    for domain in ("DomainA", "DomainB"):
        _copy_dataset(source_root, vq_config["dataset"], tmp_path, domain)
    merged = merge_domains(["DomainA", "DomainB"], tmp_path, tmp_path / "Mixed")
    inter = [line.split("\t") for line in (merged / "Mixed.inter").read_text(encoding="utf-8").splitlines()]
    source = [line.split("\t") for line in (source_root / vq_config["dataset"] / f"{vq_config['dataset']}.inter")
              .read_text(encoding="utf-8").splitlines()[1:]]
    assert inter[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(inter) - 1 == 2 * len(source)
    assert {row[0].split("/")[0] for row in inter[1:]} == {"DomainA", "DomainB"}
    user = source[0][0]
    expected = [row[1] for row in sorted((r for r in source if r[0] == user), key=lambda r: float(r[3]))]
    merged_items = [row[1] for row in inter[1:] if row[0] == f"DomainB/{user}"]
    assert merged_items == [f"DomainB/{item}" for item in expected]
    items = (merged / "Mixed.item").read_text(encoding="utf-8").splitlines()
    assert items[0] == "item_id:token\ttext:token_seq"
    assert all(len(row.split("\t")) == 2 and row.split("\t")[1] for row in items[1:])
    settings = yaml.safe_load((merged / "Mixed.yaml").read_text(encoding="utf-8"))
    assert settings["text_fields"] == ["text"]
