"""Amazon Reviews 2023 (McAuley lab, https://amazon-reviews-2023.github.io).

Raw data: ``<Category>.jsonl[.gz]`` reviews (``rating``, ``title``, ``text``, ``asin``,
``parent_asin``, ``user_id``, ``timestamp`` in milliseconds, ``verified_purchase``,
``helpful_vote``) and ``meta_<Category>.jsonl[.gz]`` (``parent_asin``, ``title``, ``features``,
``description``, ``categories``, ``store``, ``details``, ``price``, ``main_category``). Items
are products, keyed by ``parent_asin``; timestamps are written in seconds. A file whose
timestamps are all below 1e11 (already seconds: 1e11 ms is 1973) is read as seconds, with a
warning; a file mixing both units is refused.

Published benchmark splits: ``<Category>.train/.valid/.test.csv[.gz]`` with
``user_id,parent_asin,rating,timestamp[,history]`` (e.g. ``5core/last_out_w_his``) are kept as
RecBole benchmark files, so the split is exactly the published one.
"""
from __future__ import annotations

import csv
from collections import defaultdict
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_llm.convert.core import (
    BENCHMARK_PARTS,
    RAW_TEXT_LEN,
    BadLines,
    ConversionError,
    ConversionResult,
    InteractionLog,
    ItemText,
    Options,
    add_processing_arguments,
    as_float,
    benchmark_frame,
    expand_inputs,
    is_json_lines,
    item_frame,
    iter_records,
    open_text,
    required,
    write_dataset,
    write_interaction_dataset,
)

FORMAT = "amazon2023"
DEFAULT_KCORE = 5
TEXT_FIELDS = ("title", "brand", "categories", "features", "description")
BENCHMARK_COLUMNS = ("user_id", "parent_asin", "timestamp")
#: Millisecond timestamps of real reviews are above this; second timestamps are far below it.
SECONDS_BELOW = 1e11
logger = logging.getLogger(__name__)


def milliseconds_to_seconds(values: np.ndarray, path: Path) -> Optional[str]:
    """Turn one file's millisecond timestamps into seconds, in place.

    Timestamps that are already seconds (all below :data:`SECONDS_BELOW`) are kept and a note
    says so; a file mixing both units raises.
    """
    small = values < SECONDS_BELOW
    if not len(values) or not small.any():
        values /= 1000.0
        return None
    if not small.all():
        raise ConversionError(
            f"{path}: timestamps mix seconds and milliseconds (e.g. {values[small][0]:.0f} and "
            f"{values[~small][0]:.0f}); Amazon 2023 gives milliseconds")
    note = f"{path}: timestamps are in seconds, not milliseconds as Amazon 2023 gives them: read as seconds"
    logger.warning(note)
    return note


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    add_processing_arguments(parser, "kcore", "drop_items_without_meta", "dedupe", "max_text_len", "max_history")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Convert raw reviews + meta, or the published benchmark csv splits + meta."""
    files = expand_inputs(inputs)
    meta = [f for f in files if f.name.startswith("meta_") and is_json_lines(f)]
    splits = [f for f in files if f not in meta and _is_csv(f)]
    reviews = [f for f in files if f not in meta and is_json_lines(f)]
    if not meta:
        raise ConversionError("amazon2023 needs the item metadata: pass the meta_<Category>.jsonl[.gz] file too")
    if splits:
        if reviews:
            raise ConversionError(f"pass either review files or benchmark csv splits, not both: {reviews[0]}")
        return _convert_benchmark(splits, meta, output, options)
    if not reviews:
        raise ConversionError("amazon2023 needs the review file <Category>.jsonl[.gz] (or benchmark csv splits)")
    return _convert_reviews(reviews, meta, output, options)


def _is_csv(path: Path) -> bool:
    return path.name.endswith(".csv") or path.name.endswith(".csv.gz")


def _meta_text(record: dict) -> Dict[str, object]:
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    brand = record.get("store") or details.get("Brand") or details.get("brand")
    return {
        "title": record.get("title"),
        "brand": brand,
        "categories": record.get("categories") or record.get("main_category"),
        "features": record.get("features"),
        "description": record.get("description"),
    }


def _read_meta(meta: Sequence[Path], item_ids: Dict[str, int], text: ItemText, options: Options, notes: List[str]) -> None:
    for path in meta:
        bad = BadLines(path)
        for lineno, record in iter_records(path, bad, options.strict):
            code = item_ids.get(required(record, "parent_asin", path, lineno))
            if code is not None:
                text.set(code, **_meta_text(record))
        if bad.note():
            notes.append(bad.note())


def _convert_reviews(reviews: Sequence[Path], meta: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    log = InteractionLog()
    notes: List[str] = []
    for path in reviews:
        bad = BadLines(path)
        add = log.add
        start = len(log)
        for lineno, record in iter_records(path, bad, options.strict):
            add(
                str(required(record, "user_id", path, lineno)),
                str(required(record, "parent_asin", path, lineno)),
                as_float(required(record, "rating", path, lineno), "rating", path, lineno),
                as_float(required(record, "timestamp", path, lineno), "timestamp", path, lineno),
            )
        unit_note = milliseconds_to_seconds(np.frombuffer(log.times, dtype=np.float64)[start:], path)
        notes += [note for note in (bad.note(), unit_note) if note]
    text = ItemText(TEXT_FIELDS, options.text_limit(RAW_TEXT_LEN))
    _read_meta(meta, log.item_ids, text, options, notes)
    return write_interaction_dataset(log, text, output, options, FORMAT, DEFAULT_KCORE, notes)


def _split_part(path: Path) -> str:
    words = path.name.lower().replace("_", ".").replace("-", ".").split(".")
    parts = [part for part in BENCHMARK_PARTS if part in words]
    if len(parts) != 1:
        raise ConversionError(f"{path}: cannot tell which split this is (its name should hold train, valid or test)")
    return parts[0]


def _read_split(path: Path, notes: List[str]) -> List[Tuple[str, str, float, float, List[str] | None]]:
    rows = []
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ConversionError(f"{path}: empty file")
        column = {name.strip(): i for i, name in enumerate(header)}
        for name in BENCHMARK_COLUMNS:
            if name not in column:
                raise ConversionError(f"{path}, line 1: required column {name!r} is missing from the header")
        u, i, t = (column[name] for name in BENCHMARK_COLUMNS)
        r, h = column.get("rating"), column.get("history")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ConversionError(f"{path}, line {lineno}: {len(row)} columns, the header has {len(header)}")
            for name, index in zip(BENCHMARK_COLUMNS, (u, i, t)):
                if not row[index]:
                    raise ConversionError(f"{path}, line {lineno}: required field {name!r} is empty")
            rating = as_float(row[r], "rating", path, lineno) if r is not None and row[r] else float("nan")
            history = row[h].split() if h is not None else None
            rows.append((row[u], row[i], rating, as_float(row[t], "timestamp", path, lineno), history))
    times = np.array([row[3] for row in rows], dtype=np.float64)
    unit_note = milliseconds_to_seconds(times, path)
    if unit_note:
        notes.append(unit_note)
    return [(u, i, r, float(t), h) for (u, i, r, _, h), t in zip(rows, times)]


def _convert_benchmark(splits: Sequence[Path], meta: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    by_part: Dict[str, Path] = {}
    for path in splits:
        part = _split_part(path)
        if part in by_part:
            raise ConversionError(f"two {part} splits given: {by_part[part]} and {path}")
        by_part[part] = path
    missing = [part for part in BENCHMARK_PARTS if part not in by_part]
    if missing:
        raise ConversionError(f"benchmark splits missing: {', '.join(missing)}")
    if options.kcore:
        raise ConversionError("--kcore applies to raw reviews; the benchmark splits are kept as published")
    notes: List[str] = []
    rows = {part: _read_split(by_part[part], notes) for part in BENCHMARK_PARTS}
    has_history = all(row[4] is not None for part in rows.values() for row in part)
    if not has_history:
        _rebuild_histories(rows)

    frames = {}
    for part in BENCHMARK_PARTS:
        kept = [row for row in rows[part] if row[4]]
        if len(kept) < len(rows[part]):
            notes.append(f"{part}: {len(rows[part]) - len(kept)} row(s) with an empty history (a user's first "
                         "item) serve only as history, not as targets")
        if not kept:
            raise ConversionError(f"{by_part[part]}: no row has a history (a sequential model needs one)")
        frame = benchmark_frame([r[0] for r in kept], [r[4] for r in kept], [r[1] for r in kept], options.max_history)
        frame["rating"] = [r[2] for r in kept]
        frame["timestamp"] = [r[3] for r in kept]
        frames[part] = frame

    tokens = sorted({t for f in frames.values() for t in f["item_id"]} | {
        t for f in frames.values() for seq in f["item_id_list"] for t in seq.split()
    })
    item_ids = {token: code for code, token in enumerate(tokens)}
    text = ItemText(TEXT_FIELDS, options.text_limit(RAW_TEXT_LEN))
    _read_meta(meta, item_ids, text, options, notes)
    without = len(tokens) - len(text.known)
    if without:
        notes.append(f"{without} item(s) have no metadata (kept: the published split is not changed)")
    codes = range(len(tokens))
    items = item_frame(tokens, {name: text.column(name, codes) for name in TEXT_FIELDS})
    inter_types = {"user_id": "token", "item_id_list": "token_seq", "item_id": "token", "rating": "float", "timestamp": "float"}
    return write_dataset(
        output, options, FORMAT, None, inter_types, items,
        {"item_id": "token", **{name: "token_seq" for name in TEXT_FIELDS}},
        TEXT_FIELDS, notes, benchmark_parts=frames,
    )


def _rebuild_histories(rows: Dict[str, list]) -> None:
    """Histories for splits without a ``history`` column: earlier items, train then valid then test."""
    seen: Dict[str, List[str]] = defaultdict(list)
    for part in BENCHMARK_PARTS:
        ordered = sorted(range(len(rows[part])), key=lambda k: (rows[part][k][0], rows[part][k][3]))
        rebuilt = list(rows[part])
        for k in ordered:
            user, item, rating, timestamp, _ = rows[part][k]
            rebuilt[k] = (user, item, rating, timestamp, list(seen[user]))
            seen[user].append(item)
        rows[part] = rebuilt
