"""UniSRec stages, MoE gate, augmentations, released files (feat1CLS, faiss index) and checkpoint mapping."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm import Config, run_recbole_llm
from recbole_llm.data.transfer_dataset import drop_words, read_feat_file
from recbole_llm.model import unisrec as unisrec_module
from recbole_llm.model import vqrec as vqrec_module
from recbole_llm.model._transfer import read_state_dict
from recbole_llm.model.unisrec import MoEAdaptor
from recbole_llm.quantize.pq import released_item_codes
from recbole_llm.quick_start import build

TINY_UNISREC = {"n_exps": 3, "adaptor_dropout_prob": 0.1}


@pytest.fixture
def uni_config(tiny_config):
    return {**tiny_config, **TINY_UNISREC}


@pytest.mark.parametrize("stage", ["pretrain", "inductive_ft", "transductive_ft"])
def test_each_stage_trains_and_evaluates(uni_config, stage):
    extra = {"lambda": 0.1, "item_drop_coefficient": 0.5} if stage == "pretrain" else {}
    result = run_recbole_llm(model="UniSRec", dataset=uni_config["dataset"],
                             config_dict={**uni_config, "train_stage": stage, **extra}, saved=False)
    assert all(math.isfinite(v) for v in result["test_result"].values())
    assert 0 <= result["test_result"]["recall@50"] <= 1


def test_moe_gate_weights_sum_to_one_and_noise_only_in_training():
    torch.manual_seed(0)
    adaptor = MoEAdaptor(n_experts=8, input_size=12, output_size=6, dropout=0.2)
    torch.nn.init.normal_(adaptor.gate)
    torch.nn.init.normal_(adaptor.gate_noise)
    x = torch.randn(5, 7, 12)
    adaptor.train()
    noisy = adaptor.gate_weights(x)
    assert noisy.shape == (5, 7, 8) and (noisy >= 0).all()
    assert torch.allclose(noisy.sum(-1), torch.ones(5, 7), atol=1e-6)
    assert not torch.allclose(noisy, adaptor.gate_weights(x))  # fresh noise each call
    adaptor.eval()
    clean = adaptor.gate_weights(x)
    assert torch.allclose(clean.sum(-1), torch.ones(5, 7), atol=1e-6)
    assert torch.equal(clean, adaptor.gate_weights(x)) and torch.allclose(clean, (x @ adaptor.gate).softmax(-1))
    # the mixture equals the gate-weighted sum of the experts W_e (x - b_e) (no dropout in eval)
    expected = sum(clean[..., e:e + 1] * ((x - adaptor.centres[e]) @ adaptor.weights[e].t()) for e in range(8))
    assert torch.allclose(adaptor(x), expected, atol=1e-5)


def _model(uni_config, **overrides):
    config = Config(model="UniSRec", dataset=uni_config["dataset"], config_dict={**uni_config, **overrides})
    return build(config)


def test_augmentations_keep_order_and_mask_same_targets(uni_config):
    _, (train_data, _, _), model = _model(uni_config, train_stage="pretrain", **{"lambda": 0.1},
                                          item_drop_coefficient=0.0, item_drop_ratio=0.5)
    batch = next(iter(train_data))
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    torch.manual_seed(1)
    dropped, dropped_len = model.item_drop(seq, length)
    assert (dropped_len >= 1).all() and (dropped_len <= length).all() and (dropped_len < length).any()
    assert torch.equal(dropped[:, 0], seq[:, 0])
    for row in range(len(seq)):
        original = seq[row, : length[row]].tolist()
        kept = dropped[row, : dropped_len[row]].tolist()
        assert dropped[row, dropped_len[row]:].eq(0).all()
        iterator = iter(original)
        assert all(item in iterator for item in kept)  # a subsequence, in order
    mixed = model.word_drop(seq)
    plain, dropped_text = model.item_text_emb[seq], model.word_drop_emb[seq]
    per_item = [torch.equal(mixed[r, p], plain[r, p]) or torch.equal(mixed[r, p], dropped_text[r, p])
                for r in range(4) for p in range(int(length[r]))]
    assert all(per_item)
    assert not torch.equal(model.word_drop_emb[1:], model.item_text_emb[1:])
    assert drop_words(["a b c d e f"], 0.0, 0) == ["a b c d e f"] and drop_words(["a b c"], 1.0, 0) == [""]

    # rows with the same target are masked out of each other's negatives
    model.eval()
    positives = batch[model.POS_ITEM_ID][:6].clone()
    positives[1] = positives[0]
    with torch.no_grad():
        user = model.forward(seq[:6], length[:6], model.adaptor(model.item_text_emb[seq[:6]]))
        targets = torch.nn.functional.normalize(model.adaptor(model.item_text_emb[positives]), dim=-1)
        same = positives.unsqueeze(0) == positives.unsqueeze(1)
        same.fill_diagonal_(False)
        loss = model._info_nce(user, targets, same)
        logits = user @ targets.t() / model.temperature
        logits[0, 1] = logits[1, 0] = float("-inf")
        expected = torch.nn.functional.cross_entropy(logits, torch.arange(6))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_pretrain_then_finetune_freezes_encoder_and_maps_official_names(uni_config, tmp_path):
    pretrained = run_recbole_llm(model="UniSRec", dataset=uni_config["dataset"],
                                 config_dict={**uni_config, "train_stage": "pretrain", "lambda": 0.1}, saved=True)
    checkpoint = pretrained["saved_model_file"]
    reference = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]

    # our names -> the release's names -> ours: every transferable tensor comes back unchanged
    official = unisrec_module.to_official_state(reference)
    assert "moe_adaptor.experts.2.lin.weight" in official and "moe_adaptor.w_gate" in official
    assert not any(key.startswith("adaptor.") for key in official)
    back = unisrec_module.from_official_state({**official, "plm_embedding.weight": torch.zeros(3, 2),
                                               "item_embedding.weight": torch.zeros(3, 2)})
    transferable = {k: v for k, v in reference.items() if k.startswith(unisrec_module.TRANSFERRED_PREFIXES)}
    assert back.keys() == transferable.keys()
    assert all(torch.equal(back[key], value) for key, value in transferable.items())

    # a file in the release's names (tensors only: read with weights_only=True) fine-tunes
    official_file = tmp_path / "UniSRec-official.pth"
    torch.save({"state_dict": official}, official_file)
    finetune = {**uni_config, "train_stage": "inductive_ft", "pretrained_file": str(official_file), "epochs": 2}
    _, (train_data, _, _), model = _model(uni_config, **{k: v for k, v in finetune.items() if k not in uni_config})
    assert all(torch.equal(model.state_dict()[key], value) for key, value in transferable.items())
    result = run_recbole_llm(model="UniSRec", dataset=uni_config["dataset"], config_dict=finetune, saved=True)
    tuned = torch.load(result["saved_model_file"], map_location="cpu", weights_only=False)["state_dict"]
    encoder = [key for key in transferable if key.startswith(unisrec_module.ENCODER_PREFIXES)]
    assert encoder and all(torch.equal(tuned[key], reference[key]) for key in encoder)
    assert not torch.equal(tuned["adaptor.weights"], reference["adaptor.weights"])


def test_mismatched_checkpoint_is_refused_clearly(uni_config, tmp_path):
    _, _, model = _model(uni_config, train_stage="inductive_ft")
    official = unisrec_module.to_official_state(model.state_dict())
    wrong = dict(official)
    wrong["moe_adaptor.w_gate"] = torch.zeros(5, 3)
    path = tmp_path / "wrong.pth"
    torch.save({"state_dict": wrong}, path)
    with pytest.raises(ValueError, match="adaptor.gate has shape"):
        _model(uni_config, train_stage="inductive_ft", pretrained_file=str(path))
    incomplete = {k: v for k, v in official.items() if not k.startswith("moe_adaptor.experts.1.")}
    torch.save({"state_dict": incomplete}, path)
    with pytest.raises(ValueError, match="experts"):
        _model(uni_config, train_stage="inductive_ft", pretrained_file=str(path))
    torch.save({"state_dict": {"something.else": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="adaptor.weights"):
        _model(uni_config, train_stage="inductive_ft", pretrained_file=str(path))


def _item_tokens(uni_config):
    dataset, _, _ = _model(uni_config, train_stage="inductive_ft")
    return list(dataset.field2id_token[dataset.iid_field])


def test_released_feat1cls_loads_in_item2index_order_and_wrong_size_is_named(uni_config, tmp_path):
    tokens = _item_tokens(uni_config)  # ml-100k item tokens are integers, as the releases' indices
    width = 10
    features = np.random.RandomState(0).randn(max(int(t) for t in tokens[1:]) + 1, width).astype(np.float32)
    feat_file = tmp_path / "Tiny.feat1CLS"
    features.tofile(feat_file)  # the release's layout: raw float32, row-major, no header
    assert np.array_equal(read_feat_file(str(feat_file), width), features)
    released = {"text_embedding_file": str(feat_file), "text_embedding_size": width}
    dataset, _, model = _model(uni_config, train_stage="inductive_ft", **released)
    tokens = dataset.field2id_token[dataset.iid_field]
    assert model.item_text_emb.shape == (len(tokens), width) and model.item_text_emb[0].eq(0).all()
    assert all(np.array_equal(model.item_text_emb[i].numpy(), features[int(tokens[i])]) for i in range(1, len(tokens)))

    # an item2index file maps tokens to other rows
    index_file = tmp_path / "Tiny.item2index"
    rows = {token: row for row, token in enumerate(reversed(list(tokens[1:])))}
    index_file.write_text("".join(f"{t}\t{r}\n" for t, r in rows.items()), encoding="utf-8")
    _, _, indexed = _model(uni_config, train_stage="inductive_ft", text_embedding_index=str(index_file), **released)
    assert np.array_equal(indexed.item_text_emb[1].numpy(), features[rows[tokens[1]]])

    with pytest.raises(ValueError, match="whole number of float32 rows"):
        _model(uni_config, train_stage="inductive_ft", text_embedding_file=str(feat_file), text_embedding_size=7)
    features[:5].tofile(feat_file)
    with pytest.raises(ValueError, match="has 5 rows"):
        _model(uni_config, train_stage="inductive_ft", **released)


def _official_codes(index_path: str, vectors: np.ndarray) -> np.ndarray:
    """The codes as RUCAIBox/VQ-Rec's loader gets them: add the vectors, read the inverted list."""
    import faiss

    index = faiss.read_index(index_path)
    before = index.ntotal
    index.add(vectors)
    invlists = faiss.extract_index_ivf(index).invlists
    codes = faiss.rev_swig_ptr(invlists.get_codes(0), invlists.list_size(0) * invlists.code_size)
    return codes.reshape(-1, invlists.code_size)[before:].astype(np.int64)


def test_released_faiss_index_encodes_like_the_release_and_refuses_other_widths(uni_config, tmp_path):
    import faiss

    tokens = _item_tokens(uni_config)
    width, books = 16, 4
    features = np.random.RandomState(1).randn(max(int(t) for t in tokens[1:]) + 1, width).astype(np.float32)
    feat_file = tmp_path / "Tiny.feat1CLS"
    features.tofile(feat_file)
    index = faiss.index_factory(width, f"OPQ{books},IVF1,PQ{books}x8", faiss.METRIC_INNER_PRODUCT)
    index.train(features[:600])
    index.add(features[:600])  # as the release's pq.py: the index holds the training items' codes
    index_file = tmp_path / f"Tiny.OPQ{books},IVF1,PQ{books}x8.strict.index"
    faiss.write_index(index, str(index_file))

    codes = released_item_codes(str(index_file), features, books, 256)
    assert np.array_equal(codes, _official_codes(str(index_file), features))
    assert faiss.read_index(str(index_file)).ntotal == 600  # not modified

    config = {"text_embedding_file": str(feat_file), "text_embedding_size": width, "pq_index_file": str(index_file),
              "code_dim": books, "code_cap": 256}
    config_obj = Config(model="VQRec", dataset=uni_config["dataset"],
                        config_dict={**uni_config, "train_stage": "inductive_ft", **config})
    dataset, _, model = build(config_obj)
    item_tokens = dataset.field2id_token[dataset.iid_field]
    expected = codes[[int(t) for t in item_tokens[1:]]] + vqrec_module.VQRec.codebook_offsets_for(books, 256).numpy()
    assert np.array_equal(model.item_codes[1:].numpy(), expected) and model.item_codes[0].eq(0).all()

    with pytest.raises(ValueError, match="encodes 16-d vectors"):
        released_item_codes(str(index_file), features[:, :8], books, 256)
    with pytest.raises(ValueError, match="code_dim: 4"):
        released_item_codes(str(index_file), features, 8, 256)


def test_official_vqrec_code_table_maps_to_ours_and_back():
    torch.manual_seed(0)
    books, cap, hidden = 3, 4, 5
    ours = {"code_embedding.weight": torch.randn(books * cap + 1, hidden), "position_embedding.weight": torch.randn(7, hidden),
            "LayerNorm.weight": torch.ones(hidden)}
    ours["code_embedding.weight"][0] = 0
    official = vqrec_module.to_official_state(ours, books, cap)
    assert official["pq_code_embedding.weight"].shape == (books * (cap + 1), hidden)
    # code c of book d: their row d * (cap + 1) + 1 + c, our row 1 + d * cap + c
    assert torch.equal(official["pq_code_embedding.weight"][1 * (cap + 1) + 1 + 2], ours["code_embedding.weight"][1 + cap + 2])
    assert official["pq_code_embedding.weight"][cap + 1].eq(0).all()
    back = vqrec_module.from_official_state(official)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    with pytest.raises(ValueError, match="trans_matrix"):
        vqrec_module.from_official_state({"pq_code_embedding.weight": official["pq_code_embedding.weight"]})


OFFICIAL_CHECKPOINT = os.environ.get("RECBOLE_LLM_OFFICIAL_UNISREC_CHECKPOINT")


@pytest.mark.skipif(not OFFICIAL_CHECKPOINT, reason="set RECBOLE_LLM_OFFICIAL_UNISREC_CHECKPOINT to a checkpoint "
                    "written by RUCAIBox/UniSRec's pretrain.py (see docs/fidelity.md)")
def test_a_checkpoint_of_the_authors_pretraining_loads_and_adapts_as_theirs(uni_config):
    official = read_state_dict(OFFICIAL_CHECKPOINT)  # its pickled Config names the authors' classes
    width = official["moe_adaptor.w_gate"].shape[0]
    hidden = official["position_embedding.weight"].shape[1]
    n_exps = official["moe_adaptor.w_gate"].shape[1]
    layers = len({key.split(".")[2] for key in official if key.startswith("trm_encoder.layer.")})
    inner = official["trm_encoder.layer.0.feed_forward.dense_1.weight"].shape[0]
    features = np.random.RandomState(0).randn(2000, width).astype(np.float32)
    feat_file = Path(uni_config["cache_dir"]).parent / "official.feat1CLS"
    features.tofile(feat_file)
    overrides = {"train_stage": "inductive_ft", "pretrained_file": OFFICIAL_CHECKPOINT, "text_embedding_file": str(feat_file),
                 "text_embedding_size": width, "hidden_size": hidden, "inner_size": inner, "n_layers": layers,
                 "n_exps": n_exps, "MAX_ITEM_LIST_LENGTH": official["position_embedding.weight"].shape[0]}
    _, _, model = _model(uni_config, **overrides)
    for key in ("position_embedding.weight", "trm_encoder.layer.0.multi_head_attention.query.weight", "LayerNorm.bias"):
        assert torch.equal(model.state_dict()[key], official[key])
    model.eval()
    x = model.item_text_emb[1:6]
    gates = (x @ official["moe_adaptor.w_gate"]).softmax(-1)
    expected = sum(gates[:, e:e + 1] * ((x - official[f"moe_adaptor.experts.{e}.bias"])
                                        @ official[f"moe_adaptor.experts.{e}.lin.weight"].t()) for e in range(n_exps))
    with torch.no_grad():
        assert torch.allclose(model.adaptor(x), expected, atol=1e-5)


OFFICIAL_VQREC_CHECKPOINT = os.environ.get("RECBOLE_LLM_OFFICIAL_VQREC_CHECKPOINT")


@pytest.mark.skipif(not OFFICIAL_VQREC_CHECKPOINT, reason="set RECBOLE_LLM_OFFICIAL_VQREC_CHECKPOINT to a checkpoint "
                    "written by RUCAIBox/VQ-Rec's pretrain.py (see docs/fidelity.md)")
def test_a_checkpoint_of_the_authors_vqrec_pretraining_loads_with_the_same_item_embeddings(uni_config):
    official = read_state_dict(OFFICIAL_VQREC_CHECKPOINT)
    books, cap = official["trans_matrix"].shape[0], official["trans_matrix"].shape[1] - 1
    hidden = official["position_embedding.weight"].shape[1]
    overrides = {"train_stage": "inductive_ft", "pretrained_file": OFFICIAL_VQREC_CHECKPOINT, "code_dim": books,
                 "code_cap": cap, "hidden_size": hidden, "opq_iter": 2,
                 "inner_size": official["trm_encoder.layer.0.feed_forward.dense_1.weight"].shape[0],
                 "n_layers": len({key.split(".")[2] for key in official if key.startswith("trm_encoder.layer.")}),
                 "MAX_ITEM_LIST_LENGTH": official["position_embedding.weight"].shape[0]}
    config = Config(model="VQRec", dataset=uni_config["dataset"], config_dict={**uni_config, **overrides})
    _, _, model = build(config)
    assert torch.equal(model.state_dict()["trm_encoder.layer.0.multi_head_attention.key.weight"],
                       official["trm_encoder.layer.0.multi_head_attention.key.weight"])
    codes = torch.randint(0, cap, (6, books))
    theirs = official["pq_code_embedding.weight"][codes + 1 + torch.arange(books) * (cap + 1)].mean(1)
    ours = model.code_embedding.weight[codes + vqrec_module.VQRec.codebook_offsets_for(books, cap)].mean(1)
    assert torch.allclose(ours, theirs)
