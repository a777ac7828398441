"""MovieLens (GroupLens, https://grouplens.org/datasets/movielens/).

* ml-100k: ``u.data`` (tab separated ``user item rating timestamp``), ``u.item`` (pipe
  separated ``id|title (year)|release date|video release date|IMDb URL|`` + 19 genre flags in
  the order of ``u.genre``), optional ``u.user``; latin-1.
* ml-1m (and ml-10m): ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp``, ``movies.dat``
  ``MovieID::Title (Year)::Genre1|Genre2``, optional ``users.dat``
  ``UserID::Gender::Age::Occupation::Zip-code``; latin-1.
* ml-20m / 25m / 32m: ``ratings.csv`` ``userId,movieId,rating,timestamp`` and ``movies.csv``
  ``movieId,title,genres`` (quoted titles, ``|``-separated genres); utf-8.

Item text: ``title`` (year removed, a trailing article moved to the front:
"Usual Suspects, The" -> "The Usual Suspects"), ``year`` and ``genres``.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_llm.convert.core import (
    RAW_TEXT_LEN,
    BadLines,
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

FORMAT = "movielens"
DEFAULT_KCORE = 5
TEXT_FIELDS = ("title", "year", "genres")
ITEM_TYPES = {"title": "token_seq", "year": "token", "genres": "token_seq"}
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
NO_GENRE = "(no genres listed)"
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+), (?P<article>The|A|An)(?P<rest>(?: \(.*\))?)$")


def split_title(raw: str) -> Tuple[str, str]:
    """``"Usual Suspects, The (1995)"`` -> ``("The Usual Suspects", "1995")``."""
    raw = raw.strip()
    match = _TITLE_YEAR.match(raw)
    title, year = (match.group("title"), match.group("year")) if match else (raw, "")
    article = _TRAILING_ARTICLE.match(title)
    if article:
        title = f"{article.group('article')} {article.group('body')}{article.group('rest')}"
    return title, year


def _genres(value: str) -> str:
    return " ".join(g for g in value.split("|") if g and g != NO_GENRE)


def _split_lines(path: Path, separator: str, n_fields: int, bad: BadLines, strict: bool,
                 encoding: str = "latin-1") -> Iterator[Tuple[int, List[str]]]:
    """Fields of each line with at least ``n_fields`` fields; shorter lines are malformed."""
    with open_text(path, encoding=encoding) as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(separator)
            if len(fields) < n_fields:
                if strict:
                    raise ConversionError(f"{path}, line {lineno}: expected {n_fields} fields, found {len(fields)}")
                bad.add(lineno)
                continue
            yield lineno, fields


def _number(value: str, name: str, path: Path, lineno: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConversionError(f"{path}, line {lineno}: field {name!r} is not a number: {value!r}") from None


def _read_ratings_lines(path: Path, separator: str, options: Options, notes: List[str]) -> InteractionLog:
    log = InteractionLog()
    bad = BadLines(path)
    names = ("user", "item", "rating", "timestamp")
    for lineno, fields in _split_lines(path, separator, 4, bad, options.strict):
        for name, value in zip(names, fields):
            if not value.strip():
                raise ConversionError(f"{path}, line {lineno}: required field {name!r} is empty")
        log.add(fields[0].strip(), fields[1].strip(),
                _number(fields[2], "rating", path, lineno), _number(fields[3], "timestamp", path, lineno))
    if bad.note():
        notes.append(bad.note())
    return log


def _read_ratings_csv(path: Path) -> InteractionLog:
    columns = ["userId", "movieId", "rating", "timestamp"]
    try:
        frame = pd.read_csv(path, usecols=columns, dtype={"userId": np.int64, "movieId": np.int64,
                                                           "rating": np.float32, "timestamp": np.float64})
    except ValueError as err:
        raise ConversionError(f"{path}: {err} (expected header {','.join(columns)})") from err
    if frame.isna().any().any():
        row = int(np.flatnonzero(frame.isna().any(axis=1).to_numpy())[0])
        field = frame.columns[frame.iloc[row].isna().to_numpy()][0]
        raise ConversionError(f"{path}, line {row + 2}: required field {field!r} is empty")
    return InteractionLog.from_arrays(frame["userId"].to_numpy(), frame["movieId"].to_numpy(),
                                      frame["rating"].to_numpy(), frame["timestamp"].to_numpy())


def _movies(files: Sequence[Path], log: InteractionLog, text: ItemText, options: Options, notes: List[str]) -> None:
    movies_dat = find_one(files, lambda n: n == "movies.dat", "movies.dat", needed=False)
    movies_csv = find_one(files, lambda n: n == "movies.csv", "movies.csv", needed=False)
    u_item = find_one(files, lambda n: n == "u.item", "u.item", needed=False)
    ids = log.item_ids
    if movies_csv is not None:
        with open_text(movies_csv) as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if header[:3] != ["movieId", "title", "genres"]:
                raise ConversionError(f"{movies_csv}, line 1: expected header movieId,title,genres, found {','.join(header)}")
            for row in reader:
                if len(row) >= 3 and row[0] in ids:
                    title, year = split_title(row[1])
                    text.set(ids[row[0]], title=title, year=year, genres=_genres(row[2]))
    elif movies_dat is not None:
        bad = BadLines(movies_dat)
        for _, fields in _split_lines(movies_dat, "::", 3, bad, options.strict):
            if fields[0] in ids:
                title, year = split_title(fields[1])
                text.set(ids[fields[0]], title=title, year=year, genres=_genres(fields[2]))
        if bad.note():
            notes.append(bad.note())
    elif u_item is not None:
        genre_file = find_one(files, lambda n: n == "u.genre", "u.genre", needed=False)
        genres = _ml100k_genres(genre_file) if genre_file else list(ML100K_GENRES)
        bad = BadLines(u_item)
        for _, fields in _split_lines(u_item, "|", 5 + len(genres), bad, options.strict):
            if fields[0] in ids:
                title, year = split_title(fields[1])
                flags = fields[5:5 + len(genres)]
                names = " ".join(g for g, flag in zip(genres, flags) if flag.strip() == "1")
                text.set(ids[fields[0]], title=title, year=year, genres=names)
        if bad.note():
            notes.append(bad.note())
    else:
        raise ConversionError("movielens needs the movie file: movies.csv, movies.dat or u.item")


def _ml100k_genres(path: Path) -> List[str]:
    names = {}
    with open_text(path, encoding="latin-1") as handle:
        for line in handle:
            if "|" in line:
                name, index = line.strip().rsplit("|", 1)
                names[int(index)] = name
    return [names[i] for i in sorted(names)]


def _users(files: Sequence[Path], options: Options, notes: List[str]) -> Tuple[Optional[pd.DataFrame], Optional[Dict[str, str]]]:
    users_dat = find_one(files, lambda n: n == "users.dat", "users.dat", needed=False)
    u_user = find_one(files, lambda n: n == "u.user", "u.user", needed=False)
    if users_dat is not None:
        path, separator, order = users_dat, "::", ("user_id", "gender", "age", "occupation", "zip_code")
    elif u_user is not None:
        path, separator, order = u_user, "|", ("user_id", "age", "gender", "occupation", "zip_code")
    else:
        return None, None
    bad = BadLines(path)
    rows = [fields[:5] for _, fields in _split_lines(path, separator, 5, bad, options.strict)]
    if bad.note():
        notes.append(bad.note())
    frame = pd.DataFrame(rows, columns=list(order))
    frame["user_id"] = frame["user_id"].str.strip()
    types = {"user_id": "token", "gender": "token", "age": "token", "occupation": "token", "zip_code": "token"}
    return frame[list(types)], types


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    add_processing_arguments(parser, "kcore", "drop_items_without_meta", "dedupe", "max_text_len")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Convert a MovieLens release (folder or its files) into a leave-one-out dataset."""
    files = expand_inputs(inputs)
    notes: List[str] = []
    ratings_csv = find_one(files, lambda n: n == "ratings.csv", "ratings.csv", needed=False)
    ratings_dat = find_one(files, lambda n: n == "ratings.dat", "ratings.dat", needed=False)
    u_data = find_one(files, lambda n: n == "u.data", "u.data", needed=False)
    if ratings_csv is not None:
        log = _read_ratings_csv(ratings_csv)
    elif ratings_dat is not None:
        log = _read_ratings_lines(ratings_dat, "::", options, notes)
    elif u_data is not None:
        log = _read_ratings_lines(u_data, "\t", options, notes)
    else:
        raise ConversionError("movielens needs the ratings: ratings.csv (ml-20m/25m/32m), ratings.dat (ml-1m) or u.data (ml-100k)")
    text = ItemText(TEXT_FIELDS, options.text_limit(RAW_TEXT_LEN))
    _movies(files, log, text, options, notes)
    users, user_types = _users(files, options, notes)
    return write_interaction_dataset(
        log, text, output, options, FORMAT, DEFAULT_KCORE, notes,
        item_types=ITEM_TYPES, users=users, user_types=user_types,
    )
