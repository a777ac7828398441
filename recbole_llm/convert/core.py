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
import csv
import gzip
import html
import io
import json
import os
import re
import shutil
import tempfile
from array import array
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


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file, line and field."""


@dataclass
class Options:
    """Processing options shared by the converters (``None`` means the format's default)."""

    kcore: Optional[int] = None
    drop_items_without_meta: bool = True
    dedupe: bool = True
    max_text_len: Optional[int] = None
    max_history: int = 50
    strict: bool = False
    overwrite: bool = False

    def text_limit(self, default: int) -> int:
        """Words kept per text field: the option, else the format's default (0: no limit)."""
        return default if self.max_text_len is None else self.max_text_len


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


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file, gunzipping it when its name ends with ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="replace")
    return open(path, "r", encoding=encoding, errors="replace", newline="")


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

    def note(self) -> Optional[str]:
        if not self.count:
            return None
        shown = ", ".join(map(str, self.first)) + (", ..." if self.count > len(self.first) else "")
        return f"{self.path}: skipped {self.count} malformed line(s) (line {shown})"


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
            except ValueError:
                record = _literal_or_none(line) if python_literals else None
            if not isinstance(record, dict):
                if strict:
                    raise ConversionError(f"{path}, line {lineno}: malformed record (not a JSON object)")
                bad.add(lineno)
                continue
            yield lineno, record


def _literal_or_none(line: str) -> Any:
    try:
        return ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
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


class OutputFolder:
    """A dataset folder written into a temporary sibling and renamed into place on success."""

    def __init__(self, output: Path, overwrite: bool):
        self.output = Path(output).resolve()
        self.name = self.output.name
        if not self.name or self.name in (".", ".."):
            raise ConversionError(f"--output {output!r} must name a dataset folder, e.g. dataset/<name>")
        self.overwrite = overwrite
        self.check_free()
        self.tmp: Optional[Path] = None
        self.written: List[str] = []

    def check_free(self) -> None:
        if self.output.exists() and not self.overwrite:
            raise ConversionError(f"{self.output} already exists: pass --overwrite to replace it")

    def __enter__(self) -> "OutputFolder":
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}.partial-", dir=self.output.parent))
        os.chmod(self.tmp, 0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
        return self

    def file(self, suffix: str) -> Path:
        """Path of ``<name><suffix>`` inside the temporary folder."""
        assert self.tmp is not None
        self.written.append(f"{self.name}{suffix}")
        return self.tmp / f"{self.name}{suffix}"

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self.check_free()
            old = None
            if self.output.exists():
                old = self.output.parent / f".{self.name}.old-{os.getpid()}"
                os.replace(self.output, old)
            os.replace(self.tmp, self.output)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


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
    folder = OutputFolder(output, options.overwrite)
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
