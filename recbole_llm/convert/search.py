"""Writing mixed search and recommendation histories (the atomic files UniSAR reads).

Schema of ``<name>.inter`` (one row per behaviour event)::

    user_id:token  item_id:token  timestamp:float  behavior:token  query:token_seq  session_items:token_seq

``behavior`` is ``rec`` or ``search``; a search row's ``query`` holds its word tokens and
``session_items`` the items clicked in the session (``item_id`` is the first). ``<name>.item``
holds ``item_words:token_seq``, item text tokens that share one vocabulary with the query words.
:mod:`recbole_llm.data.search_dataset` reads them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pandas as pd

from recbole_llm.convert.core import ConversionError, ConversionResult, Options, OutputFolder, write_atomic_file, write_yaml

BEHAVIOR_FIELD = "behavior"
QUERY_FIELD = "query"
CLICKS_FIELD = "session_items"
ITEM_WORDS_FIELD = "item_words"
BEHAVIORS = ("rec", "search")
INTER_TYPES = {"user_id": "token", "item_id": "token", "timestamp": "float", BEHAVIOR_FIELD: "token",
               QUERY_FIELD: "token_seq", CLICKS_FIELD: "token_seq"}
ITEM_TYPES = {"item_id": "token", ITEM_WORDS_FIELD: "token_seq"}

#: (user, item, timestamp, behavior, query words, clicked items)
Event = Tuple[str, str, float, str, Sequence[str], Sequence[str]]


def _token(value: object) -> str:
    text = str(value)
    if not text or any(ch.isspace() for ch in text):
        raise ConversionError(f"token {text!r} is empty or holds whitespace; atomic files separate tokens by spaces")
    return text


def _tokens(values: Sequence[object]) -> str:
    return " ".join(_token(value) for value in values)


def write_search_dataset(
    output: Path,
    options: Options,
    fmt: str,
    events: Sequence[Event],
    item_words: Dict[str, Sequence[str]],
    header_comment: str,
    extra_config: Optional[Dict[str, object]] = None,
    notes: Sequence[str] = (),
) -> ConversionResult:
    """Write ``<name>.inter``, ``<name>.item`` and ``<name>.yaml`` through one :class:`OutputFolder`."""
    for event in events:
        if event[3] not in BEHAVIORS:
            raise ConversionError(f"behavior must be one of {BEHAVIORS}, got {event[3]!r}")
    inter = pd.DataFrame({
        "user_id": [_token(e[0]) for e in events],
        "item_id": [_token(e[1]) for e in events],
        "timestamp": [float(e[2]) for e in events],
        BEHAVIOR_FIELD: [e[3] for e in events],
        QUERY_FIELD: [_tokens(e[4]) for e in events],
        CLICKS_FIELD: [_tokens(e[5]) for e in events],
    })
    items = pd.DataFrame({"item_id": [_token(item) for item in sorted(item_words)],
                          ITEM_WORDS_FIELD: [_tokens(item_words[item]) for item in sorted(item_words)]})
    folder = OutputFolder(output, options.overwrite, fmt)
    with folder:
        config = {
            "dataset": folder.name,
            "data_path": str(folder.output.parent),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": list(INTER_TYPES), "item": list(ITEM_TYPES)},
            **(extra_config or {}),
        }
        write_atomic_file(folder.file(".inter"), inter, INTER_TYPES)
        write_atomic_file(folder.file(".item"), items, ITEM_TYPES)
        write_yaml(folder.file(".yaml"), config, header_comment)
    return ConversionResult(
        name=folder.name, path=folder.output, n_users=int(inter["user_id"].nunique()),
        n_items=len(set(inter["item_id"]) | set(items["item_id"])), n_interactions=len(inter),
        files=folder.written, notes=list(notes),
    )
