"""VQRec on Amazon Scientific (the UniSRec / VQ-Rec paper split) against RecBole's SASRec.

    python benchmarks/vqrec_scientific.py [--epochs 10] [--profile cpu] [--data_root dataset]

Runs, each in its own subprocess, on the same data, protocol (leave-one-out, full ranking) and
seed: SASRec; VQRec trained from scratch (transductive_ft); VQRec pre-trained on Office
(another domain, ``train_stage=pretrain``) and fine-tuned on Scientific (inductive_ft with
``pretrained_file``, permutation, frozen encoder as in the paper). Prints every row with the
equivalent command and writes benchmarks/results/vqrec_scientific.{json,md}. Convert the data
first (``--prepare`` does it from ../shared/data).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbole_llm.benchmark import PROFILES, METRICS, prepare_dataset, run_in_subprocess  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402

PAPER = {"recall@10": 0.1211, "ndcg@10": 0.0643, "recall@50": 0.2369, "ndcg@50": 0.0897}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every run (early stopping may end sooner)")
    parser.add_argument("--pretrain_epochs", type=int, default=10, help="epochs of pre-training on Office")
    parser.add_argument("--permutation_epochs", type=int, default=1,
                        help="fine-tuning epochs that learn only the code permutation")
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="model sizes (recbole_llm.benchmark)")
    parser.add_argument("--data_root", default=str(REPO / "dataset"), help="folder holding Scientific/ and Office/")
    parser.add_argument("--shared_data", default=str(REPO.parent / "shared" / "data"), help="raw data for --prepare")
    parser.add_argument("--prepare", action="store_true", help="convert Scientific and Office when missing")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    return parser.parse_args()


def newest_checkpoint(folder: Path) -> str:
    files = sorted(folder.glob("VQRec-*.pth"), key=lambda f: f.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"pre-training wrote no checkpoint into {folder}")
    return str(files[-1])


def run(name: str, model: str, dataset: str, data_root: Path, overrides: Dict[str, Any], logs: Path) -> Dict[str, Any]:
    config_files = [str(data_root / dataset / f"{dataset}.yaml")]
    overrides = {"data_path": str(data_root), **overrides}
    print(f"running {name} ...", flush=True)
    row = run_in_subprocess(model, dataset, config_files, overrides, logs / f"vqrec_{name}.log")
    if row is None:
        raise RuntimeError(f"{name} failed; see {logs / f'vqrec_{name}.log'}")
    row["run"] = name
    print(json.dumps({k: row[k] for k in ("run", *METRICS, "epochs", "train_seconds_per_epoch", "command")}), flush=True)
    return row


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [f"Scientific (paper split), profile {meta['profile']}, epochs <= {meta['epochs']}, "
             f"pre-training epochs {meta['pretrain_epochs']}, {meta['device']}", "",
             "| run | R@10 | N@10 | R@50 | N@50 | epochs | train s/epoch |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        metrics = " | ".join(f"{row[m]:.4f}" for m in METRICS)
        lines.append(f"| {row['run']} | {metrics} | {row['epochs']} | {row['train_seconds_per_epoch']:.1f} |")
    paper = " | ".join(f"{PAPER[m]:.4f}" for m in METRICS)
    lines.append(f"| VQ-Rec paper (5 pre-training domains, BERT, GPU) | {paper} | - | - |")
    lines += ["", "Commands:"] + [f"- {row['run']}: `{row['command']}`" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    data_root, out = Path(args.data_root).resolve(), Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for dataset in ("Scientific", "Office"):
        if args.prepare:
            prepare_dataset(dataset, data_root, Path(args.shared_data))
    # the paper split's histories are up to 50 items long: the encoder must read them all
    sizes = {**PROFILES[args.profile], "epochs": args.epochs, "MAX_ITEM_LIST_LENGTH": 50,
             "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5}
    pretrain_dir = out / "logs" / "vqrec_pretrain_office"
    rows = [
        run("SASRec", "SASRec", "Scientific", data_root, sizes, logs),
        run("VQRec (no pre-training, transductive_ft)", "VQRec", "Scientific", data_root,
            {**sizes, "train_stage": "transductive_ft"}, logs),
    ]
    pretrain = run("VQRec pre-training on Office", "VQRec", "Office", data_root,
                   {**sizes, "epochs": args.pretrain_epochs, "train_stage": "pretrain",
                    "checkpoint_dir": str(pretrain_dir)}, logs)
    checkpoint = newest_checkpoint(pretrain_dir)
    rows.append(run("VQRec (pre-trained on Office, inductive_ft)", "VQRec", "Scientific", data_root,
                    {**sizes, "train_stage": "inductive_ft", "pretrained_file": checkpoint,
                     "permutation_epochs": args.permutation_epochs}, logs))
    meta = {"profile": args.profile, "epochs": args.epochs, "pretrain_epochs": args.pretrain_epochs,
            "permutation_epochs": args.permutation_epochs,
            "device": rows[0]["versions"]["device"], "versions": rows[0]["versions"],
            "command": "python benchmarks/vqrec_scientific.py " + " ".join(sys.argv[1:]),
            "paper": PAPER, "pretraining_run": pretrain}
    payload = json.dumps({**meta, "rows": rows}, indent=2)
    atomic_write(out / "vqrec_scientific.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    table = markdown(rows, meta)
    atomic_write(out / "vqrec_scientific.md", lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))
    print(meta["command"])
    print(table)


if __name__ == "__main__":
    main()
