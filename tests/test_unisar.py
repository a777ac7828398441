"""UniSAR: converters, mixed-history dataset, attention masks, one-type histories, end-to-end run."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml
from recbole.data import data_preparation

from recbole_llm.config import Config
from recbole_llm.convert import amazon_search, convert
from recbole_llm.data.search_dataset import (
    CANDIDATES, HISTORY_ITEM, HISTORY_KIND, HISTORY_SESSION, POSITIVE_INDEX, REC, SEARCH, TARGET_KIND,
    TARGET_SESSION, sampled_candidates,
)
from recbole_llm.model.unisar import UniSAR, transition_masks
from recbole_llm.quick_start import run_recbole_llm
from recbole_llm.registry import create_dataset

from conftest import TINY_UNISAR as TINY  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on shared cores make every small op wait on the other thread: use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prepared(search_data, **overrides):
    config = Config(model="UniSAR", config_file_list=[search_data["config_file"]],
                    config_dict={**search_data["config_dict"], **overrides})
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid, test


def test_category_query_drops_stopwords_and_repeats():
    levels = ["Office & School Supplies", "Paper", "Office Paper", "Paper of the Year"]
    assert amazon_search.category_query(levels) == ["office", "school", "supplies", "paper", "year"]


def test_amazon_search_on_lcrec_json_is_labelled_semi_synthetic(tmp_path):
    source = tmp_path / "Toy"
    source.mkdir()
    (source / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": [2, 0]}))
    items = {
        "0": {"title": "Blue Pen", "categories": "Office Products, Writing, Pens"},
        "1": {"title": "Paper", "categories": "Office Products, Paper, Copy Paper"},
        "2": {"title": "Mystery", "categories": "Office Products"},
    }
    (source / "Toy.item.json").write_text(json.dumps(items))
    out = convert("amazon_search", [source], tmp_path / "out" / "ToySearch", search_ratio=1.0).path
    text = (out / "ToySearch.yaml").read_text()
    assert text.startswith("# SEMI-SYNTHETIC") and yaml.safe_load(text)["semi_synthetic"] is True
    with open(out / "ToySearch.inter", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    by_item = {(r[0], r[1]): r for r in rows}
    # the shared root "Office Products" is dropped; item 2 has no other level, so it stays a rec event
    assert by_item[("0", "0")][3:] == ["search", "writing pens", "0"]
    assert by_item[("0", "1")][3:] == ["search", "paper copy", "1"]
    assert by_item[("0", "2")][3] == "rec"
    assert [r[2] for r in rows if r[0] == "0"] == ["0.0", "1.0", "2.0"]


def test_kuaisar_converter(tmp_path):
    source = tmp_path / "KuaiSAR"
    source.mkdir()
    (source / "rec_inter.csv").write_text(
        "user_id,item_id,playing_time,duration_ms,time,timestamp,click,forward,like,follow,search,search_item_related\n"
        "7,100,1,1,t,1000000.0,1,0,0,0,0,0\n"
        "7,101,1,1,t,2000000.0,0,0,0,0,0,0\n"
        "7,102,1,1,t,4000000.0,1,0,0,0,0,0\n"
    )
    (source / "src_inter.csv").write_text(
        "user_id,search_session_id,search_session_time,search_session_timestamp,keyword,search_source,item_id,click_cnt,item_type\n"
        '7,s1,t,3000000,"[20, 34, 3]",USER_INPUT,200,1,VIDEO\n'
        '7,s1,t,3000000,"[20, 34, 3]",USER_INPUT,201,0,VIDEO\n'
        '7,s1,t,3000000,"[20, 34, 3]",USER_INPUT,202,2,IMAGE_ATLAS\n'
        '7,s2,t,3500000,"[5]",USER_INPUT,300,1,USER\n'
    )
    (source / "item_features.csv").write_text('item_id,caption\n100,"[20, 7]"\n200,"[]"\n')
    out = convert("kuaisar", [source], tmp_path / "out" / "Kuai", min_user_events=1).path
    with open(out / "Kuai.inter", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    assert rows == [
        ["7", "100", "1000.0", "rec", "", ""],
        ["7", "200", "3000.0", "search", "20 34 3", "200 202"],
        ["7", "102", "4000.0", "rec", "", ""],
    ]
    items = dict(line.split("\t") for line in (out / "Kuai.item").read_text().splitlines()[1:])
    assert items["100"] == "20 7" and items["200"] == ""


def test_candidates_are_fixed_by_raw_tokens():
    tokens = [str(i) for i in range(50)]
    first = sampled_candidates("u1", REC, "3", tokens, {"3", "4"}, 9, seed=1)
    again = sampled_candidates("u1", REC, "3", list(reversed(tokens)), {"3", "4"}, 9, seed=1)
    assert first == again
    candidates, position = first
    assert candidates[position] == "3" and len(set(candidates)) == 10 and "4" not in candidates


def test_histories_split_and_candidates(search_data):
    _, dataset, train, valid, test = _prepared(search_data)
    item_tokens = dataset.field2id_token["item_id"]
    user_tokens = dataset.field2id_token["user_id"]
    with open(search_data["folder"] / "MLSearch.inter", encoding="utf-8") as f:
        events = list(csv.reader(f, delimiter="\t"))[1:]
    n = dataset.config["history_length"]
    test_rows = test.dataset.inter_feat
    for row in range(len(test_rows)):
        user = user_tokens[test_rows["user_id"][row]]
        mine = [e for _, _, e in sorted((float(e[2]), i, e) for i, e in enumerate(events) if e[0] == user)]
        kind = "rec" if test_rows[TARGET_KIND][row].item() == REC else "search"
        target = [e for e in mine if e[3] == kind][-1]
        assert item_tokens[test_rows["item_id"][row]] == target[1]
        target_time = float(target[2])
        mine = [(float(e[2]), e) for e in mine]
        earlier_rec = [e[1] for t, e in mine if t < target_time and e[3] == "rec"][-n:]
        kinds = test_rows[HISTORY_KIND][row]
        history_items = [item_tokens[i] for i, k in zip(test_rows[HISTORY_ITEM][row], kinds) if k == REC]
        assert history_items == earlier_rec
        assert int((kinds == SEARCH).sum()) == min(n, sum(1 for t, e in mine if t < target_time and e[3] == "search"))
        assert (kinds[: int((kinds == 0).sum())] == 0).all()  # right-aligned
        candidates = test_rows[CANDIDATES][row]
        assert candidates[test_rows[POSITIVE_INDEX][row]] == test_rows["item_id"][row]
        assert len(set(candidates.tolist())) == 100
        assert not {item_tokens[c] for c in candidates.tolist()} - {item_tokens[test_rows["item_id"][row]]} & {e[1] for _, e in mine}
    # nothing of a user's valid/test targets appears in training rows (as target or in history)
    train_rows = train.dataset.inter_feat
    for held_out in (valid.dataset.inter_feat, test_rows):
        for user, item, kind, session in zip(held_out["user_id"], held_out["item_id"], held_out[TARGET_KIND], held_out[TARGET_SESSION]):
            mine = train_rows["user_id"] == user
            if kind == REC:
                assert not (train_rows[HISTORY_ITEM][mine] == item).any()
                assert not ((train_rows["item_id"][mine] == item) & (train_rows[TARGET_KIND][mine] == REC)).any()
            else:
                assert not (train_rows[HISTORY_SESSION][mine] == session).any()
                assert not (train_rows[TARGET_SESSION][mine] == session).any()


def test_transition_masks_let_each_view_see_only_its_behaviours():
    kinds = torch.tensor([[0, 1, 2, 1, 2, 2]])
    masks = {name: mask[0] for name, mask in transition_masks(kinds).items()}
    seen = {name: {i: torch.nonzero(mask[i]).flatten().tolist() for i in range(6)} for name, mask in masks.items()}
    assert seen["rec2rec"] == {0: [], 1: [1], 2: [], 3: [1, 3], 4: [], 5: []}
    assert seen["search2search"] == {0: [], 1: [], 2: [2], 3: [], 4: [2, 4], 5: [2, 4, 5]}
    assert seen["search2rec"] == {0: [], 1: [], 2: [], 3: [2], 4: [], 5: []}
    assert seen["rec2search"] == {0: [], 1: [], 2: [1], 3: [], 4: [1, 3], 5: [1, 3]}


def test_views_ignore_what_their_mask_hides(search_data):
    _, dataset, train, _, _ = _prepared(search_data)
    model = UniSAR(train.dataset.config, train.dataset).eval()
    batch = next(iter(train))
    before = model.encode_history(batch)
    model.session_query.zero_()  # every search behaviour changes (its query vanishes)
    model.session_query_id.zero_()
    after = model.encode_history(batch)
    rec = batch[HISTORY_KIND] == REC
    search = batch[HISTORY_KIND] == SEARCH
    assert torch.allclose(before["rec2rec"][rec], after["rec2rec"][rec], atol=1e-6)
    assert not torch.allclose(before["search2search"][search], after["search2search"][search], atol=1e-3)
    # a rec behaviour without an earlier search has nothing in its search->rec view to change
    alone = rec & ~transition_masks(batch[HISTORY_KIND])["search2rec"].any(-1)
    assert alone.any() and torch.allclose(before["cross"][alone], after["cross"][alone], atol=1e-6)


@pytest.mark.parametrize("multi_task", ["PLE", "MMoE"])
def test_one_type_history_stays_finite(search_data, multi_task):
    _, dataset, train, _, _ = _prepared(search_data, multi_task=multi_task)
    model = UniSAR(train.dataset.config, train.dataset)
    batch = next(iter(train))
    kinds = batch[HISTORY_KIND].clone()
    third = len(kinds) // 3
    kinds[:third][kinds[:third] == SEARCH] = 0  # rec history only
    kinds[third : 2 * third][kinds[third : 2 * third] == REC] = 0  # search history only
    kinds[2 * third :] = 0  # no history at all
    batch.update(type(batch)({HISTORY_KIND: kinds}))
    batch[HISTORY_ITEM][kinds != REC] = 0
    batch[HISTORY_SESSION][kinds != SEARCH] = 0
    assert set(batch[TARGET_KIND].tolist()) == {REC, SEARCH}
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    scores = model.score_candidates(batch, torch.randint(1, model.n_items, (len(kinds), 7)))
    assert torch.isfinite(scores).all()


def test_end_to_end_reports_rec_and_search_metrics(search_data):
    result = run_recbole_llm("UniSAR", config_file_list=[search_data["config_file"]],
                             config_dict=search_data["config_dict"], saved=False)
    test = result["test_result"]
    for prefix in ("", "search_"):
        for k in (1, 5, 10, 20):
            assert 0.0 <= test[f"{prefix}ndcg@{k}"] <= test[f"{prefix}hit@{k}"] <= 1.0
    assert test["hit@20"] > 0 and test["search_hit@20"] > 0
    assert math.isfinite(result["best_valid_score"])


def test_missing_behaviour_field_is_named(search_data, tmp_path):
    folder = search_data["folder"]
    broken = tmp_path / "dataset" / "Broken"
    broken.mkdir(parents=True)
    lines = (folder / "MLSearch.inter").read_text().splitlines()
    (broken / "Broken.inter").write_text("\n".join("\t".join(l.split("\t")[:3]) for l in lines) + "\n")
    config = Config(model="UniSAR", config_dict={**TINY, "dataset": "Broken", "data_path": str(tmp_path / "dataset"),
                                                 "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    with pytest.raises(ValueError, match="behavior"):
        create_dataset(config).build()
