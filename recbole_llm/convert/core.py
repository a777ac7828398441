"""Shared machinery of the converters: reading, cleaning, filtering and writing atomic files.

Every converter turns an upstream format into a RecBole dataset folder ``<output>/`` holding

* ``<name>.inter`` (or ``<name>.train/.valid/.test.inter`` for pre-split benchmark data),
* ``<name>.item`` with the item text as ``token_seq`` fields,
* ``<name>.yaml`` with ``load_col``, ``text_fields`` and the evaluation settings.

The folder is written to a temporary sibling and renamed at the end, so a failed run never
leaves a half-written dataset behind.
"""
from __future__ import annotations

import ast
import contextvars
import csv
import gzip
import html
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
import zlib
from array import array
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import yaml

#: Leave-one-out, chronological, full ranking: the project's default protocol.
LEAVE_ONE_OUT_EVAL_ARGS: Dict[str, Any] = {
    "split": {"LS": "valid_and_test"},
    "order": "TO",
    "group_by": "user",
    "mode": "full",
}
#: Files RecBole reads for pre-split data: ``<name>.<part>.inter``.
BENCHMARK_PARTS: Tuple[str, str, str] = ("train", "valid", "test")
BAD_LINES_SHOWN = 5
logger = logging.getLogger(__name__)


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file, line and field."""


@dataclass
class Options:
    """Processing options of the converters (``None`` means the format's default).

    The first group applies to the interaction formats; the others to the one format named.
    """

    kcore: Optional[int] = None
    drop_items_without_meta: bool = True
    dedupe: bool = True
    max_text_len: Optional[int] = None
    max_history: int = 50
    strict: bool = False
    overwrite: bool = False
    # rechorus: dev/test rows of users absent from train.csv are dropped unless kept
    keep_users_without_train: bool = False
    # kuaisar: users with fewer events are dropped
    min_user_events: int = 5
    # amazon_search: share of interactions made (synthetic) searches, its seed, item text words,
    # and the fields read from a converted RecBole folder
    search_ratio: float = 0.5
    seed: int = 2020
    max_title_words: int = 32
    category_field: str = "categories"
    title_field: str = "title"

    def text_limit(self, default: int) -> int:
        """Words kept per text field: the option, else the format's default (0: no limit)."""
        return default if self.max_text_len is None else self.max_text_len


#: Command-line flags of the processing options: Options field -> (flag, argparse settings).
PROCESSING_FLAGS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "kcore": ("--kcore", dict(type=int, metavar="K", help=(
        "iterative K-core on users and items (default: 5 for raw formats, off for already filtered "
        "ones; 0 turns it off)"))),
    "drop_items_without_meta": ("--keep-items-without-meta", dict(action="store_false", help=(
        "keep interactions with items that have no metadata/text"))),
    "dedupe": ("--no-dedupe", dict(action="store_false", help="keep repeated (user, item, timestamp) rows")),
    "max_text_len": ("--max-text-len", dict(type=int, metavar="N", help=(
        "keep the first N words of each text field (0: no limit; default: 128 for raw metadata, no "
        "limit for already processed text)"))),
    "max_history": ("--max-history", dict(type=int, metavar="N", help=(
        "benchmark splits with a history column: keep its last N items (default 50)"))),
}


def add_processing_arguments(parser: Any, *names: str) -> None:
    """Add the flags of the processing options ``names`` (keys of :data:`PROCESSING_FLAGS`)."""
    for name in names:
        flag, settings = PROCESSING_FLAGS[name]
        parser.add_argument(flag, dest=name, **settings)


#: Words kept per text field of raw metadata (descriptions can run to thousands of words).
RAW_TEXT_LEN = 128


@dataclass
class ConversionResult:
    """What a converter wrote."""

    name: str
    path: Path
    n_users: int
    n_items: int
    n_interactions: int
    files: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"wrote {self.path}: {self.n_users} users, {self.n_items} items, "
            f"{self.n_interactions} interactions",
            f"files: {', '.join(self.files)}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading


#: Longest input line read (characters): a longer one is refused before it fills the memory.
MAX_LINE_CHARS = 1 << 24
#: Deepest nesting of lists/objects accepted in one record (Amazon meta needs about 3).
MAX_NESTING = 64
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class _CheckedGzip(gzip.GzipFile):
    """A gzip stream whose decompression errors become a :class:`ConversionError` naming the file."""

    def _checked(self, read: Callable, *args: Any) -> Any:
        try:
            return read(*args)
        except _GZIP_ERRORS as err:
            detail = str(err) or type(err).__name__
            raise ConversionError(f"{self.name}: damaged or truncated gzip file ({detail})") from None

    def read(self, size: int = -1) -> bytes:
        return self._checked(super().read, size)

    def read1(self, size: int = -1) -> bytes:
        return self._checked(super().read1, size)

    def peek(self, n: int) -> bytes:
        return self._checked(super().peek, n)

    def readline(self, size: int = -1) -> bytes:
        return self._checked(super().readline, size)


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open an input file for reading bytes, gunzipping (checked) when its name ends with ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix != ".gz":
        return open(path, "rb")
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic and magic != b"\x1f\x8b":
        raise ConversionError(f"{path}: not a gzip file although its name ends with .gz")
    return _CheckedGzip(str(path), "rb")


class ReadingReport:
    """Notes and the ``strict`` setting of one conversion, seen by every file it opens."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.notes: List[str] = []


_REPORT: contextvars.ContextVar[Optional[ReadingReport]] = contextvars.ContextVar("reading_report", default=None)


@contextmanager
def reading_report(strict: bool) -> Iterator[ReadingReport]:
    """Collect what the input files report (bytes that are not UTF-8) while converting."""
    report = ReadingReport(strict)
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


class TextFile:
    """An input text file read with bounds: lines of at most :data:`MAX_LINE_CHARS` characters,
    gzip errors named, and bytes that are not valid in ``encoding`` counted and replaced by
    U+FFFD (an error under ``--strict``). Iterate it for lines; ``read()`` gives all of it."""

    def __init__(self, path: Path, encoding: str = "utf-8"):
        self.path = Path(path)
        self.handle = io.TextIOWrapper(open_binary(self.path), encoding=encoding, errors="surrogateescape", newline="")
        self.lineno = 0
        self.bad_lines = BadLines(self.path)
        report = _REPORT.get()
        self.strict = report.strict if report is not None else False

    def __enter__(self) -> "TextFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.handle.close()
        if self.bad_lines.count:
            note = (f"{self.path}: {self.bad_lines.count} line(s) held bytes that are not valid "
                    f"{self.handle.encoding}, replaced by U+FFFD (line {self.bad_lines.shown()})")
            report = _REPORT.get()
            if report is not None:
                report.notes.append(note)
            logger.warning(note)

    def _decoded(self, text: str, lineno: int) -> str:
        if text.isascii() or not _ESCAPED_BYTE.search(text):
            return text
        if self.strict:
            raise ConversionError(f"{self.path}, line {lineno}: bytes that are not valid {self.handle.encoding}")
        self.bad_lines.add(lineno)
        return _ESCAPED_BYTE.sub("\ufffd", text)

    def readline(self) -> str:
        """The next line ("" at the end)."""
        return next(iter(self), "")

    def __iter__(self) -> Iterator[str]:
        limit = MAX_LINE_CHARS
        for lineno, line in enumerate(iter(partial(self.handle.readline, limit + 1), ""), self.lineno + 1):
            self.lineno = lineno
            if len(line) > limit:
                raise ConversionError(f"{self.path}, line {lineno}: longer than {limit} characters "
                                      "(not a record of this format)")
            yield line if line.isascii() else self._decoded(line, lineno)

    def read(self) -> str:
        """The whole remaining text (one JSON document, for instance)."""
        text = self.handle.read()
        if text.isascii() or not _ESCAPED_BYTE.search(text):
            return text
        start, lineno, previous = 0, self.lineno + 1, None
        for match in _ESCAPED_BYTE.finditer(text):
            lineno += text.count("\n", start, match.start())
            start = match.start()
            if self.strict:
                raise ConversionError(f"{self.path}, line {lineno}: bytes that are not valid {self.handle.encoding}")
            if lineno != previous:
                self.bad_lines.add(lineno)
                previous = lineno
        return _ESCAPED_BYTE.sub("\ufffd", text)


def open_text(path: Path, encoding: str = "utf-8") -> TextFile:
    """Open an input text file (gunzipped when its name ends with ``.gz``) as a :class:`TextFile`."""
    return TextFile(path, encoding)


def check_nesting(value: Any, where: str, limit: int = MAX_NESTING) -> None:
    """Refuse a parsed record nested deeper than ``limit`` lists/objects (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ConversionError(f"{where}: nested deeper than {limit} levels (not a record of this format)")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))


class BadLines:
    """Counts the malformed lines of one file and remembers the first few line numbers."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.first: List[int] = []

    def add(self, lineno: int) -> None:
        self.count += 1
        if len(self.first) < BAD_LINES_SHOWN:
            self.first.append(lineno)

    def shown(self) -> str:
        """The first line numbers, with ``...`` when there are more."""
        return ", ".join(map(str, self.first)) + (", ..." if self.count > len(self.first) else "")

    def note(self) -> Optional[str]:
        if not self.count:
            return None
        return f"{self.path}: skipped {self.count} malformed line(s) (line {self.shown()})"


def iter_records(
    path: Path, bad: BadLines, strict: bool, python_literals: bool = False
) -> Iterator[Tuple[int, dict]]:
    """Yield ``(line number, object)`` for each JSON line of ``path`` (blank lines skipped).

    With ``python_literals`` a line that is not JSON is read as a Python literal (the Amazon
    2014 meta dumps) with :func:`ast.literal_eval`, never ``eval``. A line that parses to
    nothing usable is counted in ``bad``, or raises with ``strict``.
    """
    loads = json.loads
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = loads(line)
            except RecursionError:
                raise _too_deep(path, lineno) from None
            except ValueError:
                record = _literal_or_none(line, path, lineno) if python_literals else None
            if not isinstance(record, dict):
                if strict:
                    raise ConversionError(f"{path}, line {lineno}: malformed record (not a JSON object)")
                bad.add(lineno)
                continue
            if line.count("[") + line.count("{") > MAX_NESTING or python_literals and line.count("(") > MAX_NESTING:
                check_nesting(record, f"{path}, line {lineno}")  # only then can it be that deep
            yield lineno, record


def _too_deep(path: Path, lineno: int) -> ConversionError:
    return ConversionError(f"{path}, line {lineno}: nested deeper than {MAX_NESTING} levels (not a record of this format)")


def _literal_or_none(line: str, path: Path, lineno: int) -> Any:
    """A Python literal (:func:`ast.literal_eval`, never ``eval``), or None when the line is not one.

    A line nested deeper than the parser allows raises, whatever ``strict`` says.
    """
    try:
        return ast.literal_eval(line.strip())
    except (MemoryError, RecursionError):
        raise _too_deep(path, lineno) from None
    except SyntaxError as err:
        if "too many nested" in str(err):
            raise _too_deep(path, lineno) from None
        return None
    except (ValueError, TypeError):
        return None


def required(record: dict, key: str, path: Path, lineno: int) -> Any:
    """``record[key]``, or an error naming the field, file and line when it is missing or null."""
    value = record.get(key)
    if value is None:
        raise ConversionError(f"{path}, line {lineno}: required field {key!r} is missing")
    return value


def as_float(value: Any, key: str, path: Path, lineno: int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"{path}, line {lineno}: field {key!r} is not a number: {value!r}") from None


def tsv_lines(path: Path, quoted: bool = False) -> Iterator[Tuple[int, List[str]]]:
    """``(line number, fields)`` of each non-empty line of a tab-separated file, header included.

    ``quoted``: fields may be double-quoted, as RecBole (pandas) reads the atomic files this
    package writes; otherwise each line is split on tabs verbatim (the upstream files).
    """
    with open_text(path) as handle:
        if not quoted:
            for lineno, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if line:
                    yield lineno, line.split("\t")
            return
        csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_CHARS))
        reader = csv.reader(handle, delimiter="\t")
        try:
            for row in reader:
                if row:
                    yield reader.line_num, row
        except csv.Error as err:
            raise ConversionError(f"{path}, line {reader.line_num}: {err}") from None


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic_file(path: Path) -> Tuple[pd.DataFrame, Dict[str, str]]:
    """A RecBole atomic file (header ``name:type``) as a frame of strings, and its column types."""
    rows = tsv_lines(path, quoted=True)
    first = next(rows, None)
    if first is None:
        raise ConversionError(f"{path}: empty file (expected a header such as user_id:token)")
    types: Dict[str, str] = {}
    for column in first[1]:
        name, _, kind = column.partition(":")
        if not name or kind not in ATOMIC_TYPES:
            raise ConversionError(f"{path}, line {first[0]}: column {column!r} is not <name>:<type> with a type "
                                  f"among {', '.join(ATOMIC_TYPES)}")
        types[name] = kind
    data = []
    for lineno, row in rows:
        if len(row) != len(types):
            raise ConversionError(f"{path}, line {lineno}: {len(row)} fields, the header has {len(types)}")
        data.append(row)
    return pd.DataFrame(data, columns=list(types), dtype=str), types


# --------------------------------------------------------------------------------------------
# Text

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(value: Any, max_words: int = 0) -> str:
    """One line of plain text: HTML entities decoded, tags removed, whitespace collapsed.

    Lists (Amazon ``description``, ``features``, ``categories``) are joined with spaces; a
    positive ``max_words`` keeps only the first ``max_words`` whitespace tokens.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(part) for part in value)
    elif not isinstance(value, str):
        value = str(value)
    if "&" in value:
        value = html.unescape(html.unescape(value))  # some dumps escape twice (&amp;amp;)
    if "<" in value:
        value = _TAG.sub(" ", value)
    words = value.split()
    if max_words > 0 and len(words) > max_words:
        words = words[:max_words]
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# Interactions


class InteractionLog:
    """Interactions collected while streaming: string ids interned, values in compact arrays."""

    def __init__(self) -> None:
        self.user_ids: Dict[str, int] = {}
        self.item_ids: Dict[str, int] = {}
        self.users = array("i")
        self.items = array("i")
        self.ratings = array("f")
        self.times = array("d")

    def add(self, user: str, item: str, rating: float, timestamp: float) -> None:
        users, items = self.user_ids, self.item_ids
        u = users.get(user)
        if u is None:
            u = users[user] = len(users)
        i = items.get(item)
        if i is None:
            i = items[item] = len(items)
        self.users.append(u)
        self.items.append(i)
        self.ratings.append(rating)
        self.times.append(timestamp)

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_arrays(cls, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, times: np.ndarray) -> "InteractionLog":
        """A log built from whole columns at once (ids of any type are written as strings)."""
        log = cls()
        user_codes, user_uniques = pd.factorize(users)
        item_codes, item_uniques = pd.factorize(items)
        log.user_ids = {str(token): code for code, token in enumerate(user_uniques)}
        log.item_ids = {str(token): code for code, token in enumerate(item_uniques)}
        log.users = array("i", user_codes.astype(np.int32).tobytes())
        log.items = array("i", item_codes.astype(np.int32).tobytes())
        log.ratings = array("f", np.asarray(ratings, dtype=np.float32).tobytes())
        log.times = array("d", np.asarray(times, dtype=np.float64).tobytes())
        return log

    def frame(self) -> pd.DataFrame:
        """The interactions as a frame with integer ``user``/``item`` codes."""
        return pd.DataFrame(
            {
                "user": np.frombuffer(self.users, dtype=np.int32),
                "item": np.frombuffer(self.items, dtype=np.int32),
                "rating": np.frombuffer(self.ratings, dtype=np.float32),
                "timestamp": np.frombuffer(self.times, dtype=np.float64),
            }
        )

    def item_tokens(self) -> np.ndarray:
        return _tokens_by_code(self.item_ids)

    def user_tokens(self) -> np.ndarray:
        return _tokens_by_code(self.user_ids)


def _tokens_by_code(mapping: Dict[str, int]) -> np.ndarray:
    tokens = np.empty(len(mapping), dtype=object)
    for token, code in mapping.items():
        tokens[code] = token
    return tokens


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows kept by iterative k-core: every kept user and item has at least ``k`` kept rows."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(items.max()) + 1 if len(items) else 0
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        still = keep & (user_count[users] >= k) & (item_count[items] >= k)
        if still.sum() == keep.sum():
            return still
        keep = still


def filter_interactions(
    frame: pd.DataFrame,
    kcore: int,
    dedupe: bool,
    items_with_meta: Optional[np.ndarray] = None,
) -> Tuple[pd.DataFrame, List[str]]:
    """Apply the processing options in order; returns the frame and one note per filter.

    ``items_with_meta`` (a boolean array indexed by item code) drops items without metadata.
    An empty result raises :class:`ConversionError` naming the filter that emptied it.
    """
    notes = []

    def step(name: str, keep: np.ndarray) -> pd.DataFrame:
        before = len(frame)
        kept = frame[keep]
        if len(kept) == 0:
            raise ConversionError(f"no interaction is left after the filter {name!r} ({before} before it)")
        if len(kept) < before:
            notes.append(f"{name}: removed {before - len(kept)} of {before} interactions")
        return kept

    if len(frame) == 0:
        raise ConversionError("the input holds no interaction")
    if items_with_meta is not None:
        frame = step("drop items without metadata", items_with_meta[frame["item"].to_numpy()])
    if dedupe:
        frame = step("de-duplicate (user, item, timestamp)", ~frame.duplicated(["user", "item", "timestamp"]).to_numpy())
    if kcore > 1:
        mask = kcore_mask(frame["user"].to_numpy(), frame["item"].to_numpy(), kcore)
        frame = step(f"{kcore}-core on users and items", mask)
    return frame, notes


def chronological(frame: pd.DataFrame, user: str = "user", time: str = "timestamp") -> pd.DataFrame:
    """Rows sorted by user, then time; ties keep their input order (stable sort)."""
    return frame.sort_values([user, time], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Writing


def write_atomic_file(path: Path, frame: pd.DataFrame, types: Dict[str, str]) -> None:
    """Write ``frame`` as a RecBole atomic file: header ``name:type``, tab separated.

    Text never holds tabs or newlines (cleaned before); a field holding a double quote is
    quoted the way ``pandas.read_csv`` (RecBole's reader) expects.
    """
    columns = list(types)
    header = [f"{name}:{types[name]}" for name in columns]
    frame[columns].to_csv(
        path,
        sep="\t",
        header=header,
        index=False,
        quoting=csv.QUOTE_MINIMAL,
        lineterminator="\n",
        encoding="utf-8",
    )


def write_yaml(path: Path, config: Dict[str, Any], comment: str) -> None:
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    header = "".join(f"# {line}\n" for line in comment.strip().splitlines())
    path.write_text(header + body, encoding="utf-8")


def dataset_yaml(
    inter_fields: Sequence[str],
    item_fields: Sequence[str],
    text_fields: Sequence[str],
    benchmark: bool,
    user_fields: Sequence[str] = (),
) -> Dict[str, Any]:
    """The settings a user passes with ``--config_files`` to train on the converted data."""
    config: Dict[str, Any] = {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
    }
    if "rating" in inter_fields:
        config["RATING_FIELD"] = "rating"
    if "timestamp" in inter_fields and not benchmark:
        config["TIME_FIELD"] = "timestamp"
    load_col: Dict[str, List[str]] = {"inter": list(inter_fields), "item": list(item_fields)}
    if user_fields:
        load_col["user"] = list(user_fields)
    config["load_col"] = load_col
    config["text_fields"] = list(text_fields)
    if benchmark:
        config["benchmark_filename"] = list(BENCHMARK_PARTS)
        config["alias_of_item_id"] = ["item_id_list"]
    config["eval_args"] = dict(LEAVE_ONE_OUT_EVAL_ARGS)
    return config


#: Written into every converted dataset folder: ``--overwrite`` replaces only a folder holding it.
MARKER = ".recbole_llm_dataset.json"
#: ``.<name>.partial-<pid>-<hex>`` / ``.<name>.old-<pid>-<hex>`` (older releases: no pid, or no hex)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?:(?P<pid>\d+)(?:-[0-9a-f]+)?|[A-Za-z0-9_]+)$")


def _refuse_unsafe(output: Path) -> Path:
    """The resolved ``--output``; refuses ``.``, ``..``, the root, the home and current folders."""
    raw = Path(output)
    if raw.name in ("", ".", ".."):
        raise ConversionError(f"--output {str(output)!r} must name a new dataset folder, e.g. dataset/<name>")
    resolved = raw.resolve()
    protected = {"the filesystem root": Path(resolved.anchor), "the current folder": Path.cwd().resolve()}
    try:
        protected["your home folder"] = Path.home().resolve()
    except RuntimeError:  # no home folder known: nothing to protect there
        pass
    for what, folder in protected.items():
        if resolved == folder or resolved in folder.parents:
            relation = "is" if resolved == folder else "contains"
            raise ConversionError(f"--output {resolved} {relation} {what}: name a dataset folder, e.g. dataset/<name>")
    return resolved


def check_output(inputs: Sequence[Path], output: Path, overwrite: bool) -> List[str]:
    """Refuse an unsafe ``--output`` before anything is read; remove what killed runs left.

    The output may not be, contain or lie inside an input; an existing output must be empty, or
    carry :data:`MARKER` and come with ``overwrite``. Hidden ``.<name>.partial-<pid>-*`` folders
    of processes that are gone are removed; returns one note per removed leftover.
    """
    resolved = _refuse_unsafe(output)
    for path in inputs:
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents:
            relation = "is" if source == resolved else "contains"
            raise ConversionError(f"--output {resolved} {relation} the input {source}: write the dataset elsewhere")
        if source in resolved.parents:
            raise ConversionError(f"--output {resolved} lies inside the input {source}: write the dataset elsewhere")
    _check_free(resolved, overwrite)
    return remove_leftovers(resolved)


def _check_free(output: Path, overwrite: bool) -> None:
    if not output.exists() and not output.is_symlink():
        return
    if output.is_dir() and not any(output.iterdir()):
        return  # an empty folder: nothing to lose
    if not overwrite:
        raise ConversionError(f"{output} already exists: pass --overwrite to replace it")
    if not output.is_dir() or not ((output / MARKER).is_file() or _written_before_markers(output)):
        raise ConversionError(
            f"{output} was not written by recbole_llm.convert (it holds no {MARKER}): --overwrite replaces "
            "only a converted dataset; choose another --output, or move it away yourself")


#: What the yaml of a dataset converted before the marker existed says in its leading comment.
_LEGACY_HEADERS = ("recbole_llm.convert", "recbole_llm.data.multi_domain")


def _written_before_markers(folder: Path) -> bool:
    """A dataset converted by an earlier release: its yaml says so, and it holds only its own files."""
    name = folder.name
    yaml_file = folder / f"{name}.yaml"
    if not yaml_file.is_file():
        return False
    with open(yaml_file, encoding="utf-8", errors="replace") as handle:
        head = handle.read(4000).splitlines()
    comment = " ".join(line for line in head[:-1] if line.startswith("#"))  # the last line may be cut
    if not head or not head[0].startswith("#") or not any(header in comment for header in _LEGACY_HEADERS):
        return False
    return all(p.name.startswith(f"{name}.") or p.name == ".recbole_llm_cache" for p in folder.iterdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(output: Path) -> List[str]:
    """Remove the temporary folders of ``output`` that interrupted runs (now gone) left behind."""
    notes = []
    if not output.parent.is_dir():
        return notes
    for path in sorted(output.parent.iterdir()):
        match = _LEFTOVER.match(path.name)
        if not match or match["name"] != output.name or (match["pid"] and _alive(int(match["pid"]))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        notes.append(f"removed {path}, left by an interrupted conversion")
        logger.warning(notes[-1])
    return notes


class Interrupted(KeyboardInterrupt):
    """SIGTERM received while a dataset was being written (handled like Ctrl-C)."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"stopped by signal {signum}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Interrupted`, so cleanup runs as on Ctrl-C.

    Signal handlers belong to the main thread: elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM for a few file-system calls that must not be cut in half."""
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class OutputFolder:
    """A dataset folder written into a hidden sibling and renamed into place on success.

    The sibling is ``.<name>.partial-<pid>-<random>``; it is removed on any error, on Ctrl-C and
    on SIGTERM, and by the next run if the process was killed outright. The finished folder
    holds :data:`MARKER`. Files are created with the user's umask.
    """

    def __init__(self, output: Path, overwrite: bool, fmt: str):
        self.output = _refuse_unsafe(output)
        self.name = self.output.name
        self.overwrite = overwrite
        self.fmt = fmt
        _check_free(self.output, overwrite)
        self.tmp: Optional[Path] = None
        self.written: List[str] = []
        self._sigterm: Any = None

    def _sibling(self, kind: str) -> Path:
        return self.output.parent / f".{self.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"

    def __enter__(self) -> "OutputFolder":
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self._sibling("partial")
        self.tmp.mkdir()
        self._sigterm = sigterm_interrupts()
        self._sigterm.__enter__()
        return self

    def file(self, suffix: str) -> Path:
        """Path of ``<name><suffix>`` inside the temporary folder (never anywhere else)."""
        assert self.tmp is not None
        if not suffix.startswith(".") or "/" in suffix or os.sep in suffix or suffix in (".", ".."):
            raise ValueError(f"file suffix {suffix!r} must be like '.inter' (a file inside the dataset folder)")
        self.written.append(f"{self.name}{suffix}")
        return self.tmp / f"{self.name}{suffix}"

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        try:
            if exc_type is None:
                self._publish()
        finally:
            if self.tmp.exists():
                with _signals_blocked():
                    shutil.rmtree(self.tmp, ignore_errors=True)
            self._sigterm.__exit__(None, None, None)

    def _publish(self) -> None:
        assert self.tmp is not None
        marker = {"written_by": "recbole_llm.convert", "format": self.fmt, "files": self.written}
        (self.tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        replaced = None
        with _signals_blocked():
            _check_free(self.output, self.overwrite)
            if self.output.exists():
                replaced = self._sibling("old")
                os.replace(self.output, replaced)
            os.replace(self.tmp, self.output)
        if replaced is not None:
            shutil.rmtree(replaced)  # if killed here, the next run removes it


def write_dataset(
    output: Path,
    options: Options,
    fmt: str,
    inter: Optional[pd.DataFrame],
    inter_types: Dict[str, str],
    items: pd.DataFrame,
    item_types: Dict[str, str],
    text_fields: Sequence[str],
    notes: List[str],
    benchmark_parts: Optional[Dict[str, pd.DataFrame]] = None,
    users: Optional[pd.DataFrame] = None,
    user_types: Optional[Dict[str, str]] = None,
    extra_yaml: Optional[Dict[str, Any]] = None,
) -> ConversionResult:
    """Write the atomic files and the yaml of one dataset folder, atomically.

    Pass ``inter`` for a plain ``<name>.inter``, or ``benchmark_parts`` ({train, valid, test}:
    frames) for RecBole benchmark files; ``inter_types`` describes either.
    """
    benchmark = benchmark_parts is not None
    folder = OutputFolder(output, options.overwrite, fmt)
    with folder:
        name = folder.name
        if benchmark:
            for part in BENCHMARK_PARTS:
                write_atomic_file(folder.file(f".{part}.inter"), benchmark_parts[part], inter_types)
            frames = list(benchmark_parts.values())
            all_rows = pd.concat([f[["user_id", "item_id"]] for f in frames])
            n_users = all_rows["user_id"].nunique()
            item_set = set(all_rows["item_id"])
            for frame in frames:
                if "item_id_list" in frame:
                    for seq in frame["item_id_list"]:
                        item_set.update(seq.split())
            n_items = len(item_set)
            n_interactions = _benchmark_interactions(benchmark_parts["test"])
        else:
            assert inter is not None
            write_atomic_file(folder.file(".inter"), inter, inter_types)
            n_users = inter["user_id"].nunique()
            n_items = inter["item_id"].nunique()
            n_interactions = len(inter)
        write_atomic_file(folder.file(".item"), items, item_types)
        if users is not None and user_types:
            write_atomic_file(folder.file(".user"), users, user_types)
        config = dataset_yaml(
            list(inter_types), list(item_types), text_fields, benchmark,
            user_fields=list(user_types or ()),
        )
        if extra_yaml:
            config.update(extra_yaml)
        write_yaml(
            folder.file(".yaml"),
            config,
            f"Converted by `python -m recbole_llm.convert {fmt}`: "
            f"{n_users} users, {n_items} items, {n_interactions} interactions.\n"
            f"Use with: --dataset={name} --data_path=<folder holding {name}/> "
            f"--config_files=<this file>",
        )
    return ConversionResult(
        name=name, path=folder.output, n_users=int(n_users), n_items=int(n_items),
        n_interactions=int(n_interactions), files=folder.written, notes=notes,
    )


def _benchmark_interactions(test: pd.DataFrame) -> int:
    """Interactions in pre-split data: each test row holds a user's history plus its target."""
    if "item_id_list" not in test:
        return len(test)
    return int(sum(len(seq.split()) + 1 for seq in test["item_id_list"]))


# --------------------------------------------------------------------------------------------
# Input discovery


def expand_inputs(inputs: Iterable[Path]) -> List[Path]:
    """Files named on the command line; a folder stands for the files directly inside it."""
    files: List[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise ConversionError(f"{path}: no such file or folder")
    return files


JSON_LINES_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


def is_json_lines(path: Path) -> bool:
    """Whether the file name looks like JSON lines (``.jsonl``/``.json``, optionally gzipped)."""
    return path.name.endswith(JSON_LINES_SUFFIXES)


def find_one(files: Sequence[Path], match: Callable[[str], bool], what: str, needed: bool = True) -> Optional[Path]:
    """The single input whose name satisfies ``match``; an error when it is missing or ambiguous."""
    found = [f for f in files if match(f.name)]
    if len(found) > 1:
        raise ConversionError(f"several inputs look like the {what}: {', '.join(map(str, found))}")
    if not found:
        if needed:
            raise ConversionError(f"no input looks like the {what} (inputs: {', '.join(map(str, files)) or 'none'})")
        return None
    return found[0]


def item_frame(tokens: Sequence[str], texts: Dict[str, Sequence[str]]) -> pd.DataFrame:
    """The ``.item`` frame: ``item_id`` then one column per text field."""
    data = {"item_id": list(tokens)}
    data.update({name: list(values) for name, values in texts.items()})
    return pd.DataFrame(data)


# --------------------------------------------------------------------------------------------
# Pipelines shared by several formats


class ItemText:
    """Cleaned text fields of the items of an :class:`InteractionLog`, indexed by item code."""

    def __init__(self, fields: Sequence[str], max_words: int):
        self.fields = list(fields)
        self.max_words = max_words
        self.values: Dict[str, Dict[int, str]] = {name: {} for name in self.fields}
        self.known: set = set()

    def set(self, code: int, **texts: Any) -> None:
        """Record the item's text once (a second record of the same item is ignored)."""
        if code in self.known:
            return
        self.known.add(code)
        for name in self.fields:
            text = clean_text(texts.get(name), self.max_words)
            if text:
                self.values[name][code] = text

    def has_meta(self, n_items: int) -> np.ndarray:
        mask = np.zeros(n_items, dtype=bool)
        if self.known:
            mask[np.fromiter(self.known, dtype=np.int64)] = True
        return mask

    def column(self, name: str, codes: Iterable[int]) -> List[str]:
        values = self.values[name]
        return [values.get(int(code), "") for code in codes]


def write_interaction_dataset(
    log: InteractionLog,
    text: ItemText,
    output: Path,
    options: Options,
    fmt: str,
    default_kcore: int,
    notes: List[str],
    with_rating: bool = True,
    item_types: Optional[Dict[str, str]] = None,
    extra_item_columns: Optional[Dict[str, Dict[int, Any]]] = None,
    users: Optional[pd.DataFrame] = None,
    user_types: Optional[Dict[str, str]] = None,
) -> ConversionResult:
    """Filter a streamed interaction log and write a plain (leave-one-out) dataset."""
    kcore = default_kcore if options.kcore is None else options.kcore
    has_meta = text.has_meta(len(log.item_ids)) if options.drop_items_without_meta else None
    frame, filter_notes = filter_interactions(log.frame(), kcore, options.dedupe, has_meta)
    notes = notes + filter_notes
    frame = chronological(frame)
    user_tokens, item_tokens = log.user_tokens(), log.item_tokens()
    inter = pd.DataFrame(
        {
            "user_id": user_tokens[frame["user"].to_numpy()],
            "item_id": item_tokens[frame["item"].to_numpy()],
        }
    )
    inter_types = {"user_id": "token", "item_id": "token"}
    if with_rating:
        inter["rating"] = frame["rating"].to_numpy()
        inter_types["rating"] = "float"
    inter["timestamp"] = frame["timestamp"].to_numpy()
    inter_types["timestamp"] = "float"

    codes = np.unique(frame["item"].to_numpy())
    codes = codes[np.argsort(item_tokens[codes].astype(str), kind="stable")]
    items = item_frame(item_tokens[codes], {name: text.column(name, codes) for name in text.fields})
    types = item_types or {name: "token_seq" for name in text.fields}
    for name, values in (extra_item_columns or {}).items():
        items[name] = [values.get(int(code), "") for code in codes]
    if users is not None:
        users = users[users["user_id"].isin(set(inter["user_id"]))]
    return write_dataset(
        output, options, fmt, inter, inter_types, items,
        {"item_id": "token", **types}, text.fields, notes,
        users=users, user_types=user_types,
    )


def benchmark_frame(
    users: Sequence[str], histories: Sequence[Sequence[str]], targets: Sequence[str], max_history: int
) -> pd.DataFrame:
    """Rows ``user_id, item_id_list, item_id`` with each history cut to its last ``max_history``."""
    cut = (lambda h: h[-max_history:]) if max_history > 0 else (lambda h: h)
    return pd.DataFrame(
        {
            "user_id": list(users),
            "item_id_list": [" ".join(cut(list(h))) for h in histories],
            "item_id": list(targets),
        }
    )
