"""Results table: several models on several datasets, same protocol and seed, one command.

    python -m recbole_llm.benchmark --datasets ml-100k Scientific Office --models SASRec BERT4Rec VQRec

Each (model, dataset) pair trains in its own subprocess (so peak memory is its own) through
:func:`recbole_llm.run_recbole_llm`. For every dataset the script writes
``<out>/<dataset>.json`` (one row per model: metrics, epochs, seconds per epoch, evaluation
seconds, peak RAM / GPU memory, the equivalent ``run_recbole_llm.py`` command and the versions),
``<out>/<dataset>.md`` (a Markdown table) and ``<out>/<dataset>.png`` (a bar chart).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")

# Size profiles. "cpu": small Transformers that make a results table affordable on a laptop
# CPU; "default": the models' own yaml defaults (the paper-size settings, for a GPU).
PROFILES: Dict[str, Dict[str, Any]] = {
    "cpu": {
        "hidden_size": 64,
        "inner_size": 128,
        "n_layers": 2,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 20,  # stored history per sequence; see DATASET_PROFILES
        "epochs": 30,
        "stopping_step": 5,
        "train_batch_size": 1024,
        "eval_batch_size": 1024,
    },
    "default": {},
}

# Per-model additions to a profile: the generative models size their T5 with their own keys, an
# epoch of theirs costs several of SASRec's on a CPU, and each validation pass runs a beam search
# over every user, so they train fewer epochs and validate less often, at a higher learning rate
# (Office, epoch 2: valid NDCG@10 0.0058 at 0.005 against 0.0028 at the yaml's 0.001).
MODEL_PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "cpu": {
        model: {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 256, "num_layers": 2,
                "num_decoder_layers": 2, "train_batch_size": 256, "eval_batch_size": 256,
                "rqvae_epochs": 100, "epochs": 20, "eval_step": 2, "stopping_step": 3,
                "learning_rate": 0.005}
        for model in ("TIGER", "LETTER")
    } | {"LLMSeqSim": {"epochs": 0}},  # training-free: the table states its evaluation time only
    "default": {},
}


# Per-dataset settings that every profile must respect: the pre-split benchmark files of
# Scientific store histories of up to 50 items (the UniSRec/VQ-Rec protocol), and RecBole cannot
# keep the latest items of a longer stored history, so the model must accept all 50.
DATASET_PROFILES: Dict[str, Dict[str, Any]] = {
    "Scientific": {"MAX_ITEM_LIST_LENGTH": 50},
}


def job_overrides(profile: str, model: str, dataset: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """A job's config: the profile, its per-model and per-dataset additions, then ``--set`` values."""
    return {**PROFILES[profile], **MODEL_PROFILES[profile].get(model, {}), **DATASET_PROFILES.get(dataset, {}),
            **extra}

# Datasets the table knows how to prepare from ../shared/data (raw upstream files).
CONVERTIBLE = {
    "Scientific": ("unisrec", "amazon-scientific"),
    "Office": ("lcrec", "amazon-office"),
}


def dataset_config_files(dataset: str, data_root: Path) -> List[str]:
    """The converter-written yaml of a dataset, or nothing for RecBole's bundled ml-100k."""
    if dataset == "ml-100k":
        return []
    yaml_file = data_root / dataset / f"{dataset}.yaml"
    if not yaml_file.is_file():
        raise FileNotFoundError(
            f"{yaml_file} not found: convert the dataset first, or pass --prepare with --shared_data"
        )
    return [str(yaml_file)]


def prepare_dataset(dataset: str, data_root: Path, shared_data: Path) -> None:
    """Convert a known dataset from the upstream files in ``shared_data`` when it is missing."""
    if dataset == "ml-100k" or (data_root / dataset / f"{dataset}.yaml").is_file():
        return
    if dataset not in CONVERTIBLE:
        raise ValueError(f"do not know how to prepare {dataset!r}; known: {sorted(CONVERTIBLE)}")
    fmt, folder = CONVERTIBLE[dataset]
    command = [sys.executable, "-m", "recbole_llm.convert", fmt, "--input", str(shared_data / folder),
               "--output", str(data_root / dataset)]
    print("preparing:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def versions(device: str) -> Dict[str, str]:
    import numpy
    import recbole
    import torch

    import recbole_llm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "recbole": recbole.__version__,
        "recbole_llm": recbole_llm.__version__,
        "device": device,
    }


def equivalent_command(model: str, dataset: str, config_files: List[str], overrides: Dict[str, Any]) -> str:
    parts = ["python", "run_recbole_llm.py", f"--model={model}", f"--dataset={dataset}"]
    if config_files:
        parts.append("--config_files=" + " ".join(config_files))
    parts += [f"--{key}={value}" for key, value in overrides.items()]
    return " ".join(shlex.quote(p) for p in parts)


def run_one(model: str, dataset: str, config_files: List[str], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Train and test one model in this process; returns a results-table row."""
    import torch

    from recbole_llm import run_recbole_llm

    start = time.perf_counter()
    result = run_recbole_llm(model=model, dataset=dataset, config_file_list=config_files or None,
                             config_dict=overrides, saved=True)
    wall = time.perf_counter() - start
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores)"
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model,
        "dataset": dataset,
        **{metric: result["test_result"].get(metric) for metric in METRICS},
        "valid_ndcg@10": result["best_valid_result"].get("ndcg@10"),
        **result["timing"],
        "wall_seconds": round(wall, 1),
        "cpu_threads": torch.get_num_threads(),
        "preparation": result.get("preparation", {}),
        "peak_ram_mb": round(peak_rss_mb, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
        "command": equivalent_command(model, dataset, config_files, overrides),
        "versions": versions(device),
    }


def _worker_main(argv: List[str]) -> None:
    spec = json.loads(argv[0])
    row = run_one(spec["model"], spec["dataset"], spec["config_files"], spec["overrides"])
    print("BENCHMARK_ROW " + json.dumps(row), flush=True)


def run_in_subprocess(model: str, dataset: str, config_files: List[str], overrides: Dict[str, Any],
                      log_file: Path, threads: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """Run one job in a fresh interpreter; ``threads`` caps its CPU threads (None: torch's default)."""
    spec = json.dumps({"model": model, "dataset": dataset, "config_files": config_files, "overrides": overrides})
    package_parent = str(Path(__file__).resolve().parent.parent)  # the worker imports this same copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "recbole_llm.benchmark", "--worker", spec],
                              stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCHMARK_ROW "):
            return json.loads(line[len("BENCHMARK_ROW "):])
    print(f"  failed (exit {proc.returncode}); see {log_file}", flush=True)
    return None


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    header = ("| model | R@10 | N@10 | R@50 | N@50 | epochs | train s/epoch | test eval s | peak RAM MB | peak GPU MB |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in rows:
        metrics = " | ".join(f"{row[m]:.4f}" if row[m] is not None else "-" for m in METRICS)
        gpu = f"{row['peak_gpu_mb']:.0f}" if row.get("peak_gpu_mb") else "-"
        lines.append(f"| {row['model']} | {metrics} | {row['epochs']} | {row['train_seconds_per_epoch']:.1f} | "
                     f"{row['test_eval_seconds']:.2f} | {row['peak_ram_mb']:.0f} | {gpu} |")
    return header + "\n".join(lines) + "\n"


def bar_chart(rows: List[Dict[str, Any]], dataset: str, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [row["model"] for row in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(models), 3.6))
    width = 0.8 / len(METRICS)
    for i, metric in enumerate(METRICS):
        values = [row[metric] or 0.0 for row in rows]
        ax.bar([x + i * width for x in range(len(models))], values, width, label=metric)
    ax.set_xticks([x + width * (len(METRICS) - 1) / 2 for x in range(len(models))])
    ax.set_xticklabels(models)
    ax.set_title(f"{dataset}: full ranking, leave-one-out")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def merge_rows(previous_file: Path, rows: List[Dict[str, Any]], profile: str) -> List[Dict[str, Any]]:
    """Rows of an earlier run of the same profile, with this run's models replacing theirs."""
    if not previous_file.is_file():
        return rows
    previous = json.loads(previous_file.read_text(encoding="utf-8"))
    if previous.get("profile") != profile:
        return rows
    fresh = {row["model"] for row in rows}
    return [row for row in previous["rows"] if row["model"] not in fresh] + rows


def profile_description(profile: str) -> str:
    """One Markdown line stating the sizes a profile trains with (per model and dataset too)."""
    def settings(values: Dict[str, Any]) -> str:
        return ", ".join(f"{key}={value}" for key, value in values.items())

    if not PROFILES[profile]:
        return f"Profile `{profile}`: every model's own yaml settings."
    parts = [f"Profile `{profile}`: {settings(PROFILES[profile])}"]
    by_settings: Dict[str, List[str]] = {}
    for model, values in MODEL_PROFILES[profile].items():
        by_settings.setdefault(settings(values), []).append(model)
    parts += [f"{', '.join(models)}: {text}" for text, models in by_settings.items()]
    parts += [f"{dataset}: {settings(values)}" for dataset, values in DATASET_PROFILES.items()]
    return "; ".join(parts) + ". Each row's exact command is in the JSON file."


def write_outputs(rows: List[Dict[str, Any]], dataset: str, out: Path, meta: Dict[str, Any]) -> None:
    """Write (merging with an earlier run of the same profile) the JSON, Markdown and PNG files."""
    from recbole_llm.utils import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    rows = merge_rows(out / f"{dataset}.json", rows, meta["profile"])
    payload = json.dumps({**meta, "rows": rows}, indent=2)
    atomic_write(out / f"{dataset}.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    commands = sorted({row.get("benchmark_command", meta["benchmark_command"]) for row in rows})
    table = (f"### {dataset}\n\n" + "".join(f"`{c}`\n\n" for c in commands)
             + profile_description(meta["profile"]) + "\n\n" + markdown_table(rows))
    atomic_write(out / f"{dataset}.md", lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))
    bar_chart(rows, dataset, out / f"{dataset}.png")


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        sys.argv = [sys.argv[0]]  # RecBole's Config must not read the worker's spec as overrides
        _worker_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--models", nargs="+", default=["SASRec", "BERT4Rec"])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for every run (yaml values)")
    parser.add_argument("--variant", default=None,
                        help="label for this run's rows, shown as 'Model (label)' (ablations with --set)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per job (OMP_NUM_THREADS); default: torch's choice")
    parser.add_argument("--data_root", default="dataset", help="where converted datasets live")
    parser.add_argument("--shared_data", default=None, help="upstream files for --prepare")
    parser.add_argument("--prepare", action="store_true", help="convert missing known datasets first")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import yaml

    user_overrides = {"seed": args.seed, "show_progress": False}
    for item in args.set:
        key, _, value = item.partition("=")
        user_overrides[key] = yaml.safe_load(value)
    data_root, out = Path(args.data_root), Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    jobs = [(d, m) for d in args.datasets for m in args.models]
    meta = {"benchmark_command": "python -m recbole_llm.benchmark " + " ".join(shlex.quote(a) for a in argv),
            "profile": args.profile, "overrides": {**PROFILES[args.profile], **user_overrides},
            "model_overrides": MODEL_PROFILES[args.profile]}
    rows_by_dataset: Dict[str, List[Dict[str, Any]]] = {}
    for number, (dataset, model) in enumerate(jobs, start=1):
        if args.prepare:
            prepare_dataset(dataset, data_root, Path(args.shared_data or "../shared/data"))
        config_files = dataset_config_files(dataset, data_root)
        run_overrides = job_overrides(args.profile, model, dataset, user_overrides)
        if dataset != "ml-100k":
            run_overrides["data_path"] = str(data_root)
        label = f"{model}-{args.variant}" if args.variant else model
        print(f"[{number}/{len(jobs)}] {label} on {dataset} ...", flush=True)
        row = run_in_subprocess(model, dataset, config_files, run_overrides, logs / f"{dataset}-{label}.log",
                                 args.threads)
        if row is None:
            continue
        row["benchmark_command"] = meta["benchmark_command"]
        if args.variant:
            row["model"] = f"{model} ({args.variant})"
        print(f"  N@10 {row['ndcg@10']:.4f}  R@10 {row['recall@10']:.4f}  {row['epochs']} epochs, "
              f"{row['train_seconds_per_epoch']:.1f} s/epoch, peak RAM {row['peak_ram_mb']:.0f} MB", flush=True)
        rows_by_dataset.setdefault(dataset, []).append(row)
        write_outputs(rows_by_dataset[dataset], dataset, out, meta)
    for dataset, rows in rows_by_dataset.items():
        print(f"\n### {dataset}\n" + markdown_table(rows))


if __name__ == "__main__":
    # A terminated table run must not leave its job running: SIGTERM becomes SystemExit, on which
    # subprocess.run kills the job before re-raising.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main()
