"""SEMI-SYNTHETIC search data for Amazon review sets (the way UniSAR built its Amazon data).

Amazon has no search logs. Following Ai et al. (SIGIR'17, "Learning a Hierarchical Embedding
Model for Personalized Product Search"), the query of a purchase is made from the purchased
item's category path: the words of its category levels, lower-cased, stopwords and duplicate
words removed (a top level shared by every item is dropped, as it says nothing). A seeded
fraction ``search_ratio`` of each user's interactions becomes a search session (that query, the
item as its one clicked item); the rest stay recommendation events. The output's yaml and this
module say plainly that the search behaviour is synthetic.

Inputs (a folder):
- LC-Rec json (``<Name>.inter.json`` ``{"uid": [iid, ...]}`` in time order, ``<Name>.item.json``
  with ``title`` and ``categories``), e.g. ../shared/data/amazon-office. There are no
  timestamps: the position in the sequence is used as time.
- a converted RecBole folder (``<Name>.inter`` with user_id, item_id, timestamp; ``<Name>.item``
  with a category field, ``--category-field``, and a title field, ``--title-field``).

Usage: ``python -m recbole_llm.convert amazon_search --input ../shared/data/amazon-office --output dataset/OfficeSearch``
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from recbole_llm.data.search_dataset import write_search_dataset

STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or that the their this "
    "to with without other others more misc miscellaneous amp etc".split()
)

SEMI_SYNTHETIC_NOTE = """SEMI-SYNTHETIC search data: the search sessions are NOT real user searches.
Each query was generated from the clicked item's category path (Ai et al., SIGIR'17), and a seeded
fraction of the interactions was relabelled as searches (recbole_llm.convert.amazon_search).
Source: {source}; search_ratio={ratio}; seed={seed}."""


def words_of(text: str) -> List[str]:
    """Lower-cased alphanumeric words of ``text``, stopwords and repeats removed, order kept."""
    seen: List[str] = []
    for word in re.findall(r"[a-z0-9]+", html.unescape(text).lower()):
        if word not in STOPWORDS and word not in seen:
            seen.append(word)
    return seen


def category_query(levels: Sequence[str]) -> List[str]:
    """The query for an item with this category path (root first): its words, de-duplicated."""
    return words_of(" ".join(levels))


def _category_levels(value) -> List[List[str]]:
    """Category paths of one item: LC-Rec "A, B, C", a 2018 list, or a 2014 list of lists."""
    if not value:
        return []
    if isinstance(value, str):
        return [[level.strip() for level in value.split(",") if level.strip()]]
    if all(isinstance(level, str) for level in value):
        return [list(value)]
    return [list(path) for path in value if path]


def _drop_shared_root(paths: Dict[str, List[List[str]]]) -> Dict[str, List[List[str]]]:
    roots = {path[0] for item_paths in paths.values() for path in item_paths}
    if len(roots) != 1:
        return paths
    return {item: [path[1:] for path in item_paths if len(path) > 1] for item, item_paths in paths.items()}


def _read_lcrec(folder: Path) -> Tuple[List[Tuple[str, str, float]], Dict[str, dict]]:
    inter_files = sorted(folder.glob("*.inter.json"))
    item_files = sorted(folder.glob("*.item.json"))
    if not inter_files or not item_files:
        raise FileNotFoundError(f"{folder} holds no <Name>.inter.json / <Name>.item.json pair")
    sequences = json.loads(inter_files[0].read_text(encoding="utf-8"))
    items = json.loads(item_files[0].read_text(encoding="utf-8"))
    interactions = [
        (str(user), str(item), float(position))
        for user in sorted(sequences, key=lambda u: (len(u), u))
        for position, item in enumerate(sequences[user])
    ]
    meta = {str(k): {"title": v.get("title") or "", "categories": v.get("categories")} for k, v in items.items()}
    return interactions, meta


def _read_atomic(folder: Path, category_field: str, title_field: str) -> Tuple[List[Tuple[str, str, float]], Dict[str, dict]]:
    name = folder.name
    inter_file, item_file = folder / f"{name}.inter", folder / f"{name}.item"
    for file in (inter_file, item_file):
        if not file.is_file():
            raise FileNotFoundError(f"expected the atomic file {file}")
    interactions = []
    with open(inter_file, encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [column.split(":")[0] for column in next(reader)]
        for column in ("user_id", "item_id", "timestamp"):
            if column not in header:
                raise ValueError(f"{inter_file} has no {column!r} column (header: {header})")
        u, i, t = (header.index(c) for c in ("user_id", "item_id", "timestamp"))
        interactions = [(row[u], row[i], float(row[t])) for row in reader]
    meta = {}
    with open(item_file, encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [column.split(":")[0] for column in next(reader)]
        if category_field not in header:
            raise ValueError(f"{item_file} has no category field {category_field!r} (header: {header}); set --category-field")
        c, i = header.index(category_field), header.index("item_id")
        title = header.index(title_field) if title_field in header else None
        for row in reader:
            meta[row[i]] = {"title": row[title] if title is not None else "", "categories": [row[c]]}
    return interactions, meta


def convert(input_paths, output_dir, search_ratio: float = 0.5, seed: int = 2020,
            max_title_words: int = 32, category_field: str = "categories", title_field: str = "title") -> Path:
    """Write the semi-synthetic mixed-behaviour dataset for one Amazon folder; return its path."""
    folder = Path(input_paths[0] if isinstance(input_paths, (list, tuple)) else input_paths)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    if not 0.0 <= search_ratio <= 1.0:
        raise ValueError(f"search_ratio must lie in [0, 1], got {search_ratio}")
    if list(folder.glob("*.inter.json")):
        interactions, meta = _read_lcrec(folder)
    else:
        interactions, meta = _read_atomic(folder, category_field, title_field)
    paths = _drop_shared_root({item: _category_levels(m["categories"]) for item, m in meta.items()})
    rng = np.random.default_rng(seed)
    events = []
    for user, item, time in interactions:
        queries = [category_query(path) for path in paths.get(item, [])]
        queries = [q for q in queries if q]
        draw = rng.random()
        if queries and draw < search_ratio:
            query = queries[int(rng.integers(len(queries)))]
            events.append((user, item, time, "search", query, [item]))
        else:
            events.append((user, item, time, "rec", [], []))
    item_words = {item: words_of(m["title"])[:max_title_words] for item, m in meta.items()}
    output_dir = Path(output_dir)
    note = SEMI_SYNTHETIC_NOTE.format(source=folder, ratio=search_ratio, seed=seed)
    extra = {"semi_synthetic": True, "search_data_note": " ".join(note.split())}
    write_search_dataset(output_dir, events, item_words, note, extra)
    return output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="LC-Rec json folder or converted RecBole folder")
    parser.add_argument("--output", required=True, help="output folder; its name is the dataset name")
    parser.add_argument("--search-ratio", type=float, default=0.5, help="share of interactions made searches")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the search/rec assignment")
    parser.add_argument("--max-title-words", type=int, default=32, help="item text tokens kept per item")
    parser.add_argument("--category-field", default="categories", help="category field of a RecBole .item file")
    parser.add_argument("--title-field", default="title", help="title field of a RecBole .item file")


def run(args: argparse.Namespace) -> Path:
    return convert(
        args.input, args.output, search_ratio=args.search_ratio, seed=args.seed,
        max_title_words=args.max_title_words, category_field=args.category_field, title_field=args.title_field,
    )


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    print(run(_parser.parse_args()))
