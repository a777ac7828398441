"""Command line: ``python -m recbole_llm.convert <format> --input PATH... --output dataset/<name>``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from recbole_llm.convert import FORMATS, convert
from recbole_llm.convert.core import ConversionError, Options


def _description(fmt: str) -> str:
    module = importlib.import_module(f"recbole_llm.convert.{FORMATS[fmt]}")
    return (module.__doc__ or "").strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbole-llm-convert",
        description="Convert a public data set into RecBole atomic files with item text.",
    )
    subparsers = parser.add_subparsers(dest="format", required=True, metavar="format")
    for fmt in FORMATS:
        sub = subparsers.add_parser(
            fmt, help=_description(fmt).splitlines()[0],
            description=_description(fmt), formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--input", nargs="+", required=True, metavar="PATH",
                         help="input files, or folders standing for the files inside them")
        sub.add_argument("--output", required=True, metavar="DIR",
                         help="dataset folder to write, e.g. dataset/<name> (files are named <name>.*)")
        sub.add_argument("--kcore", type=int, default=None, metavar="K",
                         help="iterative K-core on users and items (default: 5 for raw formats, "
                              "off for already filtered ones; 0 turns it off)")
        sub.add_argument("--keep-items-without-meta", action="store_true",
                         help="keep interactions with items that have no metadata/text")
        sub.add_argument("--no-dedupe", action="store_true",
                         help="keep repeated (user, item, timestamp) rows")
        sub.add_argument("--max-text-len", type=int, default=None, metavar="N",
                         help="keep the first N words of each text field (0: no limit; default: "
                              "128 for raw metadata, no limit for already processed text)")
        sub.add_argument("--max-history", type=int, default=50, metavar="N",
                         help="benchmark splits with a history column: keep its last N items (default 50)")
        sub.add_argument("--strict", action="store_true",
                         help="fail on a malformed line instead of skipping and counting it")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    for fmt, module in _search_formats().items():
        sub = subparsers.add_parser(fmt, help=(module.__doc__ or "").strip().splitlines()[0],
                                    description=(module.__doc__ or "").strip(),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run_search_format=module.run)
    return parser


def _search_formats():
    """Mixed search/recommendation data for UniSAR, with their own options."""
    from recbole_llm.convert import amazon_search, kuaisar

    return {"kuaisar": kuaisar, "amazon_search": amazon_search}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "run_search_format"):
        try:
            print(f"wrote {args.run_search_format(args)}")
        except (ConversionError, ValueError, FileNotFoundError) as err:
            print(f"recbole-llm-convert {args.format}: error: {err}", file=sys.stderr)
            return 1
        return 0
    options = Options(
        kcore=args.kcore,
        drop_items_without_meta=not args.keep_items_without_meta,
        dedupe=not args.no_dedupe,
        max_text_len=args.max_text_len,
        max_history=args.max_history,
        strict=args.strict,
        overwrite=args.overwrite,
    )
    try:
        result = convert(args.format, args.input, args.output, options)
    except ConversionError as err:
        print(f"recbole-llm-convert {args.format}: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
