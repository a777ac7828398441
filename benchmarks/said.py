"""SAID vs SASRec on Amazon Scientific and Office, plus SAID's stage-1 cost and reconstruction loss.

    python benchmarks/said.py --datasets Office Scientific

Both models train on the same converted data, protocol (leave-one-out, full ranking), seed and
``cpu`` size profile as the results table (``python -m recbole_llm.benchmark``), each in its own
subprocess so that peak memory is its own. SAID's stage 1 runs inside its subprocess with the
packaged SmolLM2-135M-Instruct (or ``--said_llm``); its training seconds, peak memory and
held-out reconstruction loss before/after, epochs and items/second come from the run's
preparation report. ``--said_set`` changes
SAID's settings (e.g. ``said_epochs=3 freeze_item_emb=False``). Writes
``benchmarks/results/<name>.json`` and ``<name>.md``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbole_llm.benchmark import (  # noqa: E402
    METRICS, dataset_config_files, job_overrides, prepare_dataset, run_in_subprocess, versions,
)
from recbole_llm.utils import atomic_write  # noqa: E402


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| data | model | R@10 | N@10 | R@50 | N@50 | epochs | s/epoch | peak RAM MB |", "|" + "---|" * 9]
    for row in rows:
        metrics = " | ".join(f"{row[m]:.4f}" for m in METRICS)
        lines.append(f"| {row['dataset']} | {row['model']} | {metrics} | {row['epochs']} | "
                     f"{row['train_seconds_per_epoch']:.1f} | {row['peak_ram_mb']:.0f} |")
    lines += ["", "| data | stage-1 items | epochs (best / run) | train s | items/s | peak RSS MB | "
              "held-out loss before | best |", "|" + "---|" * 8]
    for row in rows:
        stats = row.get("preparation", {}).get("said_stage1")
        if stats:
            lines.append(f"| {row['dataset']} | {stats['train_items'] + stats['eval_items']} | "
                         f"{stats['best_epoch']} / {stats['epochs_run']} | {stats['train_seconds']} | "
                         f"{stats['items_per_second']} | {stats['peak_rss_mb']} | {stats['loss_before']:.4f} | "
                         f"{stats['loss_after']:.4f} |")
    lines += [""] + [f"{dataset}: SAID N@10 {change:+.1%} relative to SASRec (the paper reports +5 to +15%)"
                     for dataset, change in ndcg_change(rows).items()]
    return "\n".join(lines) + "\n"


def ndcg_change(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Per dataset: SAID's NDCG@10 relative to SASRec's (both rows must be present)."""
    by_dataset: Dict[str, Dict[str, float]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], {})[row["model"]] = row["ndcg@10"]
    return {dataset: scores["SAID"] / scores["SASRec"] - 1
            for dataset, scores in by_dataset.items() if "SAID" in scores and scores.get("SASRec")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["Office", "Scientific"])
    parser.add_argument("--data_root", default="dataset", help="where converted datasets live (relative to the current folder)")
    parser.add_argument("--shared_data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=15, help="stage-2 epochs (both models)")
    parser.add_argument("--models", nargs="+", default=["SASRec", "SAID"], choices=["SASRec", "SAID"])
    parser.add_argument("--said_set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="SAID settings, e.g. said_llm=/path/to/lm said_epochs=3 freeze_item_emb=False")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="said", help="output file stem under --out")
    args = parser.parse_args()
    command = "python benchmarks/said.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    out, data_root = Path(args.out), Path(args.data_root)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    common = {"epochs": args.epochs, "seed": 2020, "show_progress": False, "data_path": str(data_root)}
    said = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.said_set)}
    rows: List[Dict[str, Any]] = []
    for dataset in args.datasets:
        prepare_dataset(dataset, data_root, Path(args.shared_data))
        config_files = dataset_config_files(dataset, data_root)
        for model in args.models:
            print(f"{model} on {dataset} ...", flush=True)
            overrides = job_overrides("cpu", model, dataset, {**common, **(said if model == "SAID" else {})})
            row = run_in_subprocess(model, dataset, config_files, overrides,
                                    out / "logs" / f"{args.name}-{dataset}-{model}.log", args.threads)
            if row is not None:
                rows.append(row)
                print(f"  N@10 {row['ndcg@10']:.4f} R@10 {row['recall@10']:.4f} wall {row['wall_seconds']} s",
                      flush=True)
        payload = json.dumps({"command": command, "said_overrides": said, "rows": rows,
                              "versions": versions("cpu")}, indent=2)
        atomic_write(out / f"{args.name}.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
        table = f"`{command}`\n\n" + markdown(rows)
        atomic_write(out / f"{args.name}.md", lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))
    print(f"{command}\n{json.dumps(versions('cpu'))}\n" + markdown(rows))


if __name__ == "__main__":
    main()
