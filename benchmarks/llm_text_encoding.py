"""Item text-encoding cost: items per second and peak memory of each text encoder on one dataset.

    python benchmarks/llm_text_encoding.py --dataset Office --data_root dataset \\
        --encoders smollm2-135m all-MiniLM-L6-v2 --threads 1

Each encoder runs in its own process (so each peak RSS is its own), encodes every item text of
the dataset as the models do (config keys as in properties/overall.yaml) into the dataset's text
cache (so later model runs reuse it; a cached encoder is reported as cached, not timed), and reports items/s, seconds, the embedding width and peak RSS (and peak GPU memory when
a GPU is used). Results go to ``benchmarks/results/llm_text_encoding.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List


def encode_once(dataset: str, data_root: str, encoder: str, batch_size: int, max_length: int, gpu: bool) -> Dict[str, Any]:
    """Encode every item text of ``dataset`` with ``encoder`` in this process and measure it."""
    import torch
    from recbole.data.dataset import Dataset

    from recbole_llm.config import Config
    from recbole_llm import stages
    from recbole_llm.text.features import item_text_embeddings
    from recbole_llm.utils import cache_dir

    config_file = Path(data_root) / dataset / f"{dataset}.yaml"
    with stages.collect_reports() as reports:
        config = Config(model="SASRec", dataset=dataset, config_file_list=[str(config_file)],
                        config_dict={"data_path": data_root, "state": "ERROR", "text_encoder": encoder,
                                     "text_batch_size": batch_size, "text_max_length": max_length,
                                     "use_gpu": gpu, "gpu_id": "0" if gpu else ""})
        items = Dataset(config)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        texts, table = item_text_embeddings(items, config, cache_dir(config, "text"))
        seconds = time.perf_counter() - started
    if reports and reports[-1].get("cached"):
        raise SystemExit(f"{encoder}: the embeddings are cached at {reports[-1]['path']}; remove it to time the encoder")
    row = {"dataset": dataset, "encoder": encoder, "items": len(texts) - 1, "dim": int(table.shape[1]),
           "device": torch.cuda.get_device_name(0) if gpu else "cpu", "threads": torch.get_num_threads(),
           "batch_size": batch_size, "max_length": max_length, "seconds": round(seconds, 1),
           "items_per_second": round((len(texts) - 1) / seconds, 1),
           "peak_rss_mib_before_encoding": round(rss_before), 
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if gpu:
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| dataset | encoder | device | threads | items | dim | seconds | items/s | peak RSS MiB | peak GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['encoder']} | {r['device']} | {r['threads']} | {r['items']} | {r['dim']} | "
                     f"{r['seconds']} | {r['items_per_second']} | {r['peak_rss_mib']} | {r.get('peak_gpu_mib', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--data_root", default="dataset")
    parser.add_argument("--encoders", nargs="+", default=["smollm2-135m", "all-MiniLM-L6-v2"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/llm_text_encoding.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: the encoder of a child process
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        sys.argv = sys.argv[:1]
        print(json.dumps(encode_once(args.dataset, args.data_root, args.one, args.batch_size, args.max_length, args.gpu)))
        return
    rows = []
    for encoder in args.encoders:
        command = [sys.executable, __file__, "--dataset", args.dataset, "--data_root", args.data_root, "--one", encoder,
                   "--batch_size", str(args.batch_size), "--max_length", str(args.max_length),
                   "--threads", str(args.threads)] + (["--gpu"] if args.gpu else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else []
    keep = [r for r in previous if (r["dataset"], r["encoder"], r["device"]) not in {(x["dataset"], x["encoder"], x["device"]) for x in rows}]
    from recbole_llm.utils import atomic_write

    all_rows = keep + rows
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(all_rows, indent=2), encoding="utf-8"))
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown(all_rows), encoding="utf-8"))


if __name__ == "__main__":
    main()
