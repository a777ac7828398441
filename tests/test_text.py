"""Item-text substrate: assembly, the real MiniLM encoder, the cache and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_llm import Config, create_dataset
from recbole_llm.data import TextSeqDataset
from recbole_llm.text import assemble_item_texts, encode_texts, features, resolve_text_encoder


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_places_star_wars_films_together():
    texts = [
        "Star Wars. 1977. Action Adventure Romance Sci-Fi War",
        "Return of the Jedi. 1983. Action Adventure Romance Sci-Fi War",
        "Sleepless in Seattle. 1993. Comedy Romance",
    ]
    star_wars, jedi, romance = encode_texts(texts)
    assert star_wars.shape == (384,)
    assert _cosine(star_wars, jedi) > _cosine(star_wars, romance)
    assert _cosine(star_wars, jedi) > _cosine(jedi, romance)


def test_cache_hit_does_not_call_the_encoder(tmp_path, monkeypatch):
    texts = ["a red chair", "a blue table"]
    first, file = features.cached_text_embeddings(texts, tmp_path)
    assert file.is_file() and first.shape == (2, 384)

    def fail(*args, **kwargs):
        raise AssertionError("the encoder must not run on a cache hit")

    monkeypatch.setattr(features.text_encoder, "encode_texts", fail)
    second, _ = features.cached_text_embeddings(texts, tmp_path)
    np.testing.assert_array_equal(first, second)
    with pytest.raises(AssertionError, match="must not run"):
        features.cached_text_embeddings(texts + ["new"], tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def _config(tiny_config, **overrides):
    return Config(model="SASRec", dataset=tiny_config["dataset"], config_dict={**tiny_config, **overrides})


def test_text_dataset_aligns_embeddings_with_item_ids(tiny_config):
    dataset = TextSeqDataset(_config(tiny_config))
    assert dataset.item_text_emb.shape == (dataset.item_num, 384)
    assert torch.all(dataset.item_text_emb[0] == 0) and dataset.item_texts[0] == ""
    token = dataset.field2id_token["item_id"]
    star_wars = int(np.where(token == "50")[0][0])  # ml-100k item 50 is Star Wars (1977)
    assert dataset.item_texts[star_wars].startswith("Star Wars. 1977")
    expected = encode_texts([dataset.item_texts[star_wars]])[0]
    np.testing.assert_allclose(dataset.item_text_emb[star_wars].numpy(), expected, atol=1e-4)


def test_unknown_text_field_is_a_clear_error(tiny_config):
    dataset = create_dataset(_config(tiny_config))
    with pytest.raises(ValueError, match="'plot'.*available item fields"):
        assemble_item_texts(dataset, ["movie_title", "plot"])


def test_missing_text_policy(tiny_config):
    dataset = create_dataset(_config(tiny_config))
    dataset.item_feat.at[5, "movie_title"] = np.array([], dtype=np.int64)
    with pytest.raises(ValueError, match="1 of .* items .* have no text"):
        assemble_item_texts(dataset, ["movie_title"], missing_text="error")
    texts = assemble_item_texts(dataset, ["movie_title"], missing_text="empty")
    assert texts[5] == ""
    with pytest.raises(ValueError, match="missing_text must be one of"):
        assemble_item_texts(dataset, ["movie_title"], missing_text="drop")


def test_unknown_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_text_encoder(str(tmp_path / "no-model"))


def test_local_encoder_folder_works():
    packaged = resolve_text_encoder("all-MiniLM-L6-v2")
    by_path = encode_texts(["a lamp"], encoder_name=str(packaged))
    by_name = encode_texts(["a lamp"])
    np.testing.assert_allclose(by_path, by_name, atol=1e-6)
