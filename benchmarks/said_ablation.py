"""SAID ablations: which stage-1 setting makes the frozen table win, against SASRec on the same data.

    python benchmarks/said_ablation.py --dataset Office --settings one-pass converged --threads 1
    python benchmarks/said_ablation.py --dataset Office --users 300 --set said_llm=/path/to/lm  # a slice

Every setting is one SAID run (both stages, the frozen table unless a setting says otherwise),
followed by one SASRec run, each in its own subprocess, with the ``cpu`` size profile of the results
table, the same seed, split and stage-2 epochs. ``--users`` trains on a seeded sample of the
users (``<dataset>-u<N>``, written beside the data), ``--items`` keeps only the interactions of a
seeded sample of the items. ``--set KEY=VALUE`` applies to every SAID run (``--sasrec_set`` to
SASRec). Writes ``<out>/<name>.json`` and ``.md`` (N@10 against SASRec, and per setting the
stage-1 epochs run, stop reason, losses and items/second) and ``<name>_stage1.png``, the stage-1
train and held-out reconstruction loss per epoch of every setting.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbole_llm.benchmark import (  # noqa: E402
    METRICS, dataset_config_files, job_overrides, prepare_dataset, run_in_subprocess, versions,
)
from recbole_llm.utils import atomic_write  # noqa: E402

CONVERGED_EPOCHS = 8  # stage-1 maximum of the converged settings (--converged_epochs); early stopping may end sooner
SETTINGS: Dict[str, Dict[str, Any]] = {
    "one-pass": {"said_epochs": 1},
    "one-pass, 16 text tokens": {"said_epochs": 1, "said_max_text_tokens": 16},
    "converged": {"said_epochs": CONVERGED_EPOCHS},
    "converged, fine-tuned table": {"said_epochs": CONVERGED_EPOCHS, "freeze_item_emb": False},
    "converged, projector 256": {"said_epochs": CONVERGED_EPOCHS, "said_projector_hidden": 256},
    "converged, 1 soft token": {"said_epochs": CONVERGED_EPOCHS, "said_soft_tokens": 1},
    "converged, 4 soft tokens": {"said_epochs": CONVERGED_EPOCHS, "said_soft_tokens": 4},
    "converged, prompt": {"said_epochs": CONVERGED_EPOCHS, "said_prompt": "Product description:"},
    "converged, 16 text tokens": {"said_epochs": CONVERGED_EPOCHS, "said_max_text_tokens": 16},
    "converged, 64 text tokens": {"said_epochs": CONVERGED_EPOCHS, "said_max_text_tokens": 64},
    "converged, random init": {"said_epochs": CONVERGED_EPOCHS, "said_embedding_init": "random"},
}


def _key_values(items: List[str]) -> Dict[str, Any]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        values[key] = yaml.safe_load(value)
    return values


def _settings(name: str, converged_epochs: int) -> Dict[str, Any]:
    values = dict(SETTINGS[name])
    if values["said_epochs"] == CONVERGED_EPOCHS:
        values["said_epochs"] = converged_epochs
    return values


def write_slice(data_root: Path, dataset: str, users: int, items: int, seed: int) -> str:
    """Write a seeded slice of ``dataset`` (``users`` users, then only ``items`` items' interactions;
    0 keeps all) as ``<dataset>-u<users>-i<items>`` beside it and return its name."""
    name = dataset + (f"-u{users}" if users else "") + (f"-i{items}" if items else "")
    source, target = data_root / dataset, data_root / name
    header, *rows = (source / f"{dataset}.inter").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)

    def sample(rows: list, column: int, count: int, what: str) -> list:
        values = sorted({row.split("\t")[column] for row in rows})
        if count > len(values):
            raise SystemExit(f"--{what} {count} exceeds the {len(values)} {what} left in {source}")
        kept = set(rng.sample(values, count))
        return [row for row in rows if row.split("\t")[column] in kept]

    if users:
        rows = sample(rows, 0, users, "users")
    if items:
        rows = sample(rows, 1, items, "items")
    present = {row.split("\t")[1] for row in rows}
    item_header, *item_rows = (source / f"{dataset}.item").read_text(encoding="utf-8").splitlines()
    target.mkdir(parents=True, exist_ok=True)
    files = {f"{name}.inter": [header] + rows,
             f"{name}.item": [item_header] + [row for row in item_rows if row.split("\t")[0] in present]}
    for file, lines in files.items():
        atomic_write(target / file, lambda tmp, lines=lines: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return name


def stage1_report(row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    return row.get("preparation", {}).get("said_stage1")


def markdown(rows: List[Dict[str, Any]]) -> str:
    sasrec = next((row for row in rows if row["model"] == "SASRec"), None)
    lines = ["| setting | R@10 | N@10 | R@50 | N@50 | N@10 vs SASRec | stage-1 epochs (best / run) | stop | "
             "held-out loss before → best | stage-1 s | items/s |", "|" + "---|" * 11]
    for row in rows:
        metrics = " | ".join(f"{row[m]:.4f}" for m in METRICS)
        change = f"{row['ndcg@10'] / sasrec['ndcg@10'] - 1:+.1%}" if sasrec and row is not sasrec and sasrec["ndcg@10"] else ""
        stats = stage1_report(row)
        if stats:
            stage = (f"{stats['best_epoch']} / {stats['epochs_run']} | {stats['stop_reason']} | "
                     f"{stats['loss_before']:.3f} → {stats['loss_after']:.3f} | {stats['train_seconds']} | "
                     f"{stats['items_per_second']}")
        else:
            stage = " |  |  |  | "
        lines.append(f"| {row['setting']} | {metrics} | {change} | {stage} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: List[Dict[str, Any]], path: Path) -> None:
    """Train (dashed) and held-out (solid) stage-1 loss per epoch of every SAID setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        stats = stage1_report(row)
        if not stats or not stats.get("curve"):
            continue
        epochs = [0] + [point["epoch"] for point in stats["curve"]]
        held_out = [stats["loss_before"]] + [point["held_out_loss"] for point in stats["curve"]]
        line, = axis.plot(epochs, held_out, marker="o", label=f"{row['setting']} (held-out)")
        axis.plot(epochs[1:], [point["train_loss"] for point in stats["curve"]], linestyle="--", color=line.get_color())
    axis.set_xlabel("stage-1 epoch")
    axis.set_ylabel("reconstruction loss (nats/token)")
    axis.set_title("SAID stage 1: held-out (solid) and train (dashed) loss")
    axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--data_root", default="dataset", help="where converted datasets live")
    parser.add_argument("--shared_data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--config_files", nargs="*", default=None, help="default: the converter's <dataset>.yaml")
    parser.add_argument("--users", type=int, default=0, help="a seeded sample of this many users (0: all)")
    parser.add_argument("--items", type=int, default=0, help="keep this many items' interactions (0: all)")
    parser.add_argument("--settings", nargs="+", default=["one-pass", "converged"], choices=sorted(SETTINGS))
    parser.add_argument("--no_sasrec", action="store_true", help="skip the SASRec row")
    parser.add_argument("--epochs", type=int, default=30, help="stage-2 epochs (both models)")
    parser.add_argument("--converged_epochs", type=int, default=CONVERGED_EPOCHS,
                        help="said_epochs (the maximum) of the converged settings")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="for every SAID run")
    parser.add_argument("--sasrec_set", nargs="*", default=[], metavar="KEY=VALUE", help="for the SASRec run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="said_ablation", help="output file stem under --out")
    args = parser.parse_args(argv)
    command = "python benchmarks/said_ablation.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    out, data_root = Path(args.out), Path(args.data_root)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.config_files is None:
        prepare_dataset(args.dataset, data_root, Path(args.shared_data))
        config_files = dataset_config_files(args.dataset, data_root)
    else:
        config_files = args.config_files
    dataset = write_slice(data_root, args.dataset, args.users, args.items, 2020) if args.users or args.items \
        else args.dataset
    common = {"epochs": args.epochs, "seed": 2020, "show_progress": False, "data_path": str(data_root)}
    jobs = [(name, "SAID", {**_settings(name, args.converged_epochs), **_key_values(args.set)}) for name in args.settings]
    jobs += [] if args.no_sasrec else [("SASRec", "SASRec", _key_values(args.sasrec_set))]
    rows: List[Dict[str, Any]] = []
    for setting, model, extra in jobs:
        print(f"{setting} on {dataset} ...", flush=True)
        overrides = job_overrides("cpu", model, dataset, {**common, **extra})
        row = run_in_subprocess(model, dataset, config_files, overrides,
                                out / "logs" / f"{args.name}-{setting.replace(' ', '_').replace(',', '')}.log",
                                args.threads)
        if row is None:
            continue
        rows.append({**row, "setting": setting, "setting_overrides": extra})
        print(f"  N@10 {row['ndcg@10']:.4f} R@10 {row['recall@10']:.4f} wall {row['wall_seconds']} s", flush=True)
        payload = json.dumps({"command": command, "dataset": dataset, "rows": rows, "versions": versions("cpu")},
                             indent=2)
        atomic_write(out / f"{args.name}.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
        table = f"`{command}`\n\n" + markdown(rows)
        atomic_write(out / f"{args.name}.md", lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))
        plot_curves(rows, out / f"{args.name}_stage1.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
