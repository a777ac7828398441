"""KuaiSAR (Kuaishou search and recommendation logs, v2) -> UniSAR's mixed-behaviour atomic files.

Reads ``rec_inter.csv`` (positives: ``click == 1``), ``src_inter.csv`` (one search session = the
rows of one ``search_session_id``; its clicked items are the rows with ``click_cnt > 0`` whose
``item_type`` also exists on the recommendation side, VIDEO and IMAGE_ATLAS) and, when present,
``item_features.csv`` (``caption``: item text word ids, which share the anonymised vocabulary of
the query ``keyword`` ids). Search sessions without such a click carry no target and are dropped
(about 40% of them). Timestamps are converted from milliseconds to seconds. Users with fewer than
``min_user_events`` events are dropped.

Usage: ``python -m recbole_llm.convert kuaisar --input /path/to/KuaiSAR_v2 --output dataset/KuaiSAR``
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Dict, List

import pandas as pd

from recbole_llm.data.search_dataset import write_search_dataset

CLICKABLE_TYPES = ("VIDEO", "IMAGE_ATLAS")
NOTE = "KuaiSAR search and recommendation logs converted by recbole_llm.convert.kuaisar (source: {source})."


def parse_word_ids(value) -> List[str]:
    """Word ids written like "[20, 34, 3]" (or a bare number) as tokens; [] for empty/missing."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    text = str(value).strip()
    if not text or text in ("[]", "0", "empty"):
        return []
    parsed = ast.literal_eval(text) if text.startswith("[") else [text]
    return [str(int(word)) for word in parsed if str(word).strip() not in ("", "0")]


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"KuaiSAR file {path} is missing (expected rec_inter.csv and src_inter.csv)")
    return path


def _rec_events(folder: Path) -> pd.DataFrame:
    rec = pd.read_csv(_require(folder, "rec_inter.csv"), usecols=["user_id", "item_id", "timestamp", "click"])
    rec = rec[rec["click"] == 1]
    return pd.DataFrame({
        "user": rec["user_id"].astype(str), "item": rec["item_id"].astype(str),
        "time": rec["timestamp"].astype(float) / 1000.0, "behavior": "rec",
        "query": [[] for _ in range(len(rec))], "clicks": [[] for _ in range(len(rec))],
    })


def _search_events(folder: Path) -> pd.DataFrame:
    columns = ["user_id", "search_session_id", "search_session_timestamp", "keyword", "item_id", "click_cnt", "item_type"]
    src = pd.read_csv(_require(folder, "src_inter.csv"), usecols=columns)
    clicked = src[(src["click_cnt"] > 0) & src["item_type"].isin(CLICKABLE_TYPES)]
    sessions = clicked.groupby("search_session_id", sort=False).agg(
        user=("user_id", "first"), time=("search_session_timestamp", "first"),
        keyword=("keyword", "first"), clicks=("item_id", lambda items: [str(i) for i in dict.fromkeys(items)]),
    )
    return pd.DataFrame({
        "user": sessions["user"].astype(str).to_numpy(), "item": [c[0] for c in sessions["clicks"]],
        "time": sessions["time"].astype(float).to_numpy() / 1000.0, "behavior": "search",
        "query": [parse_word_ids(k) for k in sessions["keyword"]], "clicks": list(sessions["clicks"]),
    })


def _item_words(folder: Path, items) -> Dict[str, List[str]]:
    words = {str(item): [] for item in items}
    path = folder / "item_features.csv"
    if path.is_file():
        features = pd.read_csv(path, usecols=["item_id", "caption"])
        for item, caption in zip(features["item_id"].astype(str), features["caption"]):
            if item in words:
                words[item] = parse_word_ids(caption)
    return words


def convert(input_paths, output_dir, min_user_events: int = 5) -> Path:
    """Convert one KuaiSAR folder; return the output folder."""
    folder = Path(input_paths[0] if isinstance(input_paths, (list, tuple)) else input_paths)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    events = pd.concat([_rec_events(folder), _search_events(folder)], ignore_index=True)
    counts = events["user"].map(events["user"].value_counts())
    events = events[counts >= min_user_events].sort_values(["user", "time"], kind="stable")
    if events.empty:
        raise ValueError(f"no user of {folder} has {min_user_events} or more events; lower min_user_events")
    items = set(events["item"]) | {c for clicks in events["clicks"] for c in clicks}
    rows = zip(events["user"], events["item"], events["time"], events["behavior"], events["query"], events["clicks"])
    output_dir = Path(output_dir)
    write_search_dataset(output_dir, list(rows), _item_words(folder, items), NOTE.format(source=folder),
                         {"semi_synthetic": False})
    return output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="KuaiSAR folder with rec_inter.csv and src_inter.csv")
    parser.add_argument("--output", required=True, help="output folder; its name is the dataset name")
    parser.add_argument("--min-user-events", type=int, default=5, help="drop users with fewer events")


def run(args: argparse.Namespace) -> Path:
    return convert(args.input, args.output, min_user_events=args.min_user_events)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    print(run(_parser.parse_args()))
