"""The UniSAR fidelity benchmark's writer of the release's pickles, and its metric helpers."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.data.search_dataset import (
    CANDIDATES, HISTORY_ITEM, HISTORY_KIND, HISTORY_SESSION, POSITIVE_INDEX, REC, SEARCH, TARGET_KIND,
)
from recbole_llm.registry import create_dataset


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity" / "unisar.py"


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_unisar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity_unisar"] = module
    spec.loader.exec_module(module)
    return module


def _dataset(search_data):
    config = Config(model="UniSAR", config_file_list=[search_data["config_file"]],
                    config_dict={**search_data["config_dict"], "max_session_clicks": 1, "max_query_words": 16})
    return config, create_dataset(config)


def _our_rows(split_data, kind):
    """Our rows of one kind: (user, target, rec history, session history, candidates with the target first)."""
    rows = split_data.dataset.inter_feat
    rows = rows[rows[TARGET_KIND] == kind]
    out = []
    for i in range(len(rows)):
        kinds, items, sessions = (rows[key][i].tolist() for key in (HISTORY_KIND, HISTORY_ITEM, HISTORY_SESSION))
        rec = [item for k, item in zip(kinds, items) if k == REC]
        src = [session for k, session in zip(kinds, sessions) if k == SEARCH]
        candidates = None
        if CANDIDATES in rows:
            values = rows[CANDIDATES][i].tolist()
            position = int(rows[POSITIVE_INDEX][i])
            candidates = tuple([values[position]] + values[:position] + values[position + 1:])
        out.append((int(rows["user_id"][i]), int(rows["item_id"][i]), tuple(rec), tuple(src), candidates))
    return sorted(out, key=repr)


def test_release_pickles_round_trip_our_dataset(search_data, tmp_path, fidelity):
    """Every row the writer keeps has our target, history and uni99 candidates; dropped rows lack a kind."""
    config, dataset = _dataset(search_data)
    events = fidelity.dataset_events(dataset)
    length = config["history_length"]
    counts = fidelity.write_release_format(
        tmp_path / "release", events, fidelity.dataset_candidates(dataset, events, config["eval_negatives"], 2020),
        dataset.item_num, dataset.user_num, 16, 1, train_negatives=3, seed=7)
    back = fidelity.read_release_format(tmp_path / "release")

    for user, entry in back["user_vocab"].items():  # the user lists hold the user's events in time order
        mine = sorted((e.time, i, e.item, e.session) for i, e in enumerate(events) if e.user == user)
        assert entry["rec_his"] == [item for _, _, item, session in mine if not session]
        assert entry["src_session_his"] == [session for _, _, _, session in mine if session]
    sessions = back["src_session_vocab_np"]
    for event in events:
        if event.search:
            assert sessions["pos_items"][event.session, 0] == event.item
            assert list(sessions["keyword"][event.session][: len(event.query)]) == list(event.query)[:16]

    splits = dict(zip(fidelity.SPLITS, data_preparation(config, dataset)))
    assert np.array_equal(sessions["keyword"], dataset.session_query.numpy())  # our session numbering
    for kind, name in ((REC, "rec"), (SEARCH, "src")):
        for split, loader in splits.items():
            ours = _our_rows(loader, kind)
            frame = back[f"{name}_{split}"]
            theirs = []
            for _, row in frame.iterrows():
                rec, src = fidelity.release_history(back["user_vocab"], row, length)
                candidates = None if split == "train" else tuple([row["item_id"], *row["neg_items"]])
                theirs.append((int(row["user_id"]), int(row["item_id"]), tuple(rec), tuple(src), candidates))
                assert len(row["neg_items"]) == (3 if split == "train" else config["eval_negatives"])
                if split == "train":
                    assert row["item_id"] not in row["neg_items"]
                if name == "src":
                    assert tuple(row["keyword"]) in {tuple(e.query) for e in events if e.user == row["user_id"]}
            if split == "train":  # training negatives are the writer's own: compare without them
                ours = [r[:4] for r in ours]
                theirs = [r[:4] for r in theirs]
            both_kinds = [r for r in ours if r[2] and r[3]]
            assert sorted(theirs, key=repr) == both_kinds
            assert counts[f"{name}_{split}"] == {"rows": len(both_kinds), "dropped": len(ours) - len(both_kinds)}
    assert sum(c["rows"] for c in counts.values()) > 0 and sum(c["dropped"] for c in counts.values()) > 0


def test_split_labels_match_recbole_leave_one_out(fidelity):
    assert fidelity.split_labels(1) == ["train"]
    assert fidelity.split_labels(2) == ["train", "test"]
    assert fidelity.split_labels(4) == ["train", "train", "val", "test"]


def test_release_metric_names_and_tie_rule(fidelity):
    parsed = fidelity.release_metrics({"rec": "HR@1:0.2500,NDCG@1:0.2500,HR@5:0.5000", "src": "NDCG@10:0.1000"})
    assert parsed == {"hit@1": 0.25, "recall@1": 0.25, "ndcg@1": 0.25, "hit@5": 0.5, "recall@5": 0.5,
                      "search_ndcg@10": 0.1}
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    metrics = fidelity.rank_metrics(scores, np.array([0, 2]))
    assert metrics["hit@1"] == 0.0  # a tie counts against the target
    assert metrics["hit@5"] == 1.0
    assert metrics["ndcg@5"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(3)) / 2)


def test_bm25_baseline_ranks_the_matching_item_first():
    spec = importlib.util.spec_from_file_location("unisar_office", SCRIPT.parents[1] / "unisar_office.py")
    office = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(office)
    texts = {"a": ["red", "pen"], "b": ["blue", "paper"], "c": ["red", "paper"], "d": ["stapler"],
             **{f"filler{i}": ["box", str(i)] for i in range(6)}}  # IDF over the catalogue: 'red' is rare
    scores = office.bm25_scores(texts, [["red", "pen"], ["stapler"]], [["b", "a", "c"], ["a", "b", "d"]])
    assert scores.shape == (2, 3)
    assert scores[0].argmax() == 1 and scores[0, 2] > scores[0, 0] == 0.0  # 'c' shares one word, 'b' none
    assert scores[1].argmax() == 2
    metrics = office.rank_metrics(scores, np.array([1, 2]))
    assert metrics["hit@1"] == 1.0


def test_train_needs_both_kinds_keeps_the_rows_the_release_keeps(search_data, tmp_path, fidelity):
    config, dataset = _dataset(search_data)
    events = fidelity.dataset_events(dataset)
    counts = fidelity.write_release_format(
        tmp_path / "release", events, fidelity.dataset_candidates(dataset, events, config["eval_negatives"], 2020),
        dataset.item_num, dataset.user_num, 16, 1, train_negatives=3, seed=7)
    config["train_needs_both_kinds"] = True
    train, valid, test = data_preparation(config, create_dataset(config))
    kinds = train.dataset.inter_feat[HISTORY_KIND]
    assert bool(((kinds == REC).any(1) & (kinds == SEARCH).any(1)).all())
    assert len(train.dataset.inter_feat) == counts["rec_train"]["rows"] + counts["src_train"]["rows"]
    config["train_needs_both_kinds"] = False
    full_train, _, full_test = data_preparation(config, create_dataset(config))
    assert len(full_train.dataset.inter_feat) > len(train.dataset.inter_feat)
    assert len(test.dataset.inter_feat) == len(full_test.dataset.inter_feat)  # evaluation rows untouched
