"""TIGER / LETTER: tokenizer, trie, constrained beam search, end-to-end runs on an ml-100k slice."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recbole_llm.config import Config
from recbole_llm.model._generative import PrefixTrie, SemanticIdVocabulary, constrained_beam_search
from recbole_llm.quantize.rqvae import RQVAEConfig, ResidualQuantizer, diversity_loss
from recbole_llm.stages import Checkpoint
from recbole_llm.quantize.semantic_ids import (
    SemanticIdIndexError,
    TokenizerTrainer,
    TokenizerTraining,
    deduplicate,
    external_semantic_ids,
    parse_code_index,
    standardized,
)
from recbole_llm.quick_start import build, run_recbole_llm

# A tiny tokenizer and generator: seconds on two CPU cores.
TINY_GENREC = {
    "rqvae_hidden_sizes": [32],
    "rqvae_code_dim": 8,
    "rqvae_levels": 2,
    "rqvae_codebook_size": 8,
    "rqvae_epochs": 4,
    "rqvae_batch_size": 256,
    "rqvae_save_step": 2,
    "rqvae_log_step": 2,
    "cf_epochs": 1,
    "cf_hidden_size": 16,
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 5,
    "topk": [10, 20],
    "beam_size": 20,
    "train_batch_size": 1024,
    "user_inter_num_interval": "[0,60]",  # the 54 lightest users of the slice: ~1.9k interactions
}


@pytest.fixture
def genrec_config(tiny_config):
    return {**tiny_config, **TINY_GENREC}


def test_deduplicate_makes_ids_unique_and_reports_collisions():
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 2]])
    ids, report = deduplicate(codes)
    assert len({tuple(row) for row in ids}) == len(codes)
    assert ids[:, -1].tolist() == [0, 1, 0, 2, 0]
    assert report["unique_codes_before_dedup"] == 3
    assert report["collision_rate_before_dedup"] == pytest.approx(1 - 3 / 5)
    assert report["dedup_codebook_size"] == 3


def test_diversity_loss_positive_comes_from_own_cluster_and_skips_singletons():
    torch.manual_seed(0)
    codebook = torch.randn(6, 4, requires_grad=True)
    clusters = torch.tensor([0, 0, 0, 1, 1, 2])  # code 5 is alone in its cluster
    codes = torch.tensor([0, 1, 3, 4, 5, 5])
    loss = diversity_loss(codebook, codes, clusters, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert codebook.grad.abs().sum() > 0
    only_singletons = diversity_loss(codebook, torch.tensor([5, 5]), clusters)
    assert only_singletons.item() == 0.0


def _training(epochs: int) -> TokenizerTraining:
    return TokenizerTraining(epochs=epochs, batch_size=16, learning_rate=1e-3, weight_decay=1e-4, div_clusters=2,
                             save_step=50, log_step=50, seed=2020)


def test_tokenizer_resumes_to_the_same_codes(tmp_path):
    torch.manual_seed(0)
    embeddings = torch.randn(60, 12)
    architecture = RQVAEConfig(input_dim=12, hidden_sizes=[16], code_dim=4, n_levels=2, codebook_size=4,
                               div_weight=0.1)
    straight = TokenizerTrainer(architecture, _training(epochs=4))
    expected = straight.fit(embeddings).codes(embeddings)
    checkpoint = Checkpoint(tmp_path / "rqvae.pt")
    TokenizerTrainer(architecture, _training(epochs=2), checkpoint).fit(embeddings)
    resumed = TokenizerTrainer(architecture, _training(epochs=4), checkpoint)
    codes = resumed.fit(embeddings).codes(embeddings)
    assert resumed.start_epoch == 2
    assert torch.equal(codes, expected)


def _random_codes(n_items: int, sizes, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    raw = np.stack([rng.integers(0, size, n_items) for size in sizes[:-1]], axis=1)
    ids, _ = deduplicate(raw)
    table = torch.full((n_items + 1, ids.shape[1]), -1, dtype=torch.long)
    table[1:] = torch.from_numpy(ids)
    return table


def test_trie_beam_search_yields_only_valid_ids_and_the_true_top_items():
    codes = _random_codes(40, [3, 4, None], seed=1)
    sizes = (3, 4, int(codes[1:, -1].max()) + 1)
    vocabulary = SemanticIdVocabulary(sizes)
    trie = PrefixTrie(codes, sizes)
    valid = {tuple(row) for row in codes[1:].tolist()}
    table = torch.log_softmax(torch.randn(3, 7, vocabulary.size), dim=-1)  # per user, per position

    def next_log_probs(decoded, _parents):
        return table[:, decoded.shape[-1]].unsqueeze(1).expand(-1, decoded.shape[1], -1)

    items, scores = constrained_beam_search(next_log_probs, trie, vocabulary, 3, 60, torch.device("cpu"))
    tokens = vocabulary.item_tokens(codes)
    exact = torch.stack([table[:, t, tokens[1:, t]] for t in range(len(sizes))]).sum(0)  # [3, 40]
    finite = torch.isfinite(scores)
    assert finite.sum(1).tolist() == [40, 40, 40]  # beam 60 > 40 items: every item, once
    for user in range(3):
        returned = items[user][finite[user]]
        assert all(tuple(codes[i].tolist()) in valid for i in returned)
        assert sorted(returned.tolist()) == list(range(1, 41))
        torch.testing.assert_close(scores[user][finite[user]], exact[user, returned - 1])
    narrow_items, narrow_scores = constrained_beam_search(next_log_probs, trie, vocabulary, 3, 5, torch.device("cpu"))
    assert (narrow_items > 0).all() and torch.isfinite(narrow_scores).all()


def test_semantic_ids_unique_and_cached(genrec_config):
    config = Config(model="LETTER", config_dict=genrec_config)
    dataset, _, model = build(config)
    ids = dataset.item_semantic_ids[1:]
    assert len({tuple(row) for row in ids.tolist()}) == len(ids)
    report = dataset.semantic_id_report
    assert 0.0 <= report["collision_rate_before_dedup"] < 1.0 and report["n_items"] == len(ids)
    again, _, _ = build(Config(model="LETTER", config_dict=genrec_config))
    assert torch.equal(again.item_semantic_ids, dataset.item_semantic_ids)


def test_beam_scores_equal_exact_log_likelihood(genrec_config):
    config = Config(model="TIGER", config_dict=genrec_config)
    _, (_, _, test_data), model = build(config)
    model.eval()
    batch = next(iter(test_data))[0]
    interaction = batch[:8]
    with torch.no_grad():
        tokens, mask = model.encoder_inputs(interaction)
        items, scores = model.beam_search(tokens, mask)
        exact = model.exact_scores(tokens, mask)
        for column in range(items.shape[1]):
            candidate = interaction.copy() if hasattr(interaction, "copy") else interaction
            candidate[model.ITEM_ID] = items[:, column]
            torch.testing.assert_close(model.predict(candidate), scores[:, column], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(exact.gather(1, items), scores, atol=1e-4, rtol=1e-4)
        best_exact = exact.topk(items.shape[1], dim=1).values
    assert (scores[:, 0] <= best_exact[:, 0] + 1e-4).all()
    assert items.shape[1] == 20 and (items > 0).all()


@pytest.mark.parametrize("model_name", ["TIGER", "LETTER"])
def test_end_to_end_run(genrec_config, model_name):
    result = run_recbole_llm(model=model_name, config_dict=genrec_config, saved=False)
    for key in ("recall@10", "ndcg@10", "recall@20"):
        assert math.isfinite(result["test_result"][key])
    assert result["test_result"]["recall@20"] >= result["test_result"]["recall@10"]
    report = result["preparation"]["semantic_ids"]
    assert 0.0 <= report["collision_rate_before_dedup"] < 1.0


def test_unknown_scoring_mode_is_rejected(genrec_config):
    with pytest.raises(ValueError, match="scoring"):
        build(Config(model="TIGER", config_dict={**genrec_config, "scoring": "greedy"}))


def test_dead_codes_restart_onto_residuals_so_every_code_is_used():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(500, 4, generator=generator)
    quantizer = ResidualQuantizer(n_levels=2, codebook_size=8, code_dim=4)
    with torch.no_grad():
        for codebook in quantizer.codebooks:  # one live code at the data, seven stranded far away
            codebook.copy_(torch.full((8, 4), 100.0))
            codebook[0] = 0.0
    assert quantizer.restart_dead_codes(latents, generator) == 14
    _, codes, _, _ = quantizer(latents)
    assert len(codes[:, 0].unique()) == 8
    assert quantizer.restart_dead_codes(latents, generator) < 14


def test_standardized_embeddings_have_zero_mean_unit_variance():
    embeddings = torch.nn.functional.normalize(torch.randn(300, 16) + 3.0, dim=1)
    z = standardized(embeddings)
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(16), atol=1e-4, rtol=0)


def test_encoder_reads_the_latest_history_items(genrec_config):
    config = Config(model="TIGER", config_dict={**genrec_config, "history_items": 2})
    _, (train_data, _, _), model = build(config)
    batch = next(iter(train_data))
    items, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    tokens, mask = model.encoder_inputs(batch)
    n_tokens = model.item_tokens.shape[1]
    assert tokens.shape[1] == 2 * n_tokens and torch.equal(mask, tokens != 0)
    for row in range(len(items)):
        length = int(lengths[row])
        latest = items[row, max(0, length - 2):length]
        expected = model.item_tokens[latest].reshape(-1)
        assert torch.equal(tokens[row, : len(expected)], expected)
        assert not mask[row, len(expected):].any()


def _write_index(path, index) -> str:
    path.write_text(json.dumps(index) if not isinstance(index, str) else index, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("index, message", [
    ('{"0": ["<a_1>", "<b_2>"],\n "1": ["<a_1>" "<b_3>"]}', r"line 2, column \d+: malformed JSON"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "b_3"]}, r"item '1', position 1: code 'b_3' is not of the form"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}, r"item '1' has 1 codes, expected 2"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<b_1>", "<a_2>"]}, r"item '1', position 0: level prefix 'b', expected 'a'"),
    ({"0": "<a_1><b_2>"}, r"item '0': expected a list of codes"),
    ([["<a_1>"]], r"expected a non-empty object"),
])
def test_malformed_index_names_the_file_and_entry(tmp_path, index, message):
    path = _write_index(tmp_path / "bad.index.json", index)
    with pytest.raises(SemanticIdIndexError, match=message) as error:
        parse_code_index(path)
    assert "bad.index.json" in str(error.value)


def test_external_index_missing_item_is_named(tmp_path):
    path = _write_index(tmp_path / "office.index.json", {"0": ["<a_1>", "<b_2>"], "1": ["<a_0>", "<b_2>"]})
    with pytest.raises(SemanticIdIndexError, match=r"1 of the dataset's 3 items have no entry \(first: \['7'\]\)"):
        external_semantic_ids(path, ["0", "7", "1"], tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="semantic_id_file"):
        external_semantic_ids(tmp_path / "absent.json", ["0"], tmp_path / "cache")


def test_external_index_collisions_are_counted_and_deduplicated(tmp_path):
    index = {"10": ["<a_1>", "<b_2>"], "11": ["<a_0>", "<b_2>"], "12": ["<a_1>", "<b_2>"],
             "13": ["<a_3>", "<b_0>"], "99": ["<a_1>", "<b_2>"]}  # 99: not in the dataset
    path = _write_index(tmp_path / "index.json", index)
    ids, report = external_semantic_ids(path, ["12", "11", "10", "13"], tmp_path / "cache")
    assert ids[0].tolist() == [-1, -1, -1]
    assert ids[1:].tolist() == [[1, 2, 0], [0, 2, 0], [1, 2, 1], [3, 0, 0]]  # "12" then "10" share (1, 2)
    assert report["colliding_ids"] == 1 and report["items_in_collisions"] == 2
    assert report["index_entries"] == 5 and report["dedup_codebook_size"] == 2 and not report["cached"]
    again, cached = external_semantic_ids(path, ["12", "11", "10", "13"], tmp_path / "cache")
    assert torch.equal(again, ids) and cached["cached"] and cached["colliding_ids"] == 1


def test_tiger_trains_on_an_external_index(genrec_config, tmp_path):
    dataset, _, _ = build(Config(model="TIGER", config_dict=genrec_config))
    tokens = dataset.field2id_token[dataset.iid_field][1:]
    rng = np.random.default_rng(0)
    codes = {str(token): [int(rng.integers(0, 5)), int(rng.integers(0, 7)), int(rng.integers(0, 3))] for token in tokens}
    codes[str(tokens[1])] = codes[str(tokens[0])]  # one collision at least
    index = {token: [f"<{letter}_{code}>" for letter, code in zip("abc", row)] for token, row in codes.items()}
    path = _write_index(tmp_path / "index.json", index)
    config = Config(model="TIGER", config_dict={**genrec_config, "semantic_id_file": path})
    dataset, (train_data, _, _), model = build(config)
    expected = torch.tensor([codes[str(token)] for token in tokens])
    assert torch.equal(dataset.item_semantic_ids[1:, :3], expected)
    assert len({tuple(row) for row in dataset.item_semantic_ids[1:].tolist()}) == len(tokens)
    assert model.vocabulary.level_sizes[:3] == tuple(int(v) + 1 for v in expected.max(0).values)
    assert dataset.semantic_id_report["colliding_ids"] >= 1
    assert dataset.item_text_emb is None  # a released index needs no text encoding
    loss = model.calculate_loss(next(iter(train_data)))
    assert torch.isfinite(loss)


def test_length_buckets_give_the_loss_and_encoding_of_one_padded_pass(genrec_config):
    config = Config(model="TIGER", config_dict={**genrec_config, "length_buckets": 16})
    _, (train_data, _, _), model = build(config)
    model.eval()
    batch = next(iter(train_data))
    tokens, mask = model.encoder_inputs(batch)
    buckets = model.length_buckets_of(mask)
    assert len(buckets) == 16 and sorted(torch.cat(buckets).tolist()) == list(range(len(tokens)))
    lengths = mask.sum(1)
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(buckets, buckets[1:]))
    assert len({int(lengths[rows].max()) for rows in buckets}) > 1  # the slice has short and long histories
    with torch.no_grad():
        bucketed_loss, bucketed_hidden = model.calculate_loss(batch), model.encode(tokens, mask)
        model.length_buckets = 1
        loss, hidden = model.calculate_loss(batch), model.encode(tokens, mask)
    torch.testing.assert_close(bucketed_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bucketed_hidden[mask], hidden[mask], atol=1e-5, rtol=1e-5)


def test_bf16_autocast_trains_and_ranks(genrec_config):
    config = Config(model="TIGER", config_dict={**genrec_config, "mixed_precision": "bf16"})
    _, (train_data, _, test_data), model = build(config)
    model.eval()
    batch = next(iter(train_data))
    with torch.no_grad():
        mixed = model.calculate_loss(batch)
        model.mixed_precision = "none"
        full = model.calculate_loss(batch)
        tokens, mask = model.encoder_inputs(next(iter(test_data))[0][:8])
        model.mixed_precision = "bf16"
        items, scores = model.beam_search(tokens, mask)
    assert mixed.dtype == torch.float32 and abs(float(mixed) - float(full)) < 0.05 * float(full)
    assert (items > 0).all() and torch.isfinite(scores).all() and scores.dtype == torch.float32
    with pytest.raises(ValueError, match="mixed_precision"):
        build(Config(model="TIGER", config_dict={**genrec_config, "mixed_precision": "fp8"}))
