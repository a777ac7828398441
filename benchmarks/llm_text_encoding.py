"""Item text-encoding cost: items per second and peak memory of each text encoder on one dataset.

    python benchmarks/llm_text_encoding.py --dataset Office --data_root dataset \\
        --encoders smollm2-135m all-MiniLM-L6-v2 --threads 1 [--items 256] [--max_length 128]

Each encoder runs in its own process (so each peak RSS is its own) and encodes the item texts of
the dataset (the first ``--items`` items, all by default) exactly as the models do (config keys
as in properties/overall.yaml), into a fresh temporary cache so that it is always timed. It
reports wall seconds, the process's CPU seconds (user + system: on a shared machine, items per
CPU-second is the figure that does not depend on the other jobs), items per second of each,
the embedding width and peak RSS (and peak GPU memory with ``--gpu``). Results are merged into
``benchmarks/results/llm_text_encoding.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def encode_once(dataset: str, data_root: str, encoder: str, batch_size: int, max_length: int, gpu: bool,
                n_items: Optional[int]) -> Dict[str, Any]:
    """Encode the item texts of ``dataset`` with ``encoder`` in this process and measure it."""
    import torch
    from recbole.data.dataset import Dataset

    from recbole_llm.config import Config
    from recbole_llm.text.assemble import assemble_item_texts
    from recbole_llm.text.features import cached_text_embeddings, llm_encoding_from_config

    config_file = Path(data_root) / dataset / f"{dataset}.yaml"
    config = Config(model="SASRec", dataset=dataset, config_file_list=[str(config_file)],
                    config_dict={"data_path": data_root, "state": "ERROR", "text_encoder": encoder,
                                 "text_max_length": max_length, "use_gpu": gpu, "gpu_id": "0" if gpu else ""})
    texts = assemble_item_texts(Dataset(config), config["text_fields"], config["missing_text"] or "empty")[1:]
    texts = texts[:n_items] if n_items else texts
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as cache:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        table, _ = cached_text_embeddings(texts, Path(cache), encoder_name=encoder, text_fields=config["text_fields"],
                                          batch_size=batch_size, device=config["device"],
                                          encoding=llm_encoding_from_config(config))
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    row = {"dataset": dataset, "encoder": encoder, "items": len(texts), "dim": int(table.shape[1]),
           "device": torch.cuda.get_device_name(0) if gpu else "cpu", "threads": torch.get_num_threads(),
           "batch_size": batch_size, "max_length": max_length if llm_encoding_from_config(config) else "st default",
           "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
           "items_per_second": round(len(texts) / seconds, 2), "items_per_cpu_second": round(len(texts) / cpu, 2),
           "load_average_1min": round(os.getloadavg()[0], 1),
           "peak_rss_mib_before_encoding": round(rss_before),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if gpu:
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| dataset | encoder | device | threads | items | max tokens | dim | wall s | CPU s | items/s | items/CPU-s | "
             "load avg | peak RSS MiB | peak GPU MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['encoder']} | {r['device']} | {r['threads']} | {r['items']} | "
                     f"{r['max_length']} | {r['dim']} | {r['seconds']} | {r['cpu_seconds']} | {r['items_per_second']} | "
                     f"{r['items_per_cpu_second']} | {r['load_average_1min']} | {r['peak_rss_mib']} | "
                     f"{r.get('peak_gpu_mib', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--data_root", default="dataset")
    parser.add_argument("--encoders", nargs="+", default=["smollm2-135m", "all-MiniLM-L6-v2"])
    parser.add_argument("--items", type=int, default=None, help="encode only the first N items")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128, help="causal LMs: tokens per text")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/llm_text_encoding.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: the encoder of a child process
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        row = encode_once(args.dataset, args.data_root, args.one, args.batch_size, args.max_length, args.gpu, args.items)
        print(json.dumps(row))
        return
    rows = []
    for encoder in args.encoders:
        command = [sys.executable, __file__, "--dataset", args.dataset, "--data_root", args.data_root, "--one", encoder,
                   "--batch_size", str(args.batch_size), "--max_length", str(args.max_length),
                   "--threads", str(args.threads)] + (["--gpu"] if args.gpu else []) \
            + (["--items", str(args.items)] if args.items else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append({**json.loads(output.strip().splitlines()[-1]),
                     "command": "python benchmarks/llm_text_encoding.py " + " ".join(sys.argv[1:])})
        print(rows[-1], flush=True)
    from recbole_llm.utils import atomic_write

    out = Path(args.out)
    fields = ("dataset", "encoder", "device", "items", "max_length")
    previous = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else []
    replaced = {tuple(row[f] for f in fields) for row in rows}
    all_rows = [row for row in previous if tuple(row[f] for f in fields) not in replaced] + rows
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(all_rows, indent=2), encoding="utf-8"))
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(all_rows), encoding="utf-8"))


if __name__ == "__main__":
    main()
