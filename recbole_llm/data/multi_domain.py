"""Mix several converted datasets into one dataset, e.g. for multi-domain VQ-Rec pre-training.

    python -m recbole_llm.convert multi_domain --input dataset/Office dataset/Scientific \\
        --output dataset/OfficeScientific

(or ``python -m recbole_llm.data.multi_domain --datasets Office Scientific --data_root dataset
--output dataset/OfficeScientific``). Each input is a dataset folder ``<Name>/`` read the way its
own ``<Name>.yaml`` tells RecBole to read it (plain ``.inter`` files or pre-split benchmark
files), and all are written into one ordinary atomic dataset: users and items are prefixed with
their domain (``Office/0``), each user's items keep their order (``timestamp`` is the position),
and each item's text is its source's assembled text (one ``text`` field: the ``text_fields``
joined with ". "). Training a model on it fits everything on the union of the domains, e.g.
VQ-Rec's quantizer on the union of the pre-training items' text embeddings, so all domains
share one code space. Sources whose yaml asks RecBole to filter interactions are refused: the
merge reads the files as they are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pandas as pd
import yaml

from recbole_llm.convert import convert as run_conversion
from recbole_llm.convert.core import ConversionError, ConversionResult, Options, read_atomic_file, write_dataset

FORMAT = "multi_domain"
#: RecBole settings that filter interactions at load time, and their no-filter values.
NO_FILTER = {"rm_dup_inter": (None,), "val_interval": (None,),
             "user_inter_num_interval": (None, "[0,inf)"), "item_inter_num_interval": (None, "[0,inf)")}


def _settings(folder: Path) -> dict:
    path = folder / f"{folder.name}.yaml"
    if not path.is_file():
        raise ConversionError(f"{path} not found: convert dataset {folder.name!r} first (python -m recbole_llm.convert)")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConversionError(f"{path}: not valid yaml ({err})") from None
    if not isinstance(settings, dict):
        raise ConversionError(f"{path}: expected a mapping of RecBole settings")
    for key, allowed in NO_FILTER.items():
        if settings.get(key) not in allowed:
            raise ConversionError(f"{path}: {key}={settings[key]!r} filters interactions, which the merge does not "
                                  "apply; merge unfiltered datasets")
    if not settings.get("text_fields"):
        raise ConversionError(f"{path}: text_fields is empty: name the item fields that make up the item text")
    return settings


def user_sequences(folder: Path, settings: dict) -> Dict[str, List[str]]:
    """Each user's raw item tokens in order. Pre-split files (history rows) give each user's
    longest history plus its target; plain files are ordered by time when there is one."""
    name = folder.name
    uid, iid = settings.get("USER_ID_FIELD", "user_id"), settings.get("ITEM_ID_FIELD", "item_id")
    parts = settings.get("benchmark_filename")
    if parts:
        list_field = iid + settings.get("LIST_SUFFIX", "_list")
        sequences: Dict[str, List[str]] = {}
        for part in parts:
            path = folder / f"{name}.{part}.inter"
            frame, types = read_atomic_file(path)
            for column in (uid, list_field, iid):
                if column not in types:
                    raise ConversionError(f"{path} has no {column!r} column (header: {list(types)})")
            for user, history, target in zip(frame[uid], frame[list_field], frame[iid]):
                items = history.split() + [target]
                if len(items) > len(sequences.get(user, [])):
                    sequences[user] = items
        return sequences
    path = folder / f"{name}.inter"
    frame, types = read_atomic_file(path)
    for column in (uid, iid):
        if column not in types:
            raise ConversionError(f"{path} has no {column!r} column (header: {list(types)})")
    time = settings.get("TIME_FIELD", "timestamp")
    if time in types:
        try:
            frame["_time"] = frame[time].astype(float)
        except ValueError as err:
            raise ConversionError(f"{path}: field {time!r} is not a number ({err})") from None
        frame = frame.sort_values([uid, "_time"], kind="stable")
    return {user: list(group[iid]) for user, group in frame.groupby(uid, sort=False)}


def _field_text(value: str, kind: str) -> str:
    if kind == "float" and value.strip():
        return str(float(value))
    return " ".join(value.split())


def item_texts(folder: Path, settings: dict) -> Dict[str, str]:
    """Each item's text: the ``text_fields`` of ``<Name>.item`` joined with ". " (empty parts skipped)."""
    path = folder / f"{folder.name}.item"
    if not path.is_file():
        raise ConversionError(f"{path} not found: the merge needs the item text")
    frame, types = read_atomic_file(path)
    iid = settings.get("ITEM_ID_FIELD", "item_id")
    fields = list(settings["text_fields"])
    missing = [f for f in [iid, *fields] if f not in types]
    if missing:
        raise ConversionError(f"{path} has no column(s) {missing} named by {folder.name}.yaml (header: {list(types)})")
    columns = [[_field_text(v, types[f]) for v in frame[f]] for f in fields]
    return {item: ". ".join(p for p in parts if p) for item, *parts in zip(frame[iid], *columns)}


def domain_frames(folder: Path) -> Tuple[pd.DataFrame, pd.DataFrame, List[str]]:
    """(interactions, items, notes) of one source with domain-prefixed tokens and one ``text`` column."""
    name = folder.name
    settings = _settings(folder)
    sequences = user_sequences(folder, settings)
    texts = item_texts(folder, settings)
    rows = [(f"{name}/{user}", f"{name}/{item}", float(position))
            for user, items in sequences.items() for position, item in enumerate(items)]
    tokens = list(texts) + sorted({item for items in sequences.values() for item in items} - set(texts))
    without = [t for t in tokens if not texts.get(t)]
    notes = []
    if without:
        message = f"{len(without)} of {len(tokens)} items of {name} have no text (e.g. {without[0]})"
        if settings.get("missing_text") == "error":
            raise ConversionError(message + f"; {name}.yaml sets missing_text: error")
        notes.append(message + "; they get empty text")
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"{name}/{t}" for t in tokens], "text": [texts.get(t, "") for t in tokens]})
    return inter, items, notes


def convert(inputs: Sequence[Path], output: Path, options: Options) -> ConversionResult:
    """Merge the converted dataset folders ``inputs`` into the dataset folder ``output``."""
    folders = [Path(p) for p in inputs]
    for folder in folders:
        if not folder.is_dir():
            raise ConversionError(f"{folder}: not a dataset folder (multi_domain merges converted datasets)")
    names = [folder.name for folder in folders]
    if len(set(names)) < len(names):
        raise ConversionError(f"the sources must have different names (their domain prefix): {', '.join(names)}")
    frames = [domain_frames(folder) for folder in folders]
    inter = pd.concat([f[0] for f in frames], ignore_index=True)
    items = pd.concat([f[1] for f in frames], ignore_index=True)
    notes = [note for f in frames for note in f[2]]
    return write_dataset(
        output, options, FORMAT, inter, {"user_id": "token", "item_id": "token", "timestamp": "float"},
        items, {"item_id": "token", "text": "token_seq"}, ["text"], notes,
    )


def merge_domains(names: Sequence[str], data_root: Path, output: Path, overwrite: bool = False) -> Path:
    """Merge the datasets ``<data_root>/<name>`` into ``output``; returns the written folder."""
    if not names:
        raise ConversionError("name at least one source dataset")
    return run_conversion(FORMAT, [Path(data_root) / name for name in names], output, overwrite=overwrite).path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mix converted datasets into one (domain-prefixed ids).")
    parser.add_argument("--datasets", nargs="+", required=True, help="source dataset names under --data_root")
    parser.add_argument("--data_root", default="dataset", help="folder holding <Name>/<Name>.yaml of every source")
    parser.add_argument("--output", required=True, help="folder of the mixed dataset, e.g. dataset/OfficeScientific")
    parser.add_argument("--overwrite", action="store_true", help="replace a mixed dataset written before")
    args = parser.parse_args(argv)
    try:
        folder = merge_domains(args.datasets, Path(args.data_root), Path(args.output), args.overwrite)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: pre-train with python run_recbole_llm.py --model=VQRec --dataset={folder.name} "
          f"--data_path={folder.parent} --config_files={folder / (folder.name + '.yaml')} --train_stage=pretrain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
