"""Mix several converted datasets into one dataset, e.g. for multi-domain VQ-Rec pre-training.

    python -m recbole_llm.data.multi_domain --datasets Office Scientific --data_root dataset \\
        --output dataset/OfficeScientific

Each source is read as RecBole reads it (its own ``<Name>/<Name>.yaml``: plain ``.inter`` files or
pre-split benchmark files), and written into one ordinary atomic dataset: users and items are
prefixed with their domain (``Office/0``), each user's items keep their order (``timestamp`` is
the position), and each item's text is its source's assembled text (one ``text`` field). Training
a model on it fits everything on the union of the domains, e.g. VQ-Rec's quantizer on the union
of the pre-training items' text embeddings, so all domains share one code space.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pandas as pd
import yaml

from recbole_llm.text.assemble import assemble_item_texts
from recbole_llm.utils import atomic_write


def _load_source(name: str, data_root: Path):
    """The RecBole Dataset of one converted source, loaded with its own yaml."""
    from recbole.data.dataset import Dataset

    from recbole_llm.config import Config

    config_file = data_root / name / f"{name}.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: convert dataset {name!r} first (python -m recbole_llm.convert)")
    config = Config(model="SASRec", dataset=name, config_file_list=[str(config_file)],
                    config_dict={"data_path": str(data_root), "state": "ERROR"})
    return Dataset(config), config


def user_sequences(dataset, config) -> Dict[int, List[int]]:
    """Each user's items in order (internal ids). Pre-split files (``item_id_list`` rows) give
    each user's longest history plus its target; plain files are ordered by time when present."""
    uid, iid = dataset.uid_field, dataset.iid_field
    frame = dataset.inter_feat
    list_field = iid + config["LIST_SUFFIX"]
    if list_field in frame.columns:
        sequences: Dict[int, List[int]] = {}
        for user, history, target in zip(frame[uid], frame[list_field], frame[iid]):
            items = [int(i) for i in history if int(i) != 0] + [int(target)]
            if len(items) > len(sequences.get(int(user), [])):
                sequences[int(user)] = items
        return sequences
    if dataset.time_field and dataset.time_field in frame.columns:
        frame = frame.sort_values([uid, dataset.time_field], kind="stable")
    return {int(user): [int(i) for i in group[iid]] for user, group in frame.groupby(uid, sort=True)}


def domain_frames(name: str, data_root: Path) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) of one source with domain-prefixed tokens and one ``text`` column."""
    dataset, config = _load_source(name, data_root)
    texts = assemble_item_texts(dataset, config["text_fields"], config["missing_text"] or "empty")
    user_tokens = dataset.field2id_token[dataset.uid_field]
    item_tokens = dataset.field2id_token[dataset.iid_field]
    rows = [
        (f"{name}/{user_tokens[user]}", f"{name}/{item_tokens[item]}", float(position))
        for user, items in user_sequences(dataset, config).items()
        for position, item in enumerate(items)
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({
        "item_id": [f"{name}/{token}" for token in item_tokens[1:]],
        "text": [" ".join(text.split()) for text in texts[1:]],
    })
    return inter, items


def _write_atomic_file(path: str, frame: pd.DataFrame) -> None:
    """Tab-separated, no quoting (RecBole reads fields verbatim); texts hold no tabs or newlines."""
    lines = ["\t".join(frame.columns)] + ["\t".join(map(str, row)) for row in frame.itertuples(index=False)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def merge_domains(names: Sequence[str], data_root: Path, output: Path) -> Path:
    """Write the mixed dataset ``output`` (folder ``<output>/<output name>.{inter,item,yaml}``)."""
    if not names:
        raise ValueError("name at least one source dataset")
    output = Path(output).resolve()
    merged = output.name
    frames = [domain_frames(name, Path(data_root).resolve()) for name in names]
    inter = pd.concat([f[0] for f in frames], ignore_index=True)
    items = pd.concat([f[1] for f in frames], ignore_index=True)
    inter.columns = ["user_id:token", "item_id:token", "timestamp:float"]
    items.columns = ["item_id:token", "text:token_seq"]
    settings = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "text"]},
        "text_fields": ["text"],
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    }
    comment = (f"# Mixed by `python -m recbole_llm.data.multi_domain` from {', '.join(names)}.\n"
               f"# Use with: --dataset={merged} --data_path={output.parent} --config_files=<this file>\n")
    for suffix, frame in ((".inter", inter), (".item", items)):
        atomic_write(output / f"{merged}{suffix}", lambda tmp, frame=frame: _write_atomic_file(tmp, frame))
    atomic_write(output / f"{merged}.yaml",
                 lambda tmp: Path(tmp).write_text(comment + yaml.safe_dump(settings, sort_keys=False), encoding="utf-8"))
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mix converted datasets into one (domain-prefixed ids).")
    parser.add_argument("--datasets", nargs="+", required=True, help="source dataset names under --data_root")
    parser.add_argument("--data_root", default="dataset", help="folder holding <Name>/<Name>.yaml of every source")
    parser.add_argument("--output", required=True, help="folder of the mixed dataset, e.g. dataset/OfficeScientific")
    args = parser.parse_args(argv)
    folder = merge_domains(args.datasets, Path(args.data_root), Path(args.output))
    print(f"wrote {folder}: pre-train with python run_recbole_llm.py --model=VQRec --dataset={folder.name} "
          f"--data_path={folder.parent} --config_files={folder / (folder.name + '.yaml')} --train_stage=pretrain")


if __name__ == "__main__":
    main()
