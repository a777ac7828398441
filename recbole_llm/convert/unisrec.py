"""UniSRec / VQ-Rec downstream format (Hou et al., KDD'22 and WWW'23).

A folder ``<Name>/`` holding

* ``<Name>.train.inter`` / ``.valid.inter`` / ``.test.inter``:
  ``user_id:token item_id_list:token_seq item_id:token``, one row per prediction (0-based
  indices; the train file holds every prefix, valid and test one row per user);
* ``<Name>.text``: ``item_id:token text:token_seq``, the item's ASIN and its text;
* ``<Name>.item2index`` (ASIN -> index) and optionally ``<Name>.user2index``.

The papers' split is kept exactly, as RecBole benchmark files; indices are written back as
the upstream ASINs (and reviewer ids) so that the text and other data can be joined on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

from recbole_llm.convert.core import (
    BENCHMARK_PARTS,
    ConversionError,
    ConversionResult,
    Options,
    add_processing_arguments,
    clean_text,
    expand_inputs,
    find_one,
    item_frame,
    tsv_lines,
    write_dataset,
)

FORMAT = "unisrec"
HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]


def read_index(path: Path) -> Dict[str, str]:
    """``index -> original id`` from a ``<id>\t<index>`` file."""
    mapping: Dict[str, str] = {}
    for lineno, fields in tsv_lines(path):
        if len(fields) != 2:
            raise ConversionError(f"{path}, line {lineno}: expected '<id>\\t<index>', found {len(fields)} field(s)")
        original, index = fields
        if index in mapping:
            raise ConversionError(f"{path}, line {lineno}: index {index} is given twice")
        mapping[index] = original
    return mapping


def read_text(path: Path, max_words: int) -> Dict[str, str]:
    """``item id -> cleaned text`` from a two-column ``<id>\t<text>`` file with a header."""
    texts: Dict[str, str] = {}
    lines = tsv_lines(path)
    if next(lines, (0, None))[0] != 1:
        raise ConversionError(f"{path}, line 1: missing header")
    for lineno, (item, *text) in lines:
        if not item:
            raise ConversionError(f"{path}, line {lineno}: required field 'item_id' is empty")
        texts.setdefault(item, clean_text("\t".join(text), max_words))
    return texts


def _read_part(path: Path, users: Optional[Dict[str, str]], items: Dict[str, str]) -> pd.DataFrame:
    rows: Dict[str, List[str]] = {"user_id": [], "item_id_list": [], "item_id": []}

    def item_token(index: str, lineno: int) -> str:
        try:
            return items[index]
        except KeyError:
            raise ConversionError(f"{path}, line {lineno}: item index {index} is not in the item2index file") from None

    lines = tsv_lines(path)
    lineno, header = next(lines, (1, []))
    if lineno != 1 or header != HEADER:
        raise ConversionError(f"{path}, line 1: expected header {' '.join(HEADER)}, found {' '.join(header)}")
    for lineno, fields in lines:
        if len(fields) != 3:
            raise ConversionError(f"{path}, line {lineno}: expected 3 fields, found {len(fields)}")
        user, history, target = fields
        for name, value in (("user_id", user), ("item_id_list", history), ("item_id", target)):
            if not value.strip():
                raise ConversionError(f"{path}, line {lineno}: required field {name!r} is empty")
        if users is not None:
            if user not in users:
                raise ConversionError(f"{path}, line {lineno}: user index {user} is not in the user2index file")
            user = users[user]
        rows["user_id"].append(user)
        rows["item_id_list"].append(" ".join(item_token(i, lineno) for i in history.split()))
        rows["item_id"].append(item_token(target, lineno))
    return pd.DataFrame(rows)


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    add_processing_arguments(parser, "max_text_len")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Keep the upstream split as benchmark files and attach the item text."""
    files = expand_inputs(inputs)
    parts = {
        part: find_one(files, lambda n, p=part: n.endswith(f".{p}.inter"), f"{part} split (<Name>.{part}.inter)")
        for part in BENCHMARK_PARTS
    }
    text_file = find_one(files, lambda n: n.endswith(".text"), "item text (<Name>.text)")
    item_index = find_one(files, lambda n: n.endswith(".item2index"), "item index (<Name>.item2index)")
    user_index = find_one(files, lambda n: n.endswith(".user2index"), "user index", needed=False)

    items = read_index(item_index)
    users = read_index(user_index) if user_index is not None else None
    frames = {part: _read_part(path, users, items) for part, path in parts.items()}
    texts = read_text(text_file, options.text_limit(0))

    notes: List[str] = []
    tokens = sorted(set(items.values()))
    missing = [t for t in tokens if t not in texts]
    if missing:
        notes.append(f"{len(missing)} item(s) have no text (kept: the published split is not changed), e.g. {missing[0]}")
    item_table = item_frame(tokens, {"text": [texts.get(t, "") for t in tokens]})
    inter_types = {"user_id": "token", "item_id_list": "token_seq", "item_id": "token"}
    return write_dataset(
        output, options, FORMAT, None, inter_types, item_table,
        {"item_id": "token", "text": "token_seq"}, ["text"], notes, benchmark_parts=frames,
    )
