"""Shared fixtures: clean argv for RecBole's Config, tiny model sizes, a small ml-100k slice."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECBOLE_LLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Tiny sizes that keep one epoch of a Transformer model to seconds on 2 CPU cores.
TINY_SEQUENTIAL = {
    "epochs": 1,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "MAX_ITEM_LIST_LENGTH": 20,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "show_progress": False,
    "state": "ERROR",
    "seed": 2020,
}


@pytest.fixture(autouse=True)
def clean_argv(monkeypatch, tmp_path):
    """RecBole's own Config reads --key=value from sys.argv (the plugin's never does): pytest's
    flags must not reach one built by RecBole code.

    Also runs each test in its own folder, where RecBole writes its log/ and saved/ folders.
    """
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    monkeypatch.chdir(tmp_path)


def _ml100k_source() -> Path:
    import recbole

    return Path(recbole.__file__).parent / "dataset_example" / "ml-100k"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: tiny tensors run far faster without thread hand-offs on 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ml100k_slice(tmp_path_factory):
    """ml-100k restricted to its first 120 users (and the items they rated), as a new dataset.

    Returns a config dict (data_path, dataset, load_col, text_fields, checkpoint_dir, cache_dir)
    to merge into a test's config_dict.
    """
    name = "ml-100k-slice"
    root = tmp_path_factory.mktemp("data")
    folder = root / name
    folder.mkdir()
    source = _ml100k_source()
    lines = (source / "ml-100k.inter").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    kept = [row for row in rows if int(row.split("\t")[0]) <= 120]
    items = {row.split("\t")[1] for row in kept}
    (folder / f"{name}.inter").write_text("\n".join([header] + kept) + "\n", encoding="utf-8")
    item_lines = (source / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    item_rows = [row for row in item_lines[1:] if row.split("\t")[0] in items]
    (folder / f"{name}.item").write_text("\n".join([item_lines[0]] + item_rows) + "\n", encoding="utf-8")
    work = tmp_path_factory.mktemp("work")
    return {
        "data_path": str(root),
        "dataset": name,
        "load_col": {
            "inter": ["user_id", "item_id", "rating", "timestamp"],
            "item": ["item_id", "movie_title", "release_year", "class"],
        },
        "text_fields": ["movie_title", "release_year", "class"],
        "checkpoint_dir": str(work / "saved"),
        "cache_dir": str(work / "cache"),
    }


@pytest.fixture
def tiny_config(ml100k_slice):
    """Config dict for a one-epoch run on the ml-100k slice with tiny sizes."""
    return {**TINY_SEQUENTIAL, **ml100k_slice}


# Item-like texts for tiny language models (SAID's stage-1 tests reconstruct these).
LM_SAMPLE_TEXTS = [
    "",
    "Digital multimeter with test leads. Industrial & Scientific. Fluke.",
    "Nitrile gloves, powder free, box of 100. Lab supplies.",
    "Safety goggles with anti fog coating. Lab supplies. 3M.",
    "Stainless steel tweezers set. Tools. Generic.",
    "Glass beakers, 250 ml, pack of 6. Lab supplies.",
    "Toy Story (1995). Animation Children's Comedy.",
    "GoldenEye (1995). Action Adventure Thriller.",
    "Four Rooms (1995). Thriller.",
]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A random 2-layer Llama with a word-level tokenizer (ml-100k titles and the sample texts),
    saved as a local Hugging Face folder."""
    from tiny_llm import save_tiny_llama

    corpus = LM_SAMPLE_TEXTS + (_ml100k_source() / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), corpus, max_position_embeddings=128,
                           initializer_range=0.5)


# Tiny UniSAR sizes (tests/test_unisar.py, tests/test_ray_families.py)
TINY_UNISAR = {
    "hidden_size": 16, "inner_size": 32, "n_heads": 2, "n_layers": 1, "history_length": 4, "expert_size": 16,
    "tower_sizes": [16], "n_shared_experts": 2, "n_task_experts": 2, "epochs": 1, "train_batch_size": 64,
    "eval_batch_size": 64, "show_progress": False, "state": "ERROR", "seed": 2020,
}


@pytest.fixture
def search_data(ml100k_slice, tmp_path) -> dict:
    """The ml-100k slice (40 users, 15 ratings each) made semi-synthetic search data by genre."""
    from recbole_llm.convert import convert

    source = Path(ml100k_slice["data_path"]) / ml100k_slice["dataset"]
    folder = tmp_path / "raw" / "ml-small"
    folder.mkdir(parents=True)
    lines = (source / f"{source.name}.inter").read_text(encoding="utf-8").splitlines()
    per_user: dict = {}
    for row in lines[1:]:
        user = int(row.split("\t")[0])
        if user <= 40 and len(per_user.setdefault(user, [])) < 15:
            per_user[user].append(row)
    rows = [row for user in sorted(per_user) for row in per_user[user]]
    (folder / "ml-small.inter").write_text("\n".join([lines[0]] + rows) + "\n", encoding="utf-8")
    (folder / "ml-small.item").write_text((source / f"{source.name}.item").read_text(encoding="utf-8"), encoding="utf-8")
    output = tmp_path / "dataset" / "MLSearch"
    convert("amazon_search", [folder], output, search_ratio=0.5, category_field="class", title_field="movie_title")
    return {"config_file": str(output / "MLSearch.yaml"), "folder": output,
            "config_dict": {**TINY_UNISAR, "checkpoint_dir": ml100k_slice["checkpoint_dir"]}}
