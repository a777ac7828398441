"""Command line: ``python -m recbole_llm.convert <format> --input PATH... --output dataset/<name>``.

User errors (bad or missing input, an unsafe output) print ``error: <message>`` and exit with
status 2; Ctrl-C and SIGTERM exit with 130 after removing the half-written folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import List, Optional

from recbole_llm.convert import FORMATS, convert, format_module
from recbole_llm.convert.core import ConversionError, Options, sigterm_interrupts

#: Exit status of a user error (as argparse uses for bad arguments).
USER_ERROR = 2
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbole-llm-convert",
        description="Convert a public data set into RecBole atomic files with item text.",
    )
    subparsers = parser.add_subparsers(dest="format", required=True, metavar="format")
    for fmt in FORMATS:
        module = format_module(fmt)
        doc = (module.__doc__ or "").strip()
        sub = subparsers.add_parser(fmt, help=doc.splitlines()[0], description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter,
                                    argument_default=argparse.SUPPRESS)
        sub.add_argument("--input", nargs="+", required=True, metavar="PATH",
                         help="input files, or folders standing for the files inside them")
        sub.add_argument("--output", required=True, metavar="DIR",
                         help="dataset folder to write, e.g. dataset/<name> (files are named <name>.*)")
        sub.add_argument("--strict", action="store_true",
                         help="fail on a malformed line or on bytes that are not UTF-8 instead of counting them")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace an existing output folder written by this converter")
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(sub)
    return parser


def options_from(args: argparse.Namespace) -> Options:
    """The :class:`Options` named on the command line (the others keep their defaults)."""
    fields = {f.name for f in dataclasses.fields(Options)}
    return Options(**{key: value for key, value in vars(args).items() if key in fields})


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_interrupts():
            result = convert(args.format, args.input, args.output, options_from(args))
    except (ConversionError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; no half-written dataset is left", file=sys.stderr)
        return INTERRUPTED
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
