"""SAID vs SASRec on Amazon Scientific and Office, plus SAID's stage-1 cost and reconstruction loss.

    nice python benchmarks/said.py --datasets Office Scientific

Both models train on the same converted data, protocol (leave-one-out, full ranking) and seed,
each in its own subprocess (so peak memory is its own), through ``recbole_llm.benchmark``.
SAID's stage 1 runs inside its subprocess with the packaged SmolLM2-135M-Instruct (or
``--said_llm``); its training seconds, peak memory and reconstruction loss before/after are read
from the statistics file stage 1 writes beside its cached table. Writes
``benchmarks/results/said.json`` and ``said.md``.

Datasets come from ``python -m recbole_llm.convert`` when that module is installed; otherwise
this script writes minimal RecBole atomic files itself from ``../shared/data`` (Scientific: the
UniSRec split's full histories, so leave-one-out reproduces its valid/test items; Office: the
LC-Rec json histories), with item text "title. categories. brand.".
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbole_llm.benchmark import METRICS, PROFILES, run_in_subprocess, versions  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402

SOURCES = {"Scientific": ("unisrec", "amazon-scientific"), "Office": ("lcrec", "amazon-office")}

# Stage-1 settings affordable on 2 shared CPU cores (the yaml defaults are for a GPU).
CPU_STAGE1 = {"said_soft_tokens": 1, "said_max_text_tokens": 10, "said_batch_size": 64, "said_epochs": 1,
              "said_prompt": "", "said_eval_items": 256, "said_save_steps": 10}


def _write_atomic_files(folder: Path, name: str, histories: Dict[str, List[str]], texts: Dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, items in histories.items():
        inter += [f"{user}\t{item}\t{step}" for step, item in enumerate(items)]
    used = sorted({item for items in histories.values() for item in items}, key=int)
    item = ["item_id:token\ttext:token_seq"] + [f"{i}\t{' '.join(texts.get(i, '').split())}" for i in used]
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    (folder / f"{name}.item").write_text("\n".join(item) + "\n", encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        "load_col:\n  inter: [user_id, item_id, timestamp]\n  item: [item_id, text]\n"
        "text_fields: [text]\nseq_separator: ' '\n", encoding="utf-8")


def _scientific(source: Path) -> tuple:
    histories = {}
    for line in (source / "Scientific.test.inter").read_text(encoding="utf-8").splitlines()[1:]:
        user, seq, target = line.split("\t")
        histories[user] = seq.split() + [target]
    asin_to_index = dict(line.split("\t") for line in (source / "Scientific.item2index").read_text().splitlines() if line)
    texts = {}
    for line in (source / "Scientific.text").read_text(encoding="utf-8").splitlines()[1:]:
        asin, _, text = line.partition("\t")
        if asin in asin_to_index:
            texts[asin_to_index[asin]] = text
    return histories, texts


def _office(source: Path) -> tuple:
    histories = {u: [str(i) for i in items] for u, items in json.loads((source / "Office.inter.json").read_text()).items()}
    meta = json.loads((source / "Office.item.json").read_text(encoding="utf-8"))
    texts = {i: ". ".join(part for part in (m.get("title"), m.get("categories"), m.get("brand")) if part)
             for i, m in meta.items()}
    return histories, texts


def prepare(dataset: str, data_root: Path, shared: Path) -> List[str]:
    """The dataset's yaml (converted now if missing) as a config file list."""
    yaml_file = data_root / dataset / f"{dataset}.yaml"
    if yaml_file.is_file():
        return [str(yaml_file)]
    fmt, folder = SOURCES[dataset]
    if importlib.util.find_spec("recbole_llm.convert") is not None:
        subprocess.run([sys.executable, "-m", "recbole_llm.convert", fmt, "--input", str(shared / folder),
                        "--output", str(data_root / dataset)], check=True)
    else:
        histories, texts = (_scientific if dataset == "Scientific" else _office)(shared / folder)
        _write_atomic_files(data_root / dataset, dataset, histories, texts)
    return [str(yaml_file)]


def stage1_stats(cache_root: Path, dataset: str) -> Dict[str, Any]:
    """The newest stage-1 statistics file of ``dataset``."""
    files = sorted((cache_root / dataset / "said").glob("said_emb_*.json"), key=lambda f: f.stat().st_mtime)
    return json.loads(files[-1].read_text(encoding="utf-8")) if files else {}


def run_stage1(dataset: str, config_files: List[str], overrides: Dict[str, Any]) -> None:
    """SAID's stage 1 alone, in this process (it writes its statistics beside its cached table)."""
    sys.argv = sys.argv[:1]  # RecBole's Config must not read this script's flags
    from recbole_llm import Config, create_dataset
    from recbole_llm.llm.semantic_embedding import semantic_item_embeddings

    config = Config(model="SAID", dataset=dataset, config_file_list=config_files, config_dict=overrides)
    semantic_item_embeddings(config, create_dataset(config))  # writes its statistics beside the table


def markdown(rows: List[Dict[str, Any]], stage1: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| data | model | R@10 | N@10 | R@50 | N@50 | epochs | s/epoch | peak RAM MB |", "|" + "---|" * 9]
    for row in rows:
        metrics = " | ".join(f"{row[m]:.4f}" for m in METRICS)
        lines.append(f"| {row['dataset']} | {row['model']} | {metrics} | {row['epochs']} | "
                     f"{row['train_seconds_per_epoch']:.1f} | {row['peak_ram_mb']:.0f} |")
    lines += ["", "| data | stage-1 items | train s | peak RSS MB | recon. loss before | after |", "|" + "---|" * 6]
    for dataset, stats in stage1.items():
        lines.append(f"| {dataset} | {stats.get('train_items')} | {stats.get('train_seconds')} | "
                     f"{stats.get('peak_rss_mb')} | {stats.get('loss_before', float('nan')):.4f} | "
                     f"{stats.get('loss_after', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["Office", "Scientific"], choices=sorted(SOURCES))
    parser.add_argument("--data_root", default=str(REPO / "dataset"))
    parser.add_argument("--shared_data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache_dir", default=str(REPO / "dataset" / ".said_cache"))
    parser.add_argument("--said_llm", default="SmolLM2-135M-Instruct")
    parser.add_argument("--epochs", type=int, default=15, help="stage-2 epochs (both models)")
    parser.add_argument("--models", nargs="+", default=["SASRec", "SAID"], choices=["SASRec", "SAID"])
    parser.add_argument("--said_set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="SAID overrides on top of the CPU stage-1 settings, e.g. said_epochs=2 freeze_item_emb=False")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="said", help="output file stem under --out")
    parser.add_argument("--stage1_only", action="store_true", help="run SAID's stage 1 only (no stage 2, no SASRec)")
    args = parser.parse_args()
    command = "nice python benchmarks/said.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    out, cache_root = Path(args.out), Path(args.cache_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    common = {**PROFILES["cpu"], "epochs": args.epochs, "stopping_step": 3, "seed": 2020, "show_progress": False,
              "data_path": str(Path(args.data_root).resolve()), "cache_dir": str(cache_root.resolve())}
    said = {**CPU_STAGE1, "said_llm": args.said_llm}
    for item in args.said_set:
        key, _, value = item.partition("=")
        said[key] = yaml.safe_load(value)
    rows, stage1 = [], {}
    for dataset in args.datasets:
        config_files = prepare(dataset, Path(args.data_root), Path(args.shared_data))
        models = [] if args.stage1_only else args.models
        if args.stage1_only:
            run_stage1(dataset, config_files, {**common, **said})
        for model, extra in ((m, said if m == "SAID" else {}) for m in models):
            print(f"{model} on {dataset} ...", flush=True)
            row = run_in_subprocess(model, dataset, config_files, {**common, **extra},
                                    out / "logs" / f"{args.name}-{dataset}-{model}.log")
            if row is not None:
                rows.append(row)
                print(f"  N@10 {row['ndcg@10']:.4f} R@10 {row['recall@10']:.4f} wall {row['wall_seconds']} s", flush=True)
        if "SAID" in args.models or args.stage1_only:
            stage1[dataset] = stage1_stats(cache_root, dataset)
            print(f"  stage 1: {json.dumps(stage1[dataset])}", flush=True)
        payload = {"command": command,
                   "common_overrides": common, "said_overrides": said, "rows": rows, "stage1": stage1,
                   "versions": versions("cpu")}
        atomic_write(out / f"{args.name}.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2), encoding="utf-8"))
        atomic_write(out / f"{args.name}.md", lambda tmp: Path(tmp).write_text(f"`{command}`\n\n" + markdown(rows, stage1), encoding="utf-8"))
    print(f"{command}\n{json.dumps(versions('cpu'))}\n" + markdown(rows, stage1))


if __name__ == "__main__":
    main()
