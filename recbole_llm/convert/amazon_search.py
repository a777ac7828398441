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

import html
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from recbole_llm.convert.core import ConversionError, ConversionResult, Options, read_atomic_file
from recbole_llm.convert.lcrec import load_json
from recbole_llm.convert.search import write_search_dataset

FORMAT = "amazon_search"

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
        raise ConversionError(f"{folder} holds no <Name>.inter.json / <Name>.item.json pair")
    sequences = load_json(inter_files[0])
    items = load_json(item_files[0])
    if not isinstance(sequences, dict) or not isinstance(items, dict):
        raise ConversionError(f"{folder}: expected objects {{user: [item, ...]}} and {{item: {{title, categories}}}}")
    interactions = [
        (str(user), str(item), float(position))
        for user in sorted(sequences, key=lambda u: (len(u), u))
        for position, item in enumerate(sequences[user])
    ]
    bad = [k for k, v in items.items() if not isinstance(v, dict)]
    if bad:
        raise ConversionError(f"{item_files[0]}: item {bad[0]!r}: expected an object with title and categories")
    meta = {str(k): {"title": v.get("title") or "", "categories": v.get("categories")} for k, v in items.items()}
    return interactions, meta


def _read_atomic(folder: Path, category_field: str, title_field: str) -> Tuple[List[Tuple[str, str, float]], Dict[str, dict]]:
    name = folder.name
    inter_file, item_file = folder / f"{name}.inter", folder / f"{name}.item"
    for file in (inter_file, item_file):
        if not file.is_file():
            raise ConversionError(f"expected the atomic file {file}")
    inter, types = read_atomic_file(inter_file)
    for column in ("user_id", "item_id", "timestamp"):
        if column not in types:
            raise ConversionError(f"{inter_file} has no {column!r} column (header: {list(types)})")
    try:
        times = inter["timestamp"].astype(float)
    except ValueError as err:
        raise ConversionError(f"{inter_file}: field 'timestamp' is not a number ({err})") from None
    interactions = list(zip(inter["user_id"], inter["item_id"], times))
    items, item_types = read_atomic_file(item_file)
    if category_field not in item_types:
        raise ConversionError(f"{item_file} has no category field {category_field!r} (header: {list(item_types)}); "
                              "set --category-field")
    titles = items[title_field] if title_field in item_types else [""] * len(items)
    meta = {item: {"title": title, "categories": [category]}
            for item, title, category in zip(items["item_id"], titles, items[category_field])}
    return interactions, meta


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    parser.add_argument("--search-ratio", dest="search_ratio", type=float,
                        help="share of interactions made searches (default 0.5)")
    parser.add_argument("--seed", type=int, help="seed of the search/rec assignment (default 2020)")
    parser.add_argument("--max-title-words", dest="max_title_words", type=int,
                        help="item text tokens kept per item (default 32)")
    parser.add_argument("--category-field", dest="category_field",
                        help="category field of a RecBole .item file (default categories)")
    parser.add_argument("--title-field", dest="title_field", help="title field of a RecBole .item file (default title)")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Write the semi-synthetic mixed-behaviour dataset for one Amazon folder."""
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        raise ConversionError(f"amazon_search reads one folder (LC-Rec json or a converted dataset), got "
                              f"{', '.join(map(str, inputs))}")
    folder = Path(inputs[0])
    ratio, seed = options.search_ratio, options.seed
    if not 0.0 <= ratio <= 1.0:
        raise ConversionError(f"--search-ratio must lie in [0, 1], got {ratio}")
    if list(folder.glob("*.inter.json")):
        interactions, meta = _read_lcrec(folder)
    else:
        interactions, meta = _read_atomic(folder, options.category_field, options.title_field)
    paths = _drop_shared_root({item: _category_levels(m["categories"]) for item, m in meta.items()})
    rng = np.random.default_rng(seed)
    events = []
    for user, item, time in interactions:
        queries = [category_query(path) for path in paths.get(item, [])]
        queries = [q for q in queries if q]
        draw = rng.random()
        if queries and draw < ratio:
            query = queries[int(rng.integers(len(queries)))]
            events.append((user, item, time, "search", query, [item]))
        else:
            events.append((user, item, time, "rec", [], []))
    item_words = {item: words_of(m["title"])[:options.max_title_words] for item, m in meta.items()}
    note = SEMI_SYNTHETIC_NOTE.format(source=folder, ratio=ratio, seed=seed)
    extra = {"semi_synthetic": True, "search_data_note": " ".join(note.split())}
    return write_search_dataset(output, options, FORMAT, events, item_words, note, extra)
