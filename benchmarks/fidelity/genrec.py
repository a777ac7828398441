"""TIGER beside RecBole3.0's ``tiger`` on identical data and identical semantic ids (CPU, small sizes).

    python benchmarks/fidelity/genrec.py --recbole3 /tmp/peers/RecBole3.0 \
        --recbole3_python /tmp/peers/rb3venv/bin/python --shared_data ../shared/data \
        --users 1000 --epochs 2 --seeds 2020

Both sides read the same users (the first ``--users`` of ``amazon-office/Office.inter.json``), the
same chronological leave-one-out split, and the same semantic ids: the released
``Office.index.rq-kmeans.json`` de-duplicated by the project's extra level (RecBole3.0 refuses
colliding ids, so it gets the de-duplicated ones too). Same T5 sizes, AdamW learning rate and
weight decay, batch, epochs, beam size, history length and seed; full ranking, history not
excluded (RecBole's evaluator does not exclude it, so RecBole3.0's ``exclude_history`` is off).
Differences that remain: RecBole3.0 prepends one user token to the encoder input and decodes
with ``generate`` (unconstrained; invalid ids are skipped); ours decodes with a trie.
The checkouts are read and run, never copied. A missing checkout skips its side.
Writes ``<out>/fidelity_genrec.json`` (rows in the fidelity schema) and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recbole_llm.benchmark import run_in_subprocess  # noqa: E402
from recbole_llm.quantize.semantic_ids import deduplicate, parse_code_index  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402

METRICS = ("ndcg@10", "recall@10", "ndcg@50", "recall@50")
CATEGORY = "Office_Products"  # only RecBole3.0's cache key
PEER_SUFFIX = ", RecBole3.0 tiger"


def shared_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The sizes and optimisation both sides train with."""
    return {"d_model": args.d_model, "d_ff": args.d_ff, "num_layers": args.layers, "num_decoder_layers": args.layers,
            "num_heads": args.heads, "d_kv": args.d_model // args.heads, "dropout_rate": 0.1,
            "learning_rate": args.learning_rate, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "epochs": args.epochs, "beam_size": args.beam, "history_items": 20}


def subset(shared: Path, users: int) -> Dict[str, List[int]]:
    sequences = json.loads((shared / "amazon-office" / "Office.inter.json").read_text(encoding="utf-8"))
    return {user: [int(item) for item in items] for user, items in list(sequences.items())[:users]}


def write_ours(sequences: Dict[str, List[int]], shared: Path, work: Path) -> Path:
    """LC-Rec json of the subset, converted by the project's ``lcrec`` converter; returns the data root."""
    raw = work / "lcrec"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "Office.inter.json").write_text(json.dumps(sequences), encoding="utf-8")
    items = json.loads((shared / "amazon-office" / "Office.item.json").read_text(encoding="utf-8"))
    used = {str(item) for history in sequences.values() for item in history}
    (raw / "Office.item.json").write_text(json.dumps({k: v for k, v in items.items() if k in used}), encoding="utf-8")
    root = work / "recbole"
    subprocess.run([sys.executable, "-m", "recbole_llm.convert", "lcrec", "--input", str(raw),
                    "--output", str(root / "Office")], check=True, stdout=subprocess.DEVNULL)
    return root


def write_recbole3(sequences: Dict[str, List[int]], index_file: Path, work: Path) -> Path:
    """RecBole3.0's parsed cache (its parser then skips the download) and its ``item_sids.json``."""
    items = sorted({item for history in sequences.values() for item in history})
    folder = work / "recbole3" / "amazon2014_retrieval" / CATEGORY / "sentence"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"user_id": user, "item_id": str(item), "timestamp": float(position), "overall": 5.0,
                         "label": None})
             for user, history in sequences.items() for position, item in enumerate(history)]
    (folder / "interactions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "users.jsonl").write_text("\n".join(json.dumps({"user_id": u}) for u in sequences) + "\n",
                                        encoding="utf-8")
    (folder / "items.jsonl").write_text(
        "\n".join(json.dumps({"item_id": str(item), "metadata_text": ""}) for item in items) + "\n", encoding="utf-8")
    codes = parse_code_index(index_file)
    ids, _ = deduplicate(np.array([codes[str(item)] for item in items], dtype=np.int64))  # same ids as ours: items in the same order
    sids = {str(position): [int(code) for code in row] for position, row in enumerate(ids)}
    (work / "item_sids.json").write_text(json.dumps(sids), encoding="utf-8")
    return work / "recbole3"


PEER_DRIVER = """
import json, sys, time
from recbole3.run import main
started = time.perf_counter()
result = main(json.loads(sys.argv[1]))
fit = result["fit"]
print("PEER_RESULT " + json.dumps({"test": result["test"], "wall": time.perf_counter() - started,
      "epoch_seconds": [e["elapsed_seconds"] for e in fit["train_history"]]}, default=str))
"""


def run_recbole3(python: str, checkout: Path, processed: Path, work: Path, settings: Dict[str, Any], seed: int,
                 log: Path) -> Optional[Dict[str, Any]]:
    overrides = [
        "dataset=amazon2014_retrieval", f"dataset.category={CATEGORY}", f"dataset.processed_dir={processed}",
        "model=tiger", f"model.sid_file={work / 'item_sids.json'}", f"model.d_model={settings['d_model']}",
        f"model.d_ff={settings['d_ff']}", f"model.num_layers={settings['num_layers']}",
        f"model.num_decoder_layers={settings['num_decoder_layers']}", f"model.num_heads={settings['num_heads']}",
        f"model.d_kv={settings['d_kv']}", f"model.num_beams={settings['beam_size']}",
        f"model.history_max_length={settings['history_items']}", "model.eval_topk=[10,50]",
        f"trainer.batch_size={settings['batch_size']}", f"trainer.max_epochs={settings['epochs']}",
        f"+trainer.eval_steps={settings['epochs']}",
        f"trainer.optimizer.kwargs.lr={settings['learning_rate']}",
        f"trainer.optimizer.kwargs.weight_decay={settings['weight_decay']}",
        "trainer.eval.exclude_history=false", "trainer.eval.metrics=[{name:recall,ks:[10,50]},{name:ndcg,ks:[10,50]}]",
        f"runtime.seed={seed}", "runtime.device=cpu", f"runtime.output_dir={work / 'outputs' / str(seed)}",
    ]
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.run([python, "-c", PEER_DRIVER, json.dumps(overrides)], cwd=checkout,
                              stdout=subprocess.PIPE, stderr=handle, text=True)
        handle.write(proc.stdout)
    for line in proc.stdout.splitlines():
        if line.startswith("PEER_RESULT "):
            result = json.loads(line[len("PEER_RESULT "):])
            metrics = flat_metrics(result["test"])
            return {**{name: metrics.get(name) for name in METRICS},
                    "train_seconds_per_epoch": round(statistics.mean(result["epoch_seconds"]), 1),
                    "eval_seconds": test_eval_seconds(log),
                    "command": f"{python} -m recbole3.run " + " ".join(shlex.quote(o) for o in overrides)}
    print(f"  RecBole3.0 failed (exit {proc.returncode}); see {log}", flush=True)
    return None


def test_eval_seconds(log: Path) -> Optional[float]:
    """Elapsed time of RecBole3.0's test evaluation, read from its last progress-bar update."""
    found = re.findall(r"\[eval:test\][^\[]*\[(?:(\d+):)?(\d+):(\d+)<", log.read_text(encoding="utf-8", errors="replace"))
    if not found:
        return None
    hours, minutes, seconds = found[-1]
    return float(int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds))


def flat_metrics(test: Any) -> Dict[str, float]:
    """``ndcg@10``-style keys from RecBole3.0's test result (its metrics dict, nested or flat)."""
    found: Dict[str, float] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (int, float)) and "@" in str(key):
                    found[str(key).lower()] = float(value)
                else:
                    walk(value)

    walk(test)
    return found


def run_ours(root: Path, index_file: Path, settings: Dict[str, Any], seed: int, log: Path) -> Optional[Dict[str, Any]]:
    overrides = {
        "data_path": str(root), "semantic_id_file": str(index_file), "seed": seed, "show_progress": False,
        "d_model": settings["d_model"], "d_ff": settings["d_ff"], "num_layers": settings["num_layers"],
        "num_decoder_layers": settings["num_decoder_layers"], "num_heads": settings["num_heads"],
        "d_kv": settings["d_kv"], "dropout_rate": settings["dropout_rate"], "beam_size": settings["beam_size"],
        "history_items": settings["history_items"], "MAX_ITEM_LIST_LENGTH": settings["history_items"],
        "learner": "adamw", "learning_rate": settings["learning_rate"], "weight_decay": settings["weight_decay"],
        "train_batch_size": settings["batch_size"], "eval_batch_size": 256, "epochs": settings["epochs"],
        "eval_step": settings["epochs"], "stopping_step": 10 ** 6, "topk": [10, 50], "train_neg_sample_args": None,
        "loss_type": "CE", "metrics": ["Recall", "NDCG"], "valid_metric": "NDCG@10",
    }
    row = run_in_subprocess("TIGER", "Office", [str(root / "Office" / "Office.yaml")], overrides, log)
    if row is None:
        return None
    return {**{name: row.get(name) for name in METRICS}, "train_seconds_per_epoch": row["train_seconds_per_epoch"],
            "eval_seconds": row.get("test_eval_seconds"), "command": row["command"]}


def markdown(rows: List[Dict[str, Any]]) -> str:
    """Mean ± std per (setting, side), and the ours / peer N@10 ratio of each setting."""
    lines = ["| model | setting | side | seeds | N@10 | R@10 | N@50 | R@50 | train s/epoch | test eval s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["side"]), []).append(row)
    means: Dict[tuple, float] = {}
    for (setting, side), group in groups.items():
        cells = []
        for metric in (*METRICS, "train_seconds_per_epoch", "eval_seconds"):
            values = [r[metric] for r in group if r.get(metric) is not None]
            digits = 4 if metric in METRICS else 1
            spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.{digits}f}{spread}" if values else "-")
            if metric == "ndcg@10" and values:
                means[(setting, side)] = statistics.mean(values)
        lines.append(f"| {group[0]['model']} | {setting} | {side} | {len(group)} | " + " | ".join(cells) + " |")
    ratios = [f"N@10 ours / peer ({setting}): {value / means[(setting + PEER_SUFFIX, 'peer')]:.3f}"
              for (setting, side), value in means.items()
              if side == "ours" and means.get((setting + PEER_SUFFIX, "peer"))]
    return "\n".join(lines + ([""] + ratios if ratios else [])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recbole3", type=Path, default=None, help="checkout of RUCAIBox/RecBole3.0")
    parser.add_argument("--recbole3_python", default="python", help="interpreter of its own venv")
    parser.add_argument("--shared_data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020])
    parser.add_argument("--d_model", type=int, default=64)
    parser.add_argument("--d_ff", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=0.003)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--sides", nargs="+", choices=("ours", "peer"), default=["ours", "peer"],
                        help="which sides to run (run them as separate processes in parallel, then --rows_from)")
    parser.add_argument("--rows_from", type=Path, nargs="*", default=[],
                        help="fidelity_genrec.json files of earlier runs whose rows join this one's")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    index_file = args.shared_data / "amazon-office" / "Office.index.rq-kmeans.json"
    if not index_file.is_file():
        print(f"skipped: {index_file} not found")
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="fidelity_genrec_"))
    work.mkdir(parents=True, exist_ok=True)
    settings = shared_settings(args)
    sequences = subset(args.shared_data, args.users)
    setting = (f"Office, first {len(sequences)} users, released rq-kmeans ids (de-duplicated), "
               f"T5 {settings['num_layers']}+{settings['num_layers']} d{settings['d_model']}, {args.epochs} epochs, "
               f"beam {args.beam}, CPU")
    root = write_ours(sequences, args.shared_data, work) if "ours" in args.sides else None
    processed = write_recbole3(sequences, index_file, work)
    rows: List[Dict[str, Any]] = [row for file in args.rows_from
                                  for row in json.loads(file.read_text(encoding="utf-8"))["rows"]]
    for seed in args.seeds:
        started = time.perf_counter()
        row = run_ours(root, index_file, settings, seed, work / f"ours_{seed}.log") if root else None
        print(f"ours seed {seed}: {row} ({time.perf_counter() - started:.0f} s)", flush=True)
        if row:
            rows.append({"model": "TIGER", "setting": setting, "side": "ours", "seed": seed, **row})
        if "peer" not in args.sides:
            write_results(args.out, rows, settings, len(sequences))
            continue
        if args.recbole3 is None or not (args.recbole3 / "src" / "recbole3").is_dir():
            print("RecBole3.0 side skipped: no checkout given (--recbole3)")
            continue
        started = time.perf_counter()
        row = run_recbole3(args.recbole3_python, args.recbole3, processed, work, settings, seed,
                           work / f"recbole3_{seed}.log")
        print(f"RecBole3.0 seed {seed}: {row} ({time.perf_counter() - started:.0f} s)", flush=True)
        if row:
            rows.append({"model": "TIGER", "setting": setting + PEER_SUFFIX, "side": "peer", "seed": seed,
                         **row})
        write_results(args.out, rows, settings, len(sequences))
    print(markdown(rows))


def write_results(out: Path, rows: List[Dict[str, Any]], settings: Dict[str, Any], users: int) -> None:
    """The rows so far as ``fidelity_genrec.json`` and ``.md`` (rewritten after every seed)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"rows": rows, "settings": settings, "users": users}, indent=2) + "\n"
    atomic_write(out / "fidelity_genrec.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    table = markdown(rows)
    atomic_write(out / "fidelity_genrec.md", lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))


if __name__ == "__main__":
    main()
