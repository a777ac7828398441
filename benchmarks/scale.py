"""Large-catalogue scaling: a synthetic Amazon-2023-format catalogue, converted and trained.

Builds ``--items`` products with generated titles/categories/brands and ``--users`` users with
``--per_user`` chronological reviews each (raw ``<Category>.jsonl`` + ``meta_<Category>.jsonl``,
the files the ``amazon2023`` converter reads), converts them, then runs each model for one epoch
at 1 and 2 processes on a subset of ``--run_users`` users while keeping the whole catalogue (the
item file lists every item, so RecBole's item count, and the [B, n_items] scoring cost, is the
full one). Per run: seconds per epoch, evaluation seconds, peak RSS of the largest process,
and the same two times scaled linearly to every user. A run that fails is recorded with its
error: that is what fails first as the catalogue grows. ``--dataset_dir`` times an already
converted dataset instead (every user, e.g. ``dataset/Scientific``). ``--repeats N`` runs the
model list N times in turn, so that models compared on a shared machine see the same load; the
table gives each model's mean train time per epoch against SASRec's at the same process count.

Usage: python benchmarks/scale.py [--items 100000] [--users 200000] [--run_users 20000]
           [--models SASRec VQRec TIGER SAID] [--nproc 1 2] [--repeats 1] [--out benchmarks/results/scale]
       python benchmarks/scale.py --dataset_dir dataset/Scientific --models SASRec VQRec --nproc 1
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = {
    "adjective": "compact durable premium portable heavy light digital classic wireless ergonomic".split(),
    "noun": "stapler notebook printer marker binder desk lamp chair cable scanner folder pen".split(),
    "material": "steel plastic bamboo leather aluminum glass paper".split(),
    "category": "Office Electronics Furniture Paper Writing Storage Lighting Tools".split(),
    "brand": "Acme Northwind Contoso Globex Initech Umbrella Hooli Vandelay".split(),
}
# Sizes for a CPU run at this scale (one epoch; TIGER/SAID preparation capped, see SMALL_STAGES).
SIZES = {"hidden_size": 64, "inner_size": 128, "n_layers": 2, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 20,
         "train_batch_size": 1024, "eval_batch_size": 1024, "epochs": 1, "stopping_step": 1, "show_progress": False}
SMALL_STAGES = {
    "VQRec": {"code_dim": 32, "code_cap": 256},
    "TIGER": {"rqvae_epochs": 5, "rqvae_hidden_sizes": [256, 64], "d_model": 64, "d_kv": 16, "d_ff": 256,
              "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "train_batch_size": 256,
              "eval_batch_size": 256, "beam_size": 50},
    "SAID": {"said_epochs": 1, "said_max_text_tokens": 16, "said_batch_size": 64},
}


def write_raw(folder: Path, items: int, users: int, per_user: int, seed: int) -> None:
    """Raw Amazon-2023 review and meta files in which the 5-core filter keeps every item and user.

    Each user reviews ``per_user`` (>= 5) distinct items: ``slots`` of them dealt round-robin over
    the catalogue, so that every item has at least 5 reviewers, and the rest drawn Zipf-like by
    popularity. Nothing falls below 5, so the converted catalogue is the generated one.
    """
    slots = -(-5 * items // users)  # ceil: users * slots >= 5 * items
    if per_user < 5 or slots > min(per_user, items):
        raise ValueError(f"--users {users} x --per_user {per_user} cannot give each of {items} items 5 reviewers "
                         f"(need --per_user >= 5 and users * per_user >= 5 * items)")
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "meta_Synthetic.jsonl", "w", encoding="utf-8") as meta:
        for item in range(items):
            words = {key: rng.choice(values) for key, values in WORDS.items()}
            meta.write(json.dumps({
                "parent_asin": f"P{item:07d}",
                "title": f"{words['adjective'].title()} {words['material']} {words['noun']} {item % 997}",
                "categories": ["Office Products", words["category"]], "store": words["brand"],
                "features": [], "description": [],
            }) + "\n")
    popularity = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(items)))  # Zipf-like, cumulative
    with open(folder / "Synthetic.jsonl", "w", encoding="utf-8") as reviews:
        for user in range(users):
            start = 1_600_000_000_000 + user * 1000
            chosen = {(user * slots + slot) % items for slot in range(slots)}
            while len(chosen) < per_user:
                chosen.update(rng.choices(range(items), cum_weights=popularity, k=per_user - len(chosen)))
            for step, item in enumerate(sorted(chosen, key=lambda _: rng.random())):
                reviews.write(json.dumps({"user_id": f"U{user:07d}", "parent_asin": f"P{item:07d}", "asin": f"P{item:07d}",
                                          "rating": 5.0, "timestamp": start + step * 86_400_000}) + "\n")


def user_subset(dataset: Path, run_users: int, out: Path) -> None:
    """A copy of the converted dataset with the first ``run_users`` users and every item."""
    out.mkdir(parents=True, exist_ok=True)
    name, subset = dataset.name, out.name
    lines = (dataset / f"{name}.inter").read_text(encoding="utf-8").splitlines()
    users = []
    kept = [lines[0]]
    for line in lines[1:]:
        user = line.split("\t", 1)[0]
        if user not in users[-1:]:
            users.append(user)
        if len(users) <= run_users:
            kept.append(line)
    (out / f"{subset}.inter").write_text("\n".join(kept) + "\n", encoding="utf-8")
    (out / f"{subset}.item").write_text((dataset / f"{name}.item").read_text(encoding="utf-8"), encoding="utf-8")
    config = (dataset / f"{name}.yaml").read_text(encoding="utf-8").replace(str(dataset.parent), str(out.parent))
    (out / f"{subset}.yaml").write_text(config, encoding="utf-8")


def worker(model: str, dataset: str, data_path: str, config_file: str, nproc: int, overrides: dict) -> None:
    """One run in this process (and its ranks); prints one JSON line."""
    sys.path.insert(0, str(REPO))
    from recbole_llm.quick_start import run

    start = time.perf_counter()
    result = run(model=model, dataset=dataset, config_file_list=[config_file],
                 config_dict={"data_path": data_path, **overrides}, saved=False, nproc=nproc,
                 ip="127.0.0.1", port=str(29500 + os.getpid() % 1000))
    peak_kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print("RESULT " + json.dumps({"timing": result["timing"], "test_result": dict(result["test_result"]),
                                  "wall_seconds": round(time.perf_counter() - start, 1),
                                  "peak_rss_mb": round(peak_kb / 1024, 1)}))


def measure(args, model: str, nproc: int, subset: Path, config_file: Path) -> dict:
    from recbole_llm.profiles import DATASET_PROFILES

    overrides = {**SIZES, **DATASET_PROFILES.get(subset.name, {}), **SMALL_STAGES.get(model, {})}
    command = [sys.executable, __file__, "worker", "--model", model, "--dataset", subset.name,
               "--data_path", str(subset.parent), "--config_file", str(config_file), "--nproc_run", str(nproc),
               "--overrides", json.dumps(overrides)]
    process = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO))
    row = {"model": model, "nproc": nproc, "overrides": overrides}
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        row["error"] = (process.stderr.strip().splitlines() or ["exit %d" % process.returncode])[-1]
        return row
    result = json.loads(lines[-1][len("RESULT "):])
    row.update(result)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "worker"])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--per_user", type=int, default=8)
    parser.add_argument("--run_users", type=int, default=20_000)
    parser.add_argument("--models", nargs="+", default=["SASRec", "VQRec", "TIGER", "SAID"])
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--work", default="dataset/scale")
    parser.add_argument("--out", default="benchmarks/results/scale")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--dataset_dir", default=None,
                        help="time this converted dataset (folder with <name>.inter and <name>.yaml), every user")
    parser.add_argument("--repeats", type=int, default=1, help="run the model list this many times in turn")
    # worker arguments
    parser.add_argument("--model"), parser.add_argument("--dataset"), parser.add_argument("--data_path")
    parser.add_argument("--config_file"), parser.add_argument("--nproc_run", type=int, default=1)
    parser.add_argument("--overrides", default="{}")
    args = parser.parse_args(argv)
    if args.mode == "worker":
        worker(args.model, args.dataset, args.data_path, args.config_file, args.nproc_run, json.loads(args.overrides))
        return
    started = time.perf_counter()
    if args.dataset_dir:
        converted = subset = Path(args.dataset_dir).resolve()
        users = len({line.split("\t", 1)[0] for part in sorted(subset.glob(f"{subset.name}*.inter"))
                     for line in part.read_text(encoding="utf-8").splitlines()[1:]})
        args.users = args.run_users = users
    else:
        work = Path(args.work).resolve()
        raw, converted = work / "raw", work / f"Synthetic{args.items}"
        if not (converted / f"{converted.name}.inter").is_file():
            write_raw(raw, args.items, args.users, args.per_user, args.seed)
            subprocess.run([sys.executable, "-m", "recbole_llm.convert", "amazon2023", "--input", str(raw),
                            "--output", str(converted), "--overwrite"], check=True, cwd=str(REPO))
        subset = work / f"{converted.name}u{args.run_users}"
        user_subset(converted, args.run_users, subset)
    prepare_seconds = time.perf_counter() - started
    rows = []
    for _ in range(args.repeats):
        for model in args.models:
            for nproc in args.nproc:
                row = measure(args, model, nproc, subset, subset / f"{subset.name}.yaml")
                scale = args.users / args.run_users
                if "timing" in row:
                    row["train_seconds_per_epoch_all_users"] = round(row["timing"]["train_seconds_per_epoch"] * scale, 1)
                    row["test_eval_seconds_all_users"] = round(row["timing"]["test_eval_seconds"] * scale, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    report = {"dataset": converted.name, "items": args.items, "users": args.users,
              "converted_items": item_count(converted), "run_users": args.run_users, "per_user": args.per_user,
              "prepare_seconds": round(prepare_seconds, 1), "rows": rows,
              "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def item_count(dataset: Path) -> int:
    """Items of a converted dataset: rows of its .item file, or distinct items of its .inter files."""
    item_file = dataset / f"{dataset.name}.item"
    if item_file.is_file():
        return sum(1 for _ in open(item_file, encoding="utf-8")) - 1
    items = set()
    for part in dataset.glob(f"{dataset.name}*.inter"):
        for line in part.read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split("\t")
            items.update(token for field in fields[1:] for token in field.split())
    return len(items)


def ratio_lines(rows: list) -> list:
    """Mean train seconds per epoch (wall clock and the run's CPU) per (model, processes), and their
    ratios to SASRec's: on a shared machine the CPU time is the steadier of the two."""
    times: dict = {}
    for row in rows:
        if "timing" in row:
            timing = row["timing"]
            entry = times.setdefault((row["model"], row["nproc"]), {"wall": [], "cpu": []})
            entry["wall"].append(timing["train_seconds_per_epoch"])
            if "train_cpu_seconds_per_epoch" in timing:
                entry["cpu"].append(timing["train_cpu_seconds_per_epoch"])
    if not times:
        return []

    def ratio(values: list, base: list) -> str:
        return f"{statistics.mean(values) / statistics.mean(base):.2f}" if values and base else ""

    def mean(values: list) -> str:
        return f"{statistics.mean(values):.2f}" if values else ""

    lines = ["", "| model | processes | runs | mean train s/epoch | x SASRec | mean train CPU s/epoch | x SASRec (CPU) |",
             "|---|---|---|---|---|---|---|"]
    for (model, nproc), entry in times.items():
        base = times.get(("SASRec", nproc), {"wall": [], "cpu": []})
        lines.append(f"| {model} | {nproc} | {len(entry['wall'])} | {mean(entry['wall'])} | {ratio(entry['wall'], base['wall'])} | "
                     f"{mean(entry['cpu'])} | {ratio(entry['cpu'], base['cpu'])} |")
    return lines


def markdown(report: dict) -> str:
    if report.get("dataset", "").startswith("Synthetic") or "dataset" not in report:
        intro = (f"Synthetic catalogue: {report['items']:,} items and {report['users']:,} users generated, "
                 f"{report.get('converted_items', report['items']):,} items after the converter's 5-core filter; runs on "
                 f"the first {report['run_users']:,} users with every item; times scaled linearly to all users.")
    else:
        intro = f"{report['dataset']}: {report['converted_items']:,} items, {report['users']:,} users, every user."
    lines = [intro, "",
             "| model | processes | train s/epoch (run) | train s/epoch (all users) | eval s (run) | eval s (all users) | peak RSS MB | error |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        timing = row.get("timing", {})
        lines.append(f"| {row['model']} | {row['nproc']} | {timing.get('train_seconds_per_epoch', '')} | "
                     f"{row.get('train_seconds_per_epoch_all_users', '')} | {timing.get('test_eval_seconds', '')} | "
                     f"{row.get('test_eval_seconds_all_users', '')} | {row.get('peak_rss_mb', '')} | {row.get('error', '')} |")
    lines += ratio_lines(report["rows"])
    return "\n".join(lines + ["", f"Command: `{report['command']}`"]) + "\n"


if __name__ == "__main__":
    main()
