"""LC-Rec / LETTER json format (Zheng et al., ICDE'24; Wang et al., CIKM'24).

* ``<Name>.inter.json``: ``{"<user>": [<item>, ...]}``, each user's items in chronological
  order (0-based integer ids);
* ``<Name>.item.json``: ``{"<item>": {"title", "description", "brand", "categories"}}``.

The position of an item in its user's list becomes its timestamp, so RecBole's chronological
leave-one-out split equals the upstream one (last item test, second-to-last valid).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Sequence

from recbole_llm.convert.core import (
    ConversionError,
    ConversionResult,
    InteractionLog,
    ItemText,
    Options,
    add_processing_arguments,
    expand_inputs,
    find_one,
    open_text,
    write_interaction_dataset,
)

FORMAT = "lcrec"
DEFAULT_KCORE = 0
TEXT_FIELDS = ("title", "description", "brand", "categories")


def load_json(path: Path) -> Any:
    """A whole JSON document; a syntax error names the file, line and column."""
    with open_text(path) as handle:
        try:
            return json.load(handle)
        except RecursionError:
            raise ConversionError(f"{path}: nested deeper than the JSON parser allows (not a file of this format)") from None
        except json.JSONDecodeError as err:
            raise ConversionError(f"{path}, line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})") from None


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    add_processing_arguments(parser, "kcore", "drop_items_without_meta", "dedupe", "max_text_len")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Convert the user sequences and item text into a leave-one-out dataset."""
    files = expand_inputs(inputs)
    inter_file = find_one(files, lambda n: n.endswith(".inter.json"), "sequences (<Name>.inter.json)")
    item_file = find_one(files, lambda n: n.endswith(".item.json"), "item text (<Name>.item.json)")

    sequences = load_json(inter_file)
    if not isinstance(sequences, dict):
        raise ConversionError(f"{inter_file}: expected an object {{user: [item, ...]}}, found {type(sequences).__name__}")
    log = InteractionLog()
    for user, sequence in sequences.items():
        if not isinstance(sequence, list):
            raise ConversionError(f"{inter_file}: user {user!r}: expected a list of item ids, found {type(sequence).__name__}")
        for position, item in enumerate(sequence):
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ConversionError(f"{inter_file}: user {user!r}, position {position}: item id {item!r} is not an id")
            log.add(str(user), str(item), 1.0, float(position))

    item_meta = load_json(item_file)
    if not isinstance(item_meta, dict):
        raise ConversionError(f"{item_file}: expected an object {{item: {{title, ...}}}}, found {type(item_meta).__name__}")
    text = ItemText(TEXT_FIELDS, options.text_limit(0))
    for item, meta in item_meta.items():
        if not isinstance(meta, dict):
            raise ConversionError(f"{item_file}: item {item!r}: expected an object of text fields")
        code = log.item_ids.get(str(item))
        if code is not None:
            text.set(code, **{name: meta.get(name) for name in TEXT_FIELDS})
    notes: List[str] = []
    return write_interaction_dataset(log, text, output, options, FORMAT, DEFAULT_KCORE, notes, with_rating=False)
