"""ReChorus format (Wang et al., SIGIR'20; https://github.com/THUwangcy/ReChorus).

* ``train.csv``: tab separated ``user_id item_id time`` (1-based ids, time in seconds);
* ``dev.csv`` / ``test.csv``: ``user_id item_id time neg_items``, one row per user (the
  sampled negatives are not kept);
* ``<Name>.text`` (``id text``: ASIN -> "title category brand") and ``<Name>.item2index``
  (ASIN -> id), where the data set comes with item text.

Real timestamps are kept. The dev and test rows are each user's last two items: they are
written after the user's training rows, and a dev/test time earlier than the user's last
training time is raised to it, so RecBole's chronological leave-one-out split (stable on ties)
reproduces the upstream split. A dev/test row of a user who has no training row would become a
user without a training history: such rows are dropped and counted
(``--keep-users-without-train`` keeps them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from recbole_llm.convert.core import (
    ConversionError,
    ConversionResult,
    InteractionLog,
    ItemText,
    Options,
    add_processing_arguments,
    expand_inputs,
    find_one,
    tsv_lines,
    write_interaction_dataset,
)
from recbole_llm.convert.unisrec import read_index, read_text

FORMAT = "rechorus"
DEFAULT_KCORE = 0
PARTS = ("train", "dev", "test")
COLUMNS = ("user_id", "item_id", "time")


def _read_part(path: Path):
    lines = tsv_lines(path)
    _, header = next(lines, (1, []))
    column = {name: i for i, name in enumerate(header)}
    for name in COLUMNS:
        if name not in column:
            raise ConversionError(f"{path}, line 1: required column {name!r} is missing from the header")
    indices = [column[name] for name in COLUMNS]
    for lineno, fields in lines:
        if len(fields) < len(header):
            raise ConversionError(f"{path}, line {lineno}: {len(fields)} fields, the header has {len(header)}")
        user, item, time = (fields[i].strip() for i in indices)
        for name, value in zip(COLUMNS, (user, item, time)):
            if not value:
                raise ConversionError(f"{path}, line {lineno}: required field {name!r} is empty")
        try:
            seconds = float(time)
        except ValueError:
            raise ConversionError(f"{path}, line {lineno}: field 'time' is not a number: {time!r}") from None
        yield user, item, seconds


def add_arguments(parser) -> None:
    """The command-line flags of this format."""
    add_processing_arguments(parser, "kcore", "drop_items_without_meta", "dedupe", "max_text_len")
    parser.add_argument("--keep-users-without-train", action="store_true",
                        help="keep dev/test rows of users absent from train.csv (dropped by default)")


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Convert train/dev/test csv files (plus item text) into a leave-one-out dataset."""
    files = expand_inputs(inputs)
    paths = {part: find_one(files, lambda n, p=part: n == f"{p}.csv", f"{part}.csv") for part in PARTS}
    text_file = find_one(files, lambda n: n.endswith(".text"), "item text (<Name>.text)")
    index_file = find_one(files, lambda n: n.endswith(".item2index"), "item index (<Name>.item2index)", needed=False)
    asin = read_index(index_file) if index_file is not None else None
    texts = read_text(text_file, options.text_limit(0))

    rows: Dict[str, list] = {}
    latest: Dict[str, float] = {}
    raised = 0
    without_train: Dict[str, int] = {}
    train_users = set()
    for part in PARTS:
        for user, item, seconds in _read_part(paths[part]):
            if part == "train":
                train_users.add(user)
            elif user not in train_users:
                without_train[part] = without_train.get(part, 0) + 1
                if not options.keep_users_without_train:
                    continue
            if asin is not None:
                if item not in asin:
                    raise ConversionError(f"{paths[part]}: item id {item} is not in {index_file}")
                item = asin[item]
            if part != "train" and seconds < latest.get(user, seconds):
                seconds, raised = latest[user], raised + 1
            latest[user] = max(seconds, latest.get(user, seconds))
            rows.setdefault(user, []).append((item, seconds))

    log = InteractionLog()
    for user, sequence in rows.items():
        for item, seconds in sequence:
            log.add(user, item, 1.0, seconds)
    notes: List[str] = []
    for part, count in without_train.items():
        action = "kept" if options.keep_users_without_train else "dropped"
        notes.append(f"{paths[part]}: {count} row(s) of users absent from train.csv, {action}")
    if raised:
        notes.append(f"{raised} dev/test time(s) were earlier than the user's last training time and were raised to it")
    text = ItemText(("text",), options.text_limit(0))
    for item, code in log.item_ids.items():
        if item in texts:
            text.set(code, text=texts[item])
    return write_interaction_dataset(log, text, output, options, FORMAT, DEFAULT_KCORE, notes, with_rating=False)
