"""Training cost of TIGER against SASRec on the same data, in one process (robust to a loaded CPU).

    python benchmarks/genrec_train_speed.py --dataset Office --data_root dataset --threads 1 --batches 8 \
        --set semantic_id_file=../shared/data/amazon-office/Office.index.rq-kmeans.json

Each variant (SASRec; TIGER at each ``--buckets`` value of ``length_buckets``, 1 = one padded
pass) is built with the results table's ``cpu`` profile. The script then times training steps
(next batch from RecBole's loader, loss, backward, Adam step) round-robin over the variants, so a
change in the machine's load hits every variant alike, and estimates seconds per epoch as the median
step time times the loader's batches per epoch. ``--profile`` adds a cProfile of a few TIGER steps.
Writes ``<out>/genrec_train_speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from recbole_llm.benchmark import dataset_config_files, job_overrides  # noqa: E402
from recbole_llm.config import Config  # noqa: E402
from recbole_llm.quick_start import build  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402


class Variant:
    """One model ready to take training steps from its own loader."""

    def __init__(self, label: str, model_name: str, dataset: str, config_files: List[str], overrides: Dict[str, Any]):
        self.label = label
        config = Config(model=model_name, dataset=dataset, config_file_list=config_files,
                        config_dict={**job_overrides("cpu", model_name, dataset, {}), **overrides})
        _, (self.train_data, _, _), self.model = build(config)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config["learning_rate"])
        self.batches = iter(self.train_data)
        self.seconds: List[float] = []

    def step(self) -> float:
        started = time.perf_counter()
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.train_data)
            batch = next(self.batches)
        loss = self.model.calculate_loss(batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started

    def row(self) -> Dict[str, Any]:
        per_step = statistics.median(self.seconds)
        return {"variant": self.label, "steps_timed": len(self.seconds), "median_step_seconds": round(per_step, 4),
                "batches_per_epoch": len(self.train_data),
                "estimated_seconds_per_epoch": round(per_step * len(self.train_data), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--data_root", default="dataset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=8, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--buckets", type=int, nargs="+", default=[1, 4], help="length_buckets of the TIGER variants")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the TIGER variants")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of 3 TIGER steps per variant")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config_files = dataset_config_files(args.dataset, Path(args.data_root))
    data_path = {"data_path": args.data_root}
    tiger = {**data_path, **{key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}}
    variants = [Variant("SASRec", "SASRec", args.dataset, config_files, data_path)] + [
        Variant(f"TIGER, length_buckets={buckets}", "TIGER", args.dataset, config_files,
                {**tiger, "length_buckets": buckets})
        for buckets in args.buckets
    ]
    for variant in variants:
        variant.step()  # warm-up
    for _ in range(args.batches):
        for variant in variants:
            variant.seconds.append(variant.step())
    rows = [variant.row() for variant in variants]
    sasrec = rows[0]["estimated_seconds_per_epoch"]
    for row in rows:
        row["ratio_to_sasrec"] = round(row["estimated_seconds_per_epoch"] / sasrec, 2)
    profiles = {variant.label: profile_steps(variant) for variant in variants[1:]} if args.profile else {}
    result = {"dataset": args.dataset, "threads": args.threads, "tiger_overrides": tiger, "rows": rows,
              "command": "python " + " ".join([Path(__file__).as_posix()] + sys_args(args))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "genrec_train_speed.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8"))
    atomic_write(out / "genrec_train_speed.md", lambda tmp: Path(tmp).write_text(markdown(result), encoding="utf-8"))
    print(markdown(result))
    for label, text in profiles.items():
        print(f"## cProfile: {label}\n{text}")


def profile_steps(variant: Variant, steps: int = 3) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        variant.step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    return text.getvalue()


def sys_args(args: argparse.Namespace) -> List[str]:
    parts = ["--dataset", args.dataset, "--data_root", args.data_root, "--threads", str(args.threads),
             "--batches", str(args.batches), "--buckets", *map(str, args.buckets)]
    return parts + (["--set", *args.set] if args.set else [])


def markdown(result: Dict[str, Any]) -> str:
    lines = [f"Training cost on {result['dataset']}, {result['threads']} thread(s), cpu profile; "
             f"`{result['command']}`", "",
             "| variant | median s/step | batches/epoch | est. s/epoch | x SASRec |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['median_step_seconds']:.3f} | {row['batches_per_epoch']} | "
                     f"{row['estimated_seconds_per_epoch']:.1f} | {row['ratio_to_sasrec']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
