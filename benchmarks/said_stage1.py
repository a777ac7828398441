"""SAID stage-1 throughput: items per second of one training epoch on a slice of a dataset.

    OMP_NUM_THREADS=1 python benchmarks/said_stage1.py --dataset Office --items 300 --label after

Builds the dataset exactly as SAID does (item texts, MiniLM initial table), keeps its first
``--items`` items and trains stage 1 for ``--epochs`` epochs with the packaged SmolLM2-135M (or
``--llm``) on this machine's CPU (or ``--device``), printing items/second and the reconstruction
losses. Rows are merged by ``--label`` into ``benchmarks/results/said_stage1.json`` (+ ``.md``), so
one code version's figure ("before") and another's ("after") sit side by side: run the script of
each version from that version's checkout. Only settings the installed code knows are passed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from recbole_llm import Config, create_dataset  # noqa: E402
from recbole_llm.benchmark import dataset_config_files, prepare_dataset, versions  # noqa: E402
from recbole_llm.llm import semantic_embedding as stage1  # noqa: E402
from recbole_llm.llm.loader import resolve_causal_lm  # noqa: E402
from recbole_llm.stages import Checkpoint  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402


def dataset_inputs(dataset: str, data_root: Path, shared_data: Path):
    """Every item text (row 0 = padding) and its MiniLM embedding, as SAID builds them."""
    prepare_dataset(dataset, data_root, shared_data)
    config = Config(model="SAID", dataset=dataset, config_file_list=dataset_config_files(dataset, data_root),
                    config_dict={"data_path": str(data_root), "show_progress": False, "state": "ERROR"})
    data = create_dataset(config)
    return list(data.item_texts), data.item_text_emb


def padding(texts: List[str], llm: str, batch_size: int, token_limits: List[int]) -> List[Dict[str, Any]]:
    """Text positions the LM runs per item when every batch pads to the longest text of the whole
    catalogue (the earlier code) and when it pads to its own longest (length-bucketed batches)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_causal_lm(llm)))
    report = []
    for limit in token_limits:
        lengths = stage1.TextTargets(texts, tokenizer, limit).lengths
        train, held_out = stage1.split_held_out(len(texts), 32, 2020)
        batches = stage1.epoch_batches(train, held_out, lengths, batch_size, 2020)
        bucketed = sum(len(batch) * int(lengths[batch].max()) for batch, _ in batches) / (len(texts) - 1)
        report.append({"max_text_tokens": limit, "mean_text_tokens": round(float(lengths[1:].float().mean()), 2),
                       "positions_per_item_global_padding": int(lengths.max()),
                       "positions_per_item_bucketed": round(bucketed, 2)})
    return report


def markdown(rows: List[Dict[str, Any]], pad: List[Dict[str, Any]]) -> str:
    lines = ["| label | code | items | epochs | batch | text tokens | threads | load avg | items/s | loss before | "
             "held-out after |", "|" + "---|" * 11]
    for row in rows:
        lines.append(f"| {row['label']} | {row['code']} | {row['items']} | {row['epochs_run']} | {row['batch_size']} | "
                     f"{row['max_text_tokens']} | {row['threads']} | {row['load_average']} | "
                     f"{row['items_per_second']:.2f} | {row['loss_before']:.4f} | {row['loss_after']:.4f} |")
    lines += ["", "| max text tokens | mean text tokens | text positions per item, padded to the catalogue's longest | "
              "padded to the batch's longest |", "|---|---|---|---|"]
    lines += [f"| {p['max_text_tokens']} | {p['mean_text_tokens']} | {p['positions_per_item_global_padding']} | "
              f"{p['positions_per_item_bucketed']} |" for p in pad]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--data_root", default="dataset")
    parser.add_argument("--shared_data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--items", type=int, default=300, help="first N items of the dataset")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_text_tokens", type=int, default=32)
    parser.add_argument("--llm", default=stage1.DEFAULT_CAUSAL_LM)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", required=True, help="row name, e.g. before / after")
    parser.add_argument("--out", default=str(Path.cwd() / "benchmarks" / "results"))
    args = parser.parse_args()

    all_texts, all_emb = dataset_inputs(args.dataset, Path(args.data_root), Path(args.shared_data))
    texts, text_emb = all_texts[: args.items + 1], all_emb[: args.items + 1]
    known = {field.name for field in dataclasses.fields(stage1.Stage1Settings)}
    wanted = {"llm": args.llm, "epochs": args.epochs, "batch_size": args.batch_size,
              "max_text_tokens": args.max_text_tokens, "eval_items": 32, "save_steps": 10**6, "patience": args.epochs}
    settings = stage1.Stage1Settings(**{key: value for key, value in wanted.items() if key in known})
    initial = stage1.initial_item_table(settings, torch.as_tensor(text_emb))
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        _, stats = stage1.train_semantic_embeddings(texts, initial, settings, Checkpoint(Path(scratch) / "ckpt.pt"),
                                                    torch.device(args.device), show_progress=False)
        wall = time.perf_counter() - started
    epochs_run = stats.get("epochs_run", settings.epochs)
    items = len(texts) - 1
    row = {
        "label": args.label, "code": os.popen(f"git -C {shlex.quote(str(REPO))} rev-parse --short HEAD 2>/dev/null").read().strip()
        or REPO.name, "dataset": args.dataset, "items": items, "epochs_run": epochs_run, "batch_size": args.batch_size,
        "max_text_tokens": args.max_text_tokens, "threads": torch.get_num_threads(), "device": args.device,
        "train_seconds": stats["train_seconds"], "items_per_second": round(items * epochs_run / stats["train_seconds"], 3),
        "loss_before": stats["loss_before"], "loss_after": stats["loss_after"], "wall_seconds": round(wall, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/said_stage1.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "said_stage1.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    rows = [r for r in previous.get("rows", []) if r["label"] != args.label] + [row]
    # the earlier code has no length-bucketed batches: keep the padding count a later version made
    pad = padding(all_texts, args.llm, args.batch_size, [16, 32, 64, 128]) if hasattr(stage1, "epoch_batches") \
        else previous.get("padding", [])
    payload = json.dumps({"rows": rows, "padding": pad, "versions": versions(args.device)}, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    atomic_write(out / "said_stage1.md", lambda tmp: Path(tmp).write_text(markdown(rows, pad), encoding="utf-8"))
    print(json.dumps(row, indent=2))
    print(markdown(rows, pad))


if __name__ == "__main__":
    main()
