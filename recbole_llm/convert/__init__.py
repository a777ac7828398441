"""Dataset converters: raw upstream formats -> RecBole atomic files with item text.

``python -m recbole_llm.convert <format> --input PATH... --output dataset/<name>`` writes
``<name>.inter`` (or pre-split ``<name>.train/.valid/.test.inter``), ``<name>.item`` and
``<name>.yaml``. From Python: ``convert("movielens", ["ml-1m/"], "dataset/ml-1m")``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence, Union

from recbole_llm.convert.core import ConversionError, ConversionResult, Options

#: format name -> module under ``recbole_llm.convert``
FORMATS = {
    "amazon2023": "amazon2023",
    "amazon2018": "amazon2018",
    "movielens": "movielens",
    "unisrec": "unisrec",
    "lcrec": "lcrec",
    "rechorus": "rechorus",
}


def convert(
    fmt: str,
    inputs: Sequence[Union[str, Path]],
    output: Union[str, Path],
    options: Options = None,
    **option_values,
) -> ConversionResult:
    """Convert ``inputs`` (files or folders) in format ``fmt`` into the dataset folder ``output``.

    Options are given as an :class:`Options` or as its fields, e.g. ``kcore=10, overwrite=True``.
    """
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    options = options or Options(**option_values)
    module = importlib.import_module(f"recbole_llm.convert.{FORMATS[fmt]}")
    return module.convert([Path(p) for p in inputs], Path(output), options)


__all__ = ["convert", "ConversionError", "ConversionResult", "Options", "FORMATS"]
