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

import re
from pathlib import Path
from typing import Dict, List, Sequence

import pandas as pd

from recbole_llm.convert.core import ConversionError, ConversionResult, Options, open_binary
from recbole_llm.convert.search import write_search_dataset

FORMAT = "kuaisar"
CLICKABLE_TYPES = ("VIDEO", "IMAGE_ATLAS")
NOTE = "KuaiSAR search and recommendation logs converted by recbole_llm.convert.kuaisar (source: {source})."
_WORD_LIST = re.compile(r"^\[\s*(?:\d+\s*(?:,\s*\d+\s*)*)?\]$")
#: Longest word-id list accepted (characters): captions and queries are short.
MAX_WORD_LIST_CHARS = 100_000


def parse_word_ids(value, where: str = "KuaiSAR") -> List[str]:
    """Word ids written like "[20, 34, 3]" (or a bare number) as tokens; [] for empty/missing.

    Parsed with a pattern, never evaluated; anything else raises naming ``where``.
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    text = str(value).strip()
    if not text or text in ("[]", "0", "empty"):
        return []
    if text.isdigit():
        return [text]
    if len(text) > MAX_WORD_LIST_CHARS or not _WORD_LIST.match(text):
        raise ConversionError(f"{where}: expected a list of word ids like [20, 34, 3], found {text[:80]!r}")
    return [str(int(word)) for word in re.findall(r"\d+", text) if int(word) != 0]


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ConversionError(f"KuaiSAR file {path} is missing (expected rec_inter.csv and src_inter.csv)")
    return path


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    with open_binary(path) as handle:
        try:
            return pd.read_csv(handle, usecols=list(columns))
        except (ValueError, pd.errors.ParserError) as err:
            raise ConversionError(f"{path}: {err} (expected the columns {', '.join(columns)})") from None


def _rec_events(folder: Path) -> pd.DataFrame:
    rec = _read_csv(_require(folder, "rec_inter.csv"), ["user_id", "item_id", "timestamp", "click"])
    rec = rec[rec["click"] == 1]
    return pd.DataFrame({
        "user": rec["user_id"].astype(str), "item": rec["item_id"].astype(str),
        "time": rec["timestamp"].astype(float) / 1000.0, "behavior": "rec",
        "query": [[] for _ in range(len(rec))], "clicks": [[] for _ in range(len(rec))],
    })


def _search_events(folder: Path) -> pd.DataFrame:
    columns = ["user_id", "search_session_id", "search_session_timestamp", "keyword", "item_id", "click_cnt", "item_type"]
    path = _require(folder, "src_inter.csv")
    src = _read_csv(path, columns)
    clicked = src[(src["click_cnt"] > 0) & src["item_type"].isin(CLICKABLE_TYPES)]
    sessions = clicked.groupby("search_session_id", sort=False).agg(
        user=("user_id", "first"), time=("search_session_timestamp", "first"),
        keyword=("keyword", "first"), clicks=("item_id", lambda items: [str(i) for i in dict.fromkeys(items)]),
    )
    return pd.DataFrame({
        "user": sessions["user"].astype(str).to_numpy(), "item": [c[0] for c in sessions["clicks"]],
        "time": sessions["time"].astype(float).to_numpy() / 1000.0, "behavior": "search",
        "query": [parse_word_ids(k, f"{path}, keyword") for k in sessions["keyword"]],
        "clicks": list(sessions["clicks"]),
    })


def _item_words(folder: Path, items) -> Dict[str, List[str]]:
    words = {str(item): [] for item in items}
    path = folder / "item_features.csv"
    if path.is_file():
        features = _read_csv(path, ["item_id", "caption"])
        for item, caption in zip(features["item_id"].astype(str), features["caption"]):
            if item in words:
                words[item] = parse_word_ids(caption, f"{path}, caption of item {item}")
    return words


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    parser.add_argument("--min-user-events", dest="min_user_events", type=int, metavar="N",
                        help="drop users with fewer events (default 5)")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Convert one KuaiSAR folder."""
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        raise ConversionError(f"kuaisar reads one folder holding rec_inter.csv and src_inter.csv, got {', '.join(map(str, inputs))}")
    folder = Path(inputs[0])
    events = pd.concat([_rec_events(folder), _search_events(folder)], ignore_index=True)
    counts = events["user"].map(events["user"].value_counts())
    kept = events[counts >= options.min_user_events].sort_values(["user", "time"], kind="stable")
    if kept.empty:
        raise ConversionError(f"no user of {folder} has {options.min_user_events} or more events; lower --min-user-events")
    notes = []
    if len(kept) < len(events):
        notes.append(f"users with fewer than {options.min_user_events} events: removed {len(events) - len(kept)} "
                     f"of {len(events)} events")
    items = set(kept["item"]) | {c for clicks in kept["clicks"] for c in clicks}
    rows = zip(kept["user"], kept["item"], kept["time"], kept["behavior"], kept["query"], kept["clicks"])
    return write_search_dataset(output, options, FORMAT, list(rows), _item_words(folder, items),
                                NOTE.format(source=folder), {"semi_synthetic": False}, notes)
