"""Dataset converters: tiny fixtures in each upstream format, bad input, and the shared data."""
from __future__ import annotations

import gzip
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_fixtures as fx  # noqa: E402

from recbole_llm.convert import ConversionError, convert  # noqa: E402
from recbole_llm.convert.__main__ import main as cli_main  # noqa: E402
from recbole_llm.convert.core import clean_text, kcore_mask  # noqa: E402
from recbole_llm.convert.movielens import split_title  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECBOLE_LLM_SHARED_DATA", REPO.parent / "shared" / "data"))


def read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as RecBole reads it (same pandas call), columns named without types."""
    frame = pd.read_csv(path, delimiter="\t", dtype=str, engine="python")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def recbole_config(name: str, data_path: Path, model: str = "SASRec", **extra):
    from recbole_llm import Config

    config_dict = {"data_path": str(data_path), "state": "ERROR", "show_progress": False}
    config_dict.update(extra)
    return Config(model=model, dataset=name, config_file_list=[str(data_path / name / f"{name}.yaml")],
                  config_dict=config_dict)


@pytest.fixture
def clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["test"])


# --------------------------------------------------------------------------------------------
# Every format: converts, loads in RecBole and trains SASRec for one tiny epoch


@pytest.mark.parametrize("case", list(fx.CASES))
def test_converted_data_trains_sasrec(case, tmp_path, clean_argv, monkeypatch):
    import torch

    from recbole_llm import run_recbole_llm

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    fmt, writer = fx.CASES[case]
    inputs = writer(tmp_path / "raw")
    data = tmp_path / "data"
    result = convert(fmt, inputs, data / case)
    assert result.n_users == fx.N_USERS and result.n_items == fx.N_ITEMS

    settings = yaml.safe_load((data / case / f"{case}.yaml").read_text())
    item = read_atomic(data / case / f"{case}.item")
    assert settings["load_col"]["item"] == ["item_id", *item.columns[1:]]
    assert set(settings["text_fields"]) <= set(item.columns) and settings["text_fields"]
    assert item[settings["text_fields"][0]].notna().all()

    result = run_recbole_llm(
        model="SASRec", dataset=case, config_file_list=[str(data / case / f"{case}.yaml")],
        config_dict={
            "data_path": str(data), "epochs": 1, "hidden_size": 8, "inner_size": 16, "n_layers": 1,
            "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 256, "eval_batch_size": 256,
            "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR",
            "topk": [5], "valid_metric": "NDCG@5",  # the fixtures have 10 items: topk 50 is out of range
        },
        saved=False,
    )
    assert result["test_result"] and all(math.isfinite(v) for v in result["test_result"].values())


def test_item_text_survives_recbole_loading(tmp_path, clean_argv):
    from recbole_llm import create_dataset

    convert("amazon2023", fx.write_amazon2023(tmp_path / "raw"), tmp_path / "data" / "toy")
    dataset = create_dataset(recbole_config("toy", tmp_path / "data"))
    token = dataset.field2id_token
    row = dataset.token2id("item_id", "B0PAR00002")
    words = lambda field: [token[field][t] for t in dataset.item_feat[field][row].tolist() if t]  # noqa: E731
    assert " ".join(words("title")) == "Lab beaker & stand no. 2"
    assert " ".join(words("features")) == "Borosilicate glass Heat resistant"
    assert " ".join(words("categories")) == "Industrial & Scientific Lab Supplies"
    assert dataset.user_num - 1 == fx.N_USERS


def test_quoted_text_round_trips_through_recbole(tmp_path, clean_argv):
    from recbole_llm import create_dataset

    raw = tmp_path / "raw"
    fx.write_lcrec(raw)
    items = json.loads((raw / "Toy.item.json").read_text())
    items["0"]["title"] = '"Best" stapler 12" wide'
    (raw / "Toy.item.json").write_text(json.dumps(items))
    convert("lcrec", [raw], tmp_path / "data" / "toy")
    dataset = create_dataset(recbole_config("toy", tmp_path / "data"))
    row = dataset.token2id("item_id", "0")
    title = [dataset.field2id_token["title"][t] for t in dataset.item_feat["title"][row].tolist() if t]
    assert " ".join(title) == '"Best" stapler 12" wide'
    assert dataset.item_num - 1 == fx.N_ITEMS


# --------------------------------------------------------------------------------------------
# Processing


def test_clean_text():
    assert clean_text("Lab &amp;amp; <b>bold</b>\n\ttext  ") == "Lab & bold text"
    assert clean_text(["a <br/>b", "c"]) == "a b c"
    assert clean_text(None) == "" and clean_text(12.5) == "12.5"
    assert clean_text("one two three four", max_words=2) == "one two"


def test_kcore_is_iterative():
    # user 3 goes (1 item), then item 2 (1 user left), then user 2 (1 item left)
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 0, 1, 1, 2, 2])
    keep = kcore_mask(users, items, 2)
    assert set(zip(users[keep].tolist(), items[keep].tolist())) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert kcore_mask(users, items, 0).all()


def test_split_title():
    assert split_title("Usual Suspects, The (1995)") == ("The Usual Suspects", "1995")
    assert split_title("Toy Story (1995)") == ("Toy Story", "1995")
    assert split_title("Dekalog (1989)") == ("Dekalog", "1989")
    assert split_title("Fawlty Towers (1975-1979)") == ("Fawlty Towers", "1975")
    assert split_title("Hyena Road") == ("Hyena Road", "")


def test_raw_amazon_filters_and_orders(tmp_path):
    out = tmp_path / "data" / "toy"
    fx.write_amazon2023(tmp_path / "raw", drop_meta_of=3)
    result = convert("amazon2023", [tmp_path / "raw"], out, kcore=0)  # a folder (with a README) as input
    inter = read_atomic(out / "toy.inter")
    assert "B0PAR00003" not in set(inter["item_id"])  # no metadata
    assert not inter.duplicated(["user_id", "item_id", "timestamp"]).any()
    times = inter["timestamp"].astype(float)
    assert (inter["user_id"].groupby(inter["user_id"]).ngroup().diff().fillna(0) >= 0).all()
    for _, group in times.groupby(inter["user_id"]):
        assert group.is_monotonic_increasing
    assert float(inter["timestamp"][0]) % 1 == pytest.approx(0.123)  # milliseconds -> seconds
    assert any("metadata" in note for note in result.notes)
    kept = convert("amazon2023", fx.write_amazon2023(tmp_path / "raw2", drop_meta_of=3), tmp_path / "data" / "all",
                   kcore=0, drop_items_without_meta=False)
    assert kept.n_items == fx.N_ITEMS + 1


def test_kcore_default_and_option(tmp_path):
    inputs = fx.write_amazon2023(tmp_path / "raw")
    default = convert("amazon2023", inputs, tmp_path / "k5")
    assert (default.n_users, default.n_items) == (fx.N_USERS, fx.N_ITEMS)
    assert any("5-core" in note for note in default.notes)
    off = convert("amazon2023", inputs, tmp_path / "k0", kcore=0)
    assert (off.n_users, off.n_items) == (fx.N_USERS + 1, fx.N_ITEMS + 1)
    inter = read_atomic(tmp_path / "k5" / "k5.inter")
    assert inter.groupby("user_id").size().min() >= 5 and inter.groupby("item_id").size().min() >= 5


def test_movielens_item_text(tmp_path):
    convert("movielens", fx.write_movielens(tmp_path / "raw", "ml-1m"), tmp_path / "ml")
    item = read_atomic(tmp_path / "ml" / "ml.item").set_index("item_id")
    assert item.loc["2"].tolist() == ["The Usual Suspects", "1995", "Crime Thriller"]
    assert item.loc["10", "title"] == "Babe" and pd.isna(item.loc["10", "year"])
    assert item.loc["1", "genres"] == "Animation Children's Comedy"


def test_python_literal_meta_and_json_meta(tmp_path):
    for literal in (True, False):
        out = tmp_path / f"out{literal}"
        convert("amazon2018", fx.write_amazon2018(tmp_path / f"raw{literal}", python_literal_meta=literal), out)
        item = read_atomic(out / f"{out.name}.item").set_index("item_id")
        assert item.loc["0000000001", "title"] == "Ruler 1 cm"
        assert item.loc["0000000001", "categories"].startswith("Office Products")
        assert "<i>" not in item.loc["0000000001", "description"]


def test_benchmark_split_is_kept(tmp_path):
    out = tmp_path / "toy"
    convert("amazon2023", fx.write_amazon2023_benchmark(tmp_path / "raw"), out)
    test = read_atomic(out / "toy.test.inter")
    sequences = fx.sequences()
    assert list(test["item_id"]) == [f"B0PAR{seq[-1][0]:05d}" for seq in sequences.values()]
    assert list(test["item_id_list"]) == [" ".join(f"B0PAR{i:05d}" for i, _ in seq[:-1]) for seq in sequences.values()]


def test_benchmark_history_rebuilt_without_history_column(tmp_path):
    raw = tmp_path / "raw"
    paths = fx.write_amazon2023_benchmark(raw)
    for path in paths[:3]:  # drop the history column ("rating_only" variant)
        frame = pd.read_csv(path, dtype=str)
        frame.drop(columns="history").to_csv(path, index=False)
    convert("amazon2023", paths, tmp_path / "toy")
    valid = read_atomic(tmp_path / "toy" / "toy.valid.inter")
    seq = fx.sequences()[1]
    assert valid["item_id_list"][0] == " ".join(f"B0PAR{i:05d}" for i, _ in seq[:-2])


# --------------------------------------------------------------------------------------------
# Bad input


def test_malformed_lines_are_skipped_and_reported(tmp_path, capsys):
    inputs = fx.write_amazon2023(tmp_path / "raw", malformed=True)
    out = tmp_path / "toy"
    assert cli_main(["amazon2023", "--input", *map(str, inputs), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 malformed line(s) (line 4, 5)" in printed
    assert (out / "toy.inter").is_file()


def test_strict_fails_on_malformed_line(tmp_path, capsys):
    inputs = fx.write_amazon2023(tmp_path / "raw", malformed=True)
    out = tmp_path / "toy"
    assert cli_main(["amazon2023", "--input", *map(str, inputs), "--output", str(out), "--strict"]) == 2
    assert "line 4" in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob(".toy*"))  # no half-written folder either


def test_missing_required_field_names_field_and_line(tmp_path):
    inputs = fx.write_amazon2023(tmp_path / "raw")
    lines = gzip.open(inputs[0], "rt").read().splitlines()
    record = json.loads(lines[6])
    del record["user_id"]
    lines[6] = json.dumps(record)
    with gzip.open(inputs[0], "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=r"line 7: required field 'user_id' is missing"):
        convert("amazon2023", inputs, tmp_path / "toy")
    assert not (tmp_path / "toy").exists()


def test_empty_result_names_the_filter(tmp_path):
    inputs = fx.write_amazon2023(tmp_path / "raw")
    with pytest.raises(ConversionError, match="50-core"):
        convert("amazon2023", inputs, tmp_path / "toy", kcore=50)
    only_meta = tmp_path / "other"
    only_meta.mkdir()
    (only_meta / "meta_Toy.jsonl").write_text(json.dumps(fx.amazon2023_meta(999)) + "\n")
    with pytest.raises(ConversionError, match="without metadata"):
        convert("amazon2023", [inputs[0], only_meta / "meta_Toy.jsonl"], tmp_path / "toy")
    assert not (tmp_path / "toy").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    inputs = fx.write_lcrec(tmp_path / "raw")
    out = tmp_path / "toy"
    convert("lcrec", inputs, out)
    (out / "stale.txt").write_text("old")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert("lcrec", inputs, out)
    assert cli_main(["lcrec", "--input", str(inputs[0]), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    convert("lcrec", inputs, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "toy.inter").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "toy"]


def test_failed_run_keeps_previous_output(tmp_path):
    inputs = fx.write_lcrec(tmp_path / "raw")
    out = tmp_path / "toy"
    convert("lcrec", inputs, out)
    before = (out / "toy.inter").read_text()
    (tmp_path / "raw" / "Toy.inter.json").write_text('{"0": [0, 1,\n  ]')
    with pytest.raises(ConversionError, match=r"Toy.inter.json, line \d+"):
        convert("lcrec", inputs, out, overwrite=True)
    assert (out / "toy.inter").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "toy"]


def test_cli_module_entry_point(tmp_path):
    import subprocess

    inputs = fx.write_unisrec(tmp_path / "raw")
    out = tmp_path / "toy"
    done = subprocess.run(
        [sys.executable, "-m", "recbole_llm.convert", "unisrec", "--input", str(inputs[0]), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert "12 users, 10 items" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        ".recbole_llm_dataset.json", "toy.item", "toy.test.inter", "toy.train.inter", "toy.valid.inter", "toy.yaml"]


# --------------------------------------------------------------------------------------------
# Shared real data (skipped on a fresh machine)

needs_scientific = pytest.mark.skipif(not (SHARED_DATA / "amazon-scientific").is_dir(),
                                      reason="shared data amazon-scientific not available")
needs_office = pytest.mark.skipif(not (SHARED_DATA / "amazon-office").is_dir(),
                                  reason="shared data amazon-office not available")


def _upstream_targets(path: Path, items: dict, users: dict) -> list:
    frame = pd.read_csv(path, sep="\t", dtype=str)
    return list(zip(frame["user_id:token"].map(users), frame["item_id:token"].map(items)))


@needs_scientific
def test_scientific_matches_upstream_split(tmp_path, clean_argv):
    from recbole_llm import create_dataset

    source = SHARED_DATA / "amazon-scientific"
    result = convert("unisrec", [source], tmp_path / "Scientific")
    assert (result.n_users, result.n_items) == (8442, 4385)

    dataset = create_dataset(recbole_config("Scientific", tmp_path))
    assert (dataset.user_num - 1, dataset.item_num - 1) == (8442, 4385)
    _, valid, test = dataset.build()
    items = {v: k for k, v in (line.split("\t") for line in (source / "Scientific.item2index").read_text().split("\n") if line)}
    users = {v: k for k, v in (line.split("\t") for line in (source / "Scientific.user2index").read_text().split("\n") if line)}
    for part, upstream in (
        (valid, source / "Scientific.valid.inter"), (test, source / "Scientific.test.inter")
    ):
        ours = list(zip(
            dataset.id2token("user_id", part.inter_feat["user_id"].numpy()),
            dataset.id2token("item_id", part.inter_feat["item_id"].numpy()),
        ))
        assert ours == _upstream_targets(upstream, items, users)


def _recbole_targets(name: str, data_path: Path) -> tuple:
    """{user: target item} of the valid and test sets RecBole builds from a converted folder."""
    from recbole_llm import create_dataset

    dataset = create_dataset(recbole_config(name, data_path))
    _, valid, test = dataset.build()
    return tuple(
        dict(zip(dataset.id2token("user_id", part.inter_feat["user_id"].numpy()),
                 dataset.id2token("item_id", part.inter_feat["item_id"].numpy())))
        for part in (valid, test)
    )


@needs_office
def test_office_lcrec_matches_upstream(tmp_path, clean_argv):
    source = SHARED_DATA / "amazon-office"
    result = convert("lcrec", [source], tmp_path / "Office")
    assert (result.n_users, result.n_items, result.n_interactions) == (4905, 2420, 53258)
    valid, test = _recbole_targets("Office", tmp_path)
    sequences = json.loads((source / "Office.inter.json").read_text())
    assert valid == {user: str(items[-2]) for user, items in sequences.items()}
    assert test == {user: str(items[-1]) for user, items in sequences.items()}


@needs_office
def test_office_rechorus_matches_upstream(tmp_path, clean_argv):
    source = SHARED_DATA / "amazon-office"
    result = convert("rechorus", [source], tmp_path / "Office")
    assert (result.n_users, result.n_items, result.n_interactions) == (4905, 2420, 53258)
    asin = {v: k for k, v in (line.split("\t") for line in (source / "Office.item2index").read_text().split("\n") if line)}
    for ours, file in zip(_recbole_targets("Office", tmp_path), ("dev.csv", "test.csv")):
        upstream = pd.read_csv(source / file, sep="\t", dtype=str)
        assert ours == dict(zip(upstream["user_id"], upstream["item_id"].map(asin)))


# --------------------------------------------------------------------------------------------
# The multi-domain merge reads each source as RecBole does


def test_multi_domain_merge_matches_recbole_loading(tmp_path, clean_argv):
    from recbole_llm import create_dataset
    from recbole_llm.text.assemble import assemble_item_texts

    data = tmp_path / "data"
    convert("amazon2023", fx.write_amazon2023(tmp_path / "raw23"), data / "Raw")
    convert("unisrec", fx.write_unisrec(tmp_path / "rawuni"), data / "Split")
    result = convert("multi_domain", [data / "Raw", data / "Split"], data / "Mixed")
    inter = read_atomic(data / "Mixed" / "Mixed.inter")
    items = read_atomic(data / "Mixed" / "Mixed.item").fillna("")
    merged_text = dict(zip(items["item_id"], items["text"]))
    assert result.n_interactions == len(inter)
    for name in ("Raw", "Split"):
        config = recbole_config(name, data)
        dataset = create_dataset(config)
        tokens = dataset.field2id_token[dataset.iid_field]
        texts = assemble_item_texts(dataset, config["text_fields"])
        assert {f"{name}/{t}": x for t, x in zip(tokens[1:], texts[1:])} == {
            k: v for k, v in merged_text.items() if k.startswith(f"{name}/")}
        if name == "Raw":  # plain files: every interaction, each user's in time order
            frame = dataset.inter_feat
            user_ids, item_ids = np.asarray(frame[dataset.uid_field]), np.asarray(frame[dataset.iid_field])
            order = np.lexsort((np.asarray(frame[dataset.time_field]), user_ids))
            users = dataset.field2id_token[dataset.uid_field]
            expected = {}
            for row in order:
                expected.setdefault(f"{name}/{users[user_ids[row]]}", []).append(f"{name}/{tokens[item_ids[row]]}")
            mine = inter[inter["user_id"].str.startswith(f"{name}/")]
            got = {user: list(group["item_id"]) for user, group in mine.groupby("user_id", sort=False)}
            assert got == expected
