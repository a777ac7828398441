"""Results table: several models on several datasets and seeds, same protocol, one command.

    python -m recbole_llm.benchmark --datasets Office Scientific --seeds 3 --jobs 2 --threads 1
    python -m recbole_llm.benchmark readme      # README results section from the JSON files

Each (dataset, model, seed) job trains in its own subprocess (so peak memory is its own) through
:func:`recbole_llm.run_recbole_llm`. For every dataset (and profile) the script writes
``<out>/<dataset>.json``: one row per model with the mean and the standard deviation over seeds
of every metric, epoch count, seconds per epoch, evaluation seconds and peak memory, the seeds,
every seed's own result and exact ``run_recbole_llm.py`` command, the versions, and a paired
significance test against SASRec over the test users; ``<out>/<dataset>.per_user.npz``: each
(model, seed)'s per-user test NDCG@10, from which the test is recomputed; ``<out>/<dataset>.md``
(the table); ``<out>/<dataset>_vs_sasrec.png`` and ``<out>/<dataset>_cost.png`` (the charts).
A profile other than ``cpu`` writes ``<dataset>-<profile>.*``.
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
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from recbole_llm.errors import MissingFileError
from recbole_llm.profiles import DATASET_PROFILES, MODEL_PROFILES, PROFILES, job_overrides
from recbole_llm.utils import exit_on_user_error

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")

# Datasets the table knows how to prepare from --shared_data (raw upstream files): format and
# folder. ml-1m: unzip https://files.grouplens.org/datasets/movielens/ml-1m.zip there.
CONVERTIBLE = {
    "Scientific": ("unisrec", "amazon-scientific"),
    "Office": ("lcrec", "amazon-office"),
    "ml-1m": ("movielens", "ml-1m"),
}


def dataset_config_files(dataset: str, data_root: Path) -> List[str]:
    """The converter-written yaml of a dataset, or nothing for RecBole's bundled ml-100k."""
    if dataset == "ml-100k":
        return []
    yaml_file = data_root / dataset / f"{dataset}.yaml"
    if not yaml_file.is_file():
        raise MissingFileError(
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


# The classic baselines every table carries; REFERENCE is the model every row is compared with.
BASELINES = ("SASRec", "BERT4Rec", "GRU4Rec")
REFERENCE = "SASRec"
# Plugin models that the item-sequence tables do not apply to, and why (printed when skipped).
NOT_APPLICABLE = {
    "UniSAR": "needs histories mixing searches and recommendations (docs/unisar.md)",
}
# Statistics every row reports as mean and standard deviation over its seeds.
AGGREGATED = METRICS + ("valid_ndcg@10", "epochs", "train_seconds_per_epoch", "test_eval_seconds",
                        "setup_seconds", "wall_seconds", "peak_ram_mb", "peak_gpu_mb")
SIGNIFICANCE_TEST = "Wilcoxon signed-rank, two-sided"
# The split each dataset's rows use, named in the table's split column.
DATASET_SPLITS = {
    "Office": "LC-Rec json, leave-one-out",
    "Scientific": "UniSRec/VQ-Rec pre-split files",
    "ml-1m": "leave-one-out, chronological",
    "ml-100k": "leave-one-out, chronological",
}
# Papers' own numbers, listed only where the paper used the same split as our rows.
PAPER_NUMBERS: Dict[str, List[Dict[str, Any]]] = {
    "Scientific": [
        {"model": "VQ-Rec paper (pre-trained on 5 domains)", "recall@10": 0.1211, "ndcg@10": 0.0643,
         "recall@50": 0.2369, "ndcg@50": 0.0897, "split": "UniSRec/VQ-Rec pre-split files (VQ-Rec README)"},
        {"model": "SASRec in the VQ-Rec paper", "ndcg@10": 0.0553,
         "split": "UniSRec/VQ-Rec pre-split files (VQ-Rec paper)"},
    ],
}
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
# Datasets in the order the README shows them; others follow alphabetically.
README_ORDER = ("Office", "Scientific", "ml-1m")


def default_models() -> List[str]:
    """The classic baselines, then every registered plugin model the tables apply to."""
    from recbole_llm.registry import available_models

    plugin = [name for name in available_models()["recbole_llm"] if name not in NOT_APPLICABLE]
    return list(BASELINES) + plugin


def run_one(model: str, dataset: str, config_files: List[str], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Train and test one model with one seed in this process; returns that seed's result."""
    import torch

    from recbole_llm import run_recbole_llm

    start = time.perf_counter()
    result = run_recbole_llm(model=model, dataset=dataset, config_file_list=config_files or None,
                             config_dict=overrides, saved=True)
    wall = time.perf_counter() - start
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores)"
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_user = result.get("test_per_user")
    return {
        "model": model,
        "dataset": dataset,
        "seed": overrides.get("seed"),
        **{metric: result["test_result"].get(metric) for metric in METRICS},
        "valid_ndcg@10": result["best_valid_result"].get("ndcg@10"),
        **result["timing"],
        "wall_seconds": round(wall, 1),
        "cpu_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),  # the machine's 1-minute load when the job ended
        "preparation": result.get("preparation", {}),
        "peak_ram_mb": round(peak_rss_mb, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
        "command": equivalent_command(model, dataset, config_files, overrides),
        "versions": versions(device),
        "test_per_user": None if per_user is None else {k: np.asarray(v).tolist() for k, v in per_user.items()},
    }


def _worker_main(argv: List[str]) -> None:
    spec = json.loads(argv[0])
    row = run_one(spec["model"], spec["dataset"], spec["config_files"], spec["overrides"])
    print("BENCHMARK_ROW " + json.dumps(row), flush=True)


_RUNNING: set = set()  # job processes still running, killed when the table run is stopped


def run_in_subprocess(model: str, dataset: str, config_files: List[str], overrides: Dict[str, Any],
                      log_file: Path, threads: Optional[int] = None, per_user: bool = False) -> Optional[Dict[str, Any]]:
    """Run one job in a fresh interpreter; ``threads`` caps its CPU threads (None: torch's default).

    The row keeps the per-user test vectors (``test_per_user``) only when ``per_user`` is set.
    """
    spec = json.dumps({"model": model, "dataset": dataset, "config_files": config_files, "overrides": overrides})
    package_parent = str(Path(__file__).resolve().parent.parent)  # the worker imports this same copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "recbole_llm.benchmark", "--worker", spec],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        _RUNNING.add(proc)
        try:
            stdout, _ = proc.communicate()
        finally:
            _RUNNING.discard(proc)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for line in stdout.splitlines():
        if line.startswith("BENCHMARK_ROW "):
            row = json.loads(line[len("BENCHMARK_ROW "):])
            if not per_user:
                row.pop("test_per_user", None)
            return row
    print(f"  failed (exit {proc.returncode}); see {log_file}", flush=True)
    return None


# ---------------------------------------------------------------------------------------------
# Rows: seeds aggregated into mean and spread


def _mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof=1; None with one value) of the non-missing values."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    std = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return float(np.mean(present)), std


def aggregate_seeds(label: str, per_seed: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One table row from a model's per-seed results: means under the metric names, ``<name>_std``."""
    per_seed = sorted(per_seed, key=lambda r: r["seed"])
    first = per_seed[0]
    row: Dict[str, Any] = {"model": label, "dataset": first["dataset"], "seeds": [r["seed"] for r in per_seed]}
    for name in AGGREGATED:
        mean, std = _mean_std([r.get(name) for r in per_seed])
        row[name], row[f"{name}_std"] = mean, std
    detail_keys = ("versions", "benchmark_command", "test_per_user")
    row.update(
        command=first["command"],
        benchmark_command=first.get("benchmark_command"),
        versions=first["versions"],
        preparation=first.get("preparation", {}),
        per_seed=[{k: v for k, v in r.items() if k not in detail_keys} for r in per_seed],
    )
    return row


def _seed_of_command(command: str) -> Optional[int]:
    for part in shlex.split(command):
        if part.startswith("--seed="):
            return int(part[len("--seed="):])
    return None


def migrate_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A row written before seeds were aggregated, as a one-seed row (``seeds`` of length 1)."""
    if "seeds" in row:
        return row
    seed = _seed_of_command(row["command"])
    single = {**{k: v for k, v in row.items() if k not in ("versions", "benchmark_command")}, "seed": seed}
    migrated = aggregate_seeds(row["model"], [{**single, "versions": row["versions"],
                                               "benchmark_command": row.get("benchmark_command")}])
    return migrated


# ---------------------------------------------------------------------------------------------
# Per-user vectors and the paired test


def per_user_file(out: Path, stem: str) -> Path:
    return out / f"{stem}.per_user.npz"


def _vector_key(label: str, seed: int, field: str) -> str:
    return f"{label}::{seed}::{field}"


def load_per_user(file: Path) -> Dict[Tuple[str, int], Dict[str, np.ndarray]]:
    """``{(label, seed): {"users": tokens, "ndcg@10": values}}`` from a ``.per_user.npz`` file."""
    vectors: Dict[Tuple[str, int], Dict[str, np.ndarray]] = {}
    if not file.is_file():
        return vectors
    with np.load(file, allow_pickle=False) as archive:
        for key in archive.files:
            label, seed, field = key.rsplit("::", 2)
            vectors.setdefault((label, int(seed)), {})[field] = archive[key]
    return vectors


def save_per_user(file: Path, vectors: Dict[Tuple[str, int], Dict[str, np.ndarray]]) -> None:
    from recbole_llm.utils import atomic_write

    arrays = {_vector_key(label, seed, field): np.asarray(values)
              for (label, seed), fields in sorted(vectors.items()) for field, values in fields.items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(file, write)


def paired_test(vectors: Dict[Tuple[str, int], Dict[str, np.ndarray]], label: str, seeds: Iterable[int],
                reference: str = REFERENCE, reference_seeds: Iterable[int] = ()) -> Optional[Dict[str, Any]]:
    """Wilcoxon signed-rank test of ``label`` against ``reference`` over the test users.

    Each user's NDCG@10 is averaged over the seeds both rows ran (and both stored vectors for);
    the two-sided test pairs these averages user by user. None without a shared seed.
    """
    from scipy.stats import wilcoxon

    shared = sorted(set(seeds) & set(reference_seeds))
    shared = [s for s in shared if (label, s) in vectors and (reference, s) in vectors]
    if not shared:
        return None

    def by_user(name: str, seed: int) -> Dict[str, float]:
        fields = vectors[(name, seed)]
        return dict(zip(fields["users"].tolist(), fields["ndcg@10"].tolist()))

    ours = [by_user(label, s) for s in shared]
    theirs = [by_user(reference, s) for s in shared]
    users = sorted(set.intersection(*(set(v) for v in ours + theirs)))
    if not users:
        return None
    a = np.array([[v[u] for u in users] for v in ours]).mean(axis=0)
    b = np.array([[v[u] for u in users] for v in theirs]).mean(axis=0)
    p_value = 1.0 if np.all(a == b) else float(wilcoxon(a, b).pvalue)
    return {"reference": reference, "test": SIGNIFICANCE_TEST, "seeds": shared, "users": len(users),
            "ndcg@10": float(a.mean()), "reference_ndcg@10": float(b.mean()), "p_value": p_value}


def relative_to_reference(row: Dict[str, Any], reference_row: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """N@10 divided by the reference's on each shared seed: mean, sample std and the seeds."""
    if reference_row is None:
        return None
    theirs = {r["seed"]: r.get("ndcg@10") for r in reference_row["per_seed"]}
    ratios = {r["seed"]: r["ndcg@10"] / theirs[r["seed"]] for r in row["per_seed"]
              if r.get("ndcg@10") is not None and theirs.get(r["seed"])}
    if not ratios:
        return None
    mean, std = _mean_std(list(ratios.values()))
    return {"mean": mean, "std": std, "seeds": sorted(ratios)}


def variant_of(label: str) -> Optional[str]:
    """``"fine-tuned"`` for ``"SAID (fine-tuned)"``; None for a model's default settings."""
    return label[label.index(" (") + 2:-1] if label.endswith(")") and " (" in label else None


def reference_label(label: str, labels: Iterable[str]) -> str:
    """The row a label is compared with: SASRec of the same variant when the table has it, else SASRec."""
    variant = variant_of(label)
    same_variant = f"{REFERENCE} ({variant})"
    return same_variant if variant is not None and same_variant in set(labels) else REFERENCE


def is_reference(label: str) -> bool:
    return label == REFERENCE or label.startswith(f"{REFERENCE} (")


def annotate(rows: List[Dict[str, Any]], vectors: Dict[Tuple[str, int], Dict[str, np.ndarray]]) -> None:
    """Add each row's ratio to its reference and its paired test (recomputed from the vectors)."""
    by_label = {row["model"]: row for row in rows}
    for row in rows:
        if is_reference(row["model"]):
            row["vs_reference"], row["significance"] = None, None
            continue
        name = reference_label(row["model"], by_label)
        reference = by_label.get(name)
        row["vs_reference"] = relative_to_reference(row, reference)
        if row["vs_reference"] is not None:
            row["vs_reference"]["reference"] = name
        row["significance"] = None if reference is None else paired_test(
            vectors, row["model"], row["seeds"], name, reference["seeds"])


# ---------------------------------------------------------------------------------------------
# Tables and charts


def _number(value: Optional[float], std: Optional[float], digits: int, thousands: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"
    if std is not None:
        text += f" ± {std:,.{digits}f}" if thousands else f" ± {std:.{digits}f}"
    return text


def significance_mark(significance: Optional[Dict[str, Any]]) -> str:
    if not significance:
        return ""
    p = significance["p_value"]
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def markdown_table(rows: List[Dict[str, Any]], dataset: str) -> str:
    """The table of a dataset's rows (mean ± std over seeds), then the papers' same-split numbers."""
    header = ("| model | seeds | R@10 | N@10 | R@50 | N@50 | N@10 / SASRec | epochs | train s/epoch | "
              "test eval s | peak RAM MB | peak GPU MB | split |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    split = DATASET_SPLITS.get(dataset, "leave-one-out")
    lines = []
    for row in rows:
        metrics = " | ".join(_number(row[m], row.get(f"{m}_std"), 4) for m in METRICS)
        ratio = row.get("vs_reference")
        relative = "1" if is_reference(row["model"]) else "-" if not ratio else (
            _number(ratio["mean"], ratio["std"], 3) + significance_mark(row.get("significance")))
        epochs = _number(row["epochs"], row.get("epochs_std"), 1) if len(row["seeds"]) > 1 else f"{row['epochs']:.0f}"
        lines.append(
            f"| {row['model']} | {len(row['seeds'])} | {metrics} | {relative} | {epochs} | "
            f"{_number(row['train_seconds_per_epoch'], row.get('train_seconds_per_epoch_std'), 1)} | "
            f"{_number(row['test_eval_seconds'], row.get('test_eval_seconds_std'), 2)} | "
            f"{_number(row['peak_ram_mb'], row.get('peak_ram_mb_std'), 0, thousands=True)} | "
            f"{_number(row.get('peak_gpu_mb'), row.get('peak_gpu_mb_std'), 0, thousands=True)} | {split} |")
    for paper in PAPER_NUMBERS.get(dataset, []):
        metrics = " | ".join(_number(paper.get(m), None, 4) for m in METRICS)
        lines.append(f"| {paper['model']} | | {metrics} | | | | | | | {paper['split']} |")
    return header + "\n".join(lines) + "\n"


def table_notes(rows: List[Dict[str, Any]]) -> str:
    """What the marks, the spread and the ratio mean, and the machines the rows ran on."""
    tested = [r["significance"] for r in rows if r.get("significance")]
    users = ", ".join(map(str, sorted({s["users"] for s in tested})))
    devices = sorted({r["versions"]["device"] for r in rows})
    stacks = sorted({", ".join(f"{k} {v}" for k, v in r["versions"].items() if k != "device") for r in rows})
    notes = [
        "Mean ± sample standard deviation over the row's seeds (seeds column: how many; a row of 1 "
        "seed has no spread). N@10 / SASRec: the NDCG@10 ratio to SASRec on each shared seed, mean ± std; "
        "a variant row `Model (label)` is compared with `SASRec (label)` when the table has one.",
        f"`*` p < 0.05, `**` p < 0.01: {SIGNIFICANCE_TEST} test against SASRec over the "
        + (f"{users} test users" if users else "test users (no row here is tested yet)")
        + ", pairing each user's NDCG@10 averaged over the seeds both rows ran; rows without stored "
        "per-user results have no test.",
        f"Device: {'; '.join(devices)}. Versions: {'; '.join(stacks)}.",
    ]
    return "\n".join(notes) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ratio_chart(rows: List[Dict[str, Any]], title: str, file: Path) -> None:
    """Each model's NDCG@10 relative to SASRec (error bars: std over seeds), sorted, line at 1.0."""
    plt = _pyplot()

    def label(row: Dict[str, Any]) -> str:
        mark = significance_mark(row.get("significance"))
        return row["model"] + (" [1 seed]" if len(row["seeds"]) == 1 else "") + (f" {mark}" if mark else "")

    ranked = [(label(r), r["vs_reference"], False) for r in rows if r.get("vs_reference")]
    ranked += [(label(r), {"mean": 1.0, "std": None}, True) for r in rows if is_reference(r["model"])]
    ranked.sort(key=lambda item: item[1]["mean"])
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.38 * max(len(ranked), 1)))
    positions = range(len(ranked))
    ax.barh(list(positions), [v["mean"] for _, v, _ in ranked], xerr=[v["std"] or 0.0 for _, v, _ in ranked],
            color=["#888888" if reference else "#3b75af" for _, _, reference in ranked], capsize=3)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(positions))
    ax.set_yticklabels([name for name, _, _ in ranked])
    ax.set_xlabel("NDCG@10 / SASRec's on the same seeds (* p<0.05, ** p<0.01, Wilcoxon)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=120, format="png")
    plt.close(fig)


def cost_chart(rows: List[Dict[str, Any]], title: str, file: Path) -> None:
    """NDCG@10 against training seconds per epoch (log scale), error bars over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        x, y = row["train_seconds_per_epoch"], row["ndcg@10"]
        if x is None or y is None:
            continue
        ax.errorbar(x, y, xerr=row.get("train_seconds_per_epoch_std") or 0.0, yerr=row.get("ndcg@10_std") or 0.0,
                    fmt="o", capsize=3)
        ax.annotate(row["model"] + (" [1 seed]" if len(row["seeds"]) == 1 else ""), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training seconds per epoch (log scale)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(file, dpi=120, format="png")
    plt.close(fig)


def profile_description(profile: str, dataset: Optional[str] = None) -> str:
    """One Markdown line stating the sizes a profile trains with (per model and dataset too).

    With ``dataset``, only that dataset's own additions are listed.
    """
    def settings(values: Dict[str, Any]) -> str:
        return ", ".join(f"{key}={value}" for key, value in values.items())

    if not PROFILES[profile]:
        return f"Profile `{profile}`: every model's own yaml settings."
    parts = [f"Profile `{profile}`: {settings(PROFILES[profile])}"]
    by_settings: Dict[str, List[str]] = {}
    for model, values in MODEL_PROFILES[profile].items():
        by_settings.setdefault(settings(values), []).append(model)
    parts += [f"{', '.join(models)}: {text}" for text, models in by_settings.items()]
    parts += [f"{name}: {settings(values)}" for name, values in DATASET_PROFILES.items()
              if dataset in (None, name)]
    return "; ".join(parts) + ". Each row's exact command is in the JSON file."


def results_stem(dataset: str, profile: str) -> str:
    """File stem of a dataset's results: ``<dataset>`` for the cpu profile, else ``<dataset>-<profile>``."""
    return dataset if profile == "cpu" else f"{dataset}-{profile}"


def dataset_section(payload: Dict[str, Any], image_prefix: str = "") -> str:
    """A dataset's Markdown: heading with the profile, commands, profile sizes, table, notes, charts."""
    dataset, profile, rows = payload["dataset"], payload["profile"], payload["rows"]
    stem = results_stem(dataset, profile)
    commands = sorted({row["benchmark_command"] for row in rows if row.get("benchmark_command")})
    return (f"### {dataset}, profile `{profile}`\n\n"
            + "```bash\n" + "\n".join(commands) + "\n```\n\n"
            + profile_description(profile, dataset) + "\n\n" + markdown_table(rows, dataset) + "\n" + table_notes(rows)
            + f"\n![{dataset}: NDCG@10 relative to SASRec]({image_prefix}{stem}_vs_sasrec.png) "
            f"![{dataset}: NDCG@10 against seconds per epoch]({image_prefix}{stem}_cost.png)\n")


def merge_rows(previous: List[Dict[str, Any]], fresh: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Earlier rows (migrated to the seeds format), with this run's models replacing theirs."""
    labels = {row["model"] for row in fresh}
    kept = [migrate_row(row) for row in previous if row["model"] not in labels]
    return table_order(kept + fresh)


def table_order(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Default-settings rows, then each variant's; in each group the baselines first, then as they came."""
    order = {name: i for i, name in enumerate(BASELINES)}

    def key(row: Dict[str, Any]) -> Tuple[bool, str, int]:
        variant = variant_of(row["model"])
        base = row["model"] if variant is None else row["model"][: -len(variant) - 3]
        return variant is not None, variant or "", order.get(base, len(order))

    return sorted(rows, key=key)


def write_outputs(fresh: List[Dict[str, Any]], dataset: str, out: Path, meta: Dict[str, Any],
                  fresh_vectors: Optional[Dict[Tuple[str, int], Dict[str, np.ndarray]]] = None) -> Dict[str, Any]:
    """Merge this run's rows and per-user vectors into the dataset's files and rewrite them all."""
    from recbole_llm.utils import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(dataset, meta["profile"])
    json_file, vector_file = out / f"{stem}.json", per_user_file(out, stem)
    previous = json.loads(json_file.read_text(encoding="utf-8")) if json_file.is_file() else {"rows": []}
    rows = merge_rows(previous["rows"], fresh)
    vectors = {key: value for key, value in load_per_user(vector_file).items()
               if key[0] not in {row["model"] for row in fresh}}
    vectors.update(fresh_vectors or {})
    if fresh_vectors is not None:
        save_per_user(vector_file, vectors)
    annotate(rows, vectors)
    payload = {**previous, **meta, "dataset": dataset, "rows": rows}
    text = json.dumps(payload, indent=2)
    atomic_write(json_file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    render_dataset(payload, out)
    return payload


def render_dataset(payload: Dict[str, Any], out: Path) -> None:
    """The Markdown table and the two charts of one results JSON payload."""
    from recbole_llm.utils import atomic_write

    stem = results_stem(payload["dataset"], payload["profile"])
    section = dataset_section(payload)
    atomic_write(out / f"{stem}.md", lambda tmp: Path(tmp).write_text(section, encoding="utf-8"))
    title = f"{payload['dataset']}, profile {payload['profile']}: full ranking, leave-one-out"
    atomic_write(out / f"{stem}_vs_sasrec.png", lambda tmp: ratio_chart(payload["rows"], title, Path(tmp)))
    atomic_write(out / f"{stem}_cost.png", lambda tmp: cost_chart(payload["rows"], title, Path(tmp)))


# ---------------------------------------------------------------------------------------------
# README section


def result_payloads(out: Path) -> List[Dict[str, Any]]:
    """Every results-table JSON in ``out`` (as this module writes them), in README order."""
    payloads = []
    for file in sorted(out.glob("*.json")):
        payload = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(payload, dict) and {"rows", "profile", "benchmark_command", "model_overrides"} <= set(payload):
            suffix = "" if payload["profile"] == "cpu" else f"-{payload['profile']}"
            payload.setdefault("dataset", file.stem[: len(file.stem) - len(suffix)])
            payload["rows"] = table_order([migrate_row(row) for row in payload["rows"]])
            annotate(payload["rows"], load_per_user(per_user_file(out, file.stem)))
            payloads.append(payload)
    order = {name: i for i, name in enumerate(README_ORDER)}
    return sorted(payloads, key=lambda p: (order.get(p["dataset"], len(order)), p["dataset"], p["profile"] != "cpu"))


def readme_section(out: Path, image_prefix: str) -> str:
    """The generated README text between the results markers."""
    intro = ("Generated from the JSON files in `benchmarks/results/` by "
             "`python -m recbole_llm.benchmark readme`; do not edit by hand.\n")
    body = "\n".join(dataset_section(p, image_prefix=image_prefix) for p in result_payloads(out))
    return f"{README_START}\n{intro}\n{body}{README_END}"


def update_readme(readme: Path, out: Path, check: bool = False) -> bool:
    """Rewrite the README's results section from ``out``; with ``check``, only report staleness."""
    from recbole_llm.utils import atomic_write

    text = readme.read_text(encoding="utf-8")
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{readme}: expected one {README_START} and one {README_END} marker")
    before, rest = text.split(README_START)
    _, after = rest.split(README_END)
    prefix = os.path.relpath(out.resolve(), readme.resolve().parent).replace(os.sep, "/") + "/"
    new_text = before + readme_section(out, prefix) + after
    if check:
        return new_text == text
    atomic_write(readme, lambda tmp: Path(tmp).write_text(new_text, encoding="utf-8"))
    return True


def _readme_main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_llm.benchmark readme",
                                     description="Regenerate the README's results section (and each "
                                                 "dataset's .md and charts) from the JSON files.")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README is stale; write nothing")
    args = parser.parse_args(argv)
    out = Path(args.results)
    if args.check:
        if not update_readme(Path(args.readme), out, check=True):
            sys.exit(f"{args.readme}: results section differs from {out}; run python -m recbole_llm.benchmark readme")
        return
    for payload in result_payloads(out):
        render_dataset(payload, out)
    update_readme(Path(args.readme), out)


# ---------------------------------------------------------------------------------------------
# Command line


def seed_list(seeds: int, first: int, explicit: Optional[List[int]]) -> List[int]:
    """``explicit`` when given, else ``seeds`` consecutive seeds from ``first``."""
    if explicit:
        if len(set(explicit)) != len(explicit):
            raise ValueError(f"--seed_list repeats a seed: {explicit}")
        return list(explicit)
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    return [first + i for i in range(seeds)]


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        _worker_main(argv[1:])
        return
    if argv and argv[0] == "readme":
        _readme_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(README_ORDER))
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"default: {', '.join(BASELINES)} and every registered plugin model that applies")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per model (from --seed)")
    parser.add_argument("--seed", type=int, default=2020, help="first seed")
    parser.add_argument("--seed_list", type=int, nargs="+", default=None, help="explicit seeds (overrides --seeds)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs running at once")
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

    seeds = seed_list(args.seeds, args.seed, args.seed_list)
    models = args.models or default_models()
    if args.models is None:
        for name, reason in NOT_APPLICABLE.items():
            print(f"not running {name}: it {reason}", flush=True)
    user_overrides: Dict[str, Any] = {"show_progress": False}
    for item in args.set:
        key, _, value = item.partition("=")
        user_overrides[key] = yaml.safe_load(value)
    if "seed" in user_overrides:
        raise ValueError("pass seeds with --seeds/--seed/--seed_list, not --set seed=...")
    data_root, out = Path(args.data_root), Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark_command": "python -m recbole_llm.benchmark " + " ".join(shlex.quote(a) for a in argv),
            "profile": args.profile, "overrides": {**PROFILES[args.profile], **user_overrides},
            "model_overrides": MODEL_PROFILES[args.profile]}
    for dataset in args.datasets:
        if args.prepare:
            prepare_dataset(dataset, data_root, Path(args.shared_data or "../shared/data"))
        dataset_config_files(dataset, data_root)  # fails early on a missing dataset
    jobs = [(d, m, s) for d in args.datasets for s in seeds for m in models]
    results: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    vectors: Dict[str, Dict[Tuple[str, int], Dict[str, np.ndarray]]] = {}

    def submit(pool: ThreadPoolExecutor, number: int, dataset: str, model: str, seed: int):
        label = f"{model} ({args.variant})" if args.variant else model
        overrides = {**job_overrides(args.profile, model, dataset, user_overrides), "seed": seed}
        if dataset != "ml-100k":
            overrides["data_path"] = str(data_root)
        # own checkpoint folder: RecBole names checkpoints by model and second, which two jobs can share
        base = Path(str(overrides.get("checkpoint_dir", "saved")))
        overrides["checkpoint_dir"] = str(base / "benchmark" / dataset / f"{label}-{seed}".replace(" ", "_"))
        log_file = logs / f"{dataset}-{label}-seed{seed}.log".replace(" ", "_")
        print(f"[{number}/{len(jobs)}] {label} on {dataset}, seed {seed} ...", flush=True)
        return pool.submit(run_in_subprocess, model, dataset, dataset_config_files(dataset, data_root),
                           overrides, log_file, args.threads, True), (dataset, label, seed)

    pool = ThreadPoolExecutor(max_workers=max(args.jobs, 1))
    try:
        futures = dict(submit(pool, n, d, m, s) for n, (d, m, s) in enumerate(jobs, start=1))
        for future in as_completed(futures):
            dataset, label, seed = futures[future]
            row = future.result()
            if row is None:
                continue
            per_user = row.pop("test_per_user", None)
            row["benchmark_command"] = meta["benchmark_command"]
            row["model"] = label
            print(f"  {label} on {dataset}, seed {seed}: N@10 {row['ndcg@10']:.4f}  R@10 {row['recall@10']:.4f}  "
                  f"{row['epochs']} epochs, {row['train_seconds_per_epoch']:.1f} s/epoch, "
                  f"peak RAM {row['peak_ram_mb']:.0f} MB", flush=True)
            results.setdefault((dataset, label), []).append(row)
            if per_user is not None:
                vectors.setdefault(dataset, {})[(label, seed)] = {k: np.asarray(v) for k, v in per_user.items()}
            fresh = [aggregate_seeds(lab, rows) for (d, lab), rows in results.items() if d == dataset]
            write_outputs(fresh, dataset, out, meta, vectors.get(dataset, {}))
    except BaseException:
        for proc in list(_RUNNING):
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for dataset in args.datasets:
        stem = results_stem(dataset, args.profile)
        if (out / f"{stem}.md").is_file():
            print("\n" + (out / f"{stem}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    # A terminated table run must not leave its jobs running: SIGTERM becomes SystemExit, on which
    # main kills the running jobs before re-raising.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    exit_on_user_error(main)()
