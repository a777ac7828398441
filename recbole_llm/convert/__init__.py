"""Dataset converters: raw upstream formats -> RecBole atomic files with item text.

``python -m recbole_llm.convert <format> --input PATH... --output dataset/<name>`` writes
``<name>.inter`` (or pre-split ``<name>.train/.valid/.test.inter``), ``<name>.item`` and
``<name>.yaml``. From Python: ``convert("movielens", ["ml-1m/"], "dataset/ml-1m")``.

Every format follows one contract: its module's ``convert(inputs, output, options)`` returns a
:class:`ConversionResult` or raises :class:`ConversionError`, and writes through
:class:`~recbole_llm.convert.core.OutputFolder` (atomic, marked, replaced only with
``overwrite``). :func:`convert` checks the output against the inputs before anything is read.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Sequence, Union

from recbole_llm.convert.core import ConversionError, ConversionResult, Options, check_output, reading_report

#: format name -> module implementing it
FORMATS = {
    "amazon2023": "recbole_llm.convert.amazon2023",
    "amazon2018": "recbole_llm.convert.amazon2018",
    "movielens": "recbole_llm.convert.movielens",
    "unisrec": "recbole_llm.convert.unisrec",
    "lcrec": "recbole_llm.convert.lcrec",
    "rechorus": "recbole_llm.convert.rechorus",
    "kuaisar": "recbole_llm.convert.kuaisar",
    "amazon_search": "recbole_llm.convert.amazon_search",
    "multi_domain": "recbole_llm.data.multi_domain",
}


def format_module(fmt: str):
    """The module implementing format ``fmt``."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[fmt])


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
    module = format_module(fmt)
    if options is not None and option_values:
        raise ConversionError("pass the options either as an Options or as keyword arguments, not both")
    if options is None:
        known = {f.name for f in dataclasses.fields(Options)}
        unknown = sorted(set(option_values) - known)
        if unknown:
            raise ConversionError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        options = Options(**option_values)
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ConversionError("name at least one input file or folder")
    removed = check_output(inputs, Path(output), options.overwrite)
    with reading_report(options.strict) as report:
        result = module.convert(inputs, Path(output), options)
    result.notes[:0] = removed + report.notes
    return result


__all__ = ["convert", "ConversionError", "ConversionResult", "Options", "FORMATS"]
