"""Amazon Reviews 2018 (and 2014) (McAuley lab, https://nijianmo.github.io/amazon/).

Reviews: gzipped JSON lines ``<Category>.json.gz`` with ``reviewerID``, ``asin``, ``overall``
and ``unixReviewTime`` (seconds). Meta: ``meta_<Category>.json.gz`` with ``asin``, ``title``,
``category`` (2018: list, root first) or ``categories`` (2014: list of lists), ``brand``,
``description`` (str or list). The 2014 meta dumps hold one Python dict literal per line: such
lines are read with :func:`ast.literal_eval`, never ``eval``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

from recbole_llm.convert.core import (
    RAW_TEXT_LEN,
    BadLines,
    ConversionError,
    ConversionResult,
    InteractionLog,
    ItemText,
    Options,
    add_processing_arguments,
    as_float,
    expand_inputs,
    is_json_lines,
    iter_records,
    required,
    write_interaction_dataset,
)

FORMAT = "amazon2018"
DEFAULT_KCORE = 5
TEXT_FIELDS = ("title", "brand", "categories", "description")


def _categories(record: dict) -> List[str]:
    """Category names without repeats: 2018 ``category`` list, or flattened 2014 ``categories``."""
    value: Any = record.get("category")
    if value is None:
        value = record.get("categories")
    names: List[str] = []
    stack = [value] if isinstance(value, str) else list(value or [])
    for entry in stack:
        for name in [entry] if isinstance(entry, str) else (entry or []):
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    add_processing_arguments(parser, "kcore", "drop_items_without_meta", "dedupe", "max_text_len")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Convert review + meta JSON lines into a leave-one-out dataset with item text."""
    files = expand_inputs(inputs)
    meta = [f for f in files if f.name.startswith("meta_") and is_json_lines(f)]
    reviews = [f for f in files if f not in meta and is_json_lines(f)]
    if not meta:
        raise ConversionError("amazon2018 needs the item metadata: pass the meta_<Category>.json.gz file too")
    if not reviews:
        raise ConversionError("amazon2018 needs the review file <Category>.json.gz")

    log = InteractionLog()
    notes: List[str] = []
    for path in reviews:
        bad = BadLines(path)
        for lineno, record in iter_records(path, bad, options.strict, python_literals=True):
            log.add(
                str(required(record, "reviewerID", path, lineno)),
                str(required(record, "asin", path, lineno)),
                as_float(required(record, "overall", path, lineno), "overall", path, lineno),
                as_float(required(record, "unixReviewTime", path, lineno), "unixReviewTime", path, lineno),
            )
        if bad.note():
            notes.append(bad.note())

    text = ItemText(TEXT_FIELDS, options.text_limit(RAW_TEXT_LEN))
    for path in meta:
        bad = BadLines(path)
        for lineno, record in iter_records(path, bad, options.strict, python_literals=True):
            code = log.item_ids.get(str(required(record, "asin", path, lineno)))
            if code is None:
                continue
            text.set(
                code,
                title=record.get("title"),
                brand=record.get("brand"),
                categories=_categories(record),
                description=record.get("description"),
            )
        if bad.note():
            notes.append(bad.note())
    return write_interaction_dataset(log, text, output, options, FORMAT, DEFAULT_KCORE, notes)
