"""Cost and accuracy of LLMSRec / LiteLLM4Rec beside their SASRec on a budget (a CPU run).

    python benchmarks/llm_sequence.py --model LLMSRec --dataset Office --data_path dataset \
        --config_files dataset/Office/Office.yaml --users 500 --train_steps 30 --eval_users 300 --uni99

The model is built on the converted dataset, or with ``--users`` on a seeded sample of its users
(all their interactions, written beside it as ``<dataset>-u<N>``); its SASRec teacher (cached)
trains on the same data. It is trained for ``--train_steps`` batches of RecBole's shuffled
training data (seconds per step, and per epoch extrapolated to every batch), then evaluated under
full ranking and, with
``--uni99``, under 1 positive + 99 sampled negatives, on a seeded sample of ``--eval_users`` test
users. The SASRec it sits beside (LLMSRec: its own frozen teacher; LiteLLM4Rec: a SASRec trained
with ``--sasrec_epochs``) is evaluated on the same users. Writes a JSON row to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbole_llm import Config, create_dataset  # noqa: E402
from recbole_llm.registry import get_model  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def write_user_subset(data_path: Path, dataset: str, users: int, seed: int) -> str:
    """Write ``<dataset>-u<users>``: a seeded sample of the users with all their interactions and items."""
    import random

    name = f"{dataset}-u{users}"
    source, target = Path(data_path) / dataset, Path(data_path) / name
    header, *rows = (source / f"{dataset}.inter").read_text(encoding="utf-8").splitlines()
    all_users = sorted({row.split("\t")[0] for row in rows})
    if users > len(all_users):
        raise ValueError(f"--users {users} exceeds the {len(all_users)} users of {source}")
    kept_users = set(random.Random(seed).sample(all_users, users))
    kept = [row for row in rows if row.split("\t")[0] in kept_users]
    items = {row.split("\t")[1] for row in kept}
    item_header, *item_rows = (source / f"{dataset}.item").read_text(encoding="utf-8").splitlines()
    files = {f"{name}.inter": [header] + kept,
             f"{name}.item": [item_header] + [row for row in item_rows if row.split("\t")[0] in items]}
    target.mkdir(parents=True, exist_ok=True)
    for file, lines in files.items():
        atomic_write(target / file, lambda tmp, lines=lines: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return name


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _user_subset(loader, users: int, seed: int):
    """The same kind of evaluation loader restricted to a seeded sample of its users."""
    dataset = loader._dataset
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(dataset), generator=generator)[:users].sort().values
    subset = dataset.copy(dataset.inter_feat[rows])
    return type(loader)(loader.config, subset, loader._sampler, shuffle=False)


def _evaluate(trainer, loader) -> Dict[str, float]:
    started = time.perf_counter()
    result = trainer.evaluate(loader, load_best_model=False, show_progress=False)
    return {**{m: float(result[m]) for m in METRICS}, "seconds": round(time.perf_counter() - started, 1)}


def _sampled_loader(config_files: List[str], overrides: Dict[str, Any], model: str, users: int, seed: int):
    from recbole.data import data_preparation

    config = Config(model=model, config_file_list=config_files,
                    config_dict={**overrides, "eval_args": {**(overrides.get("eval_args") or {}), "split": {"LS": "valid_and_test"},
                                                            "order": "TO", "group_by": "user", "mode": "uni99"}})
    _, _, test_data = data_preparation(config, create_dataset(config))
    return _user_subset(test_data, users, seed)


def _sasrec_beside(model_name: str, model, config, dataset, epochs: int, hidden_size: int):
    from recbole_llm import teachers

    if model_name == "LLMSRec":
        return model.teacher, "its frozen SASRec teacher"
    teacher, _ = teachers.sasrec_teacher(config, dataset, epochs, hidden_size)
    return teacher, f"SASRec ({epochs} epochs, hidden {hidden_size})"


def main(argv: List[str] | None = None) -> None:
    from recbole.data import data_preparation
    from recbole.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=["LLMSRec", "LiteLLM4Rec"])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--config_files", nargs="*", default=[])
    parser.add_argument("--users", type=int, default=0, help="train and test on a seeded sample of this many users (0: all)")
    parser.add_argument("--train_steps", type=int, default=30, help="training batches (0: none)")
    parser.add_argument("--eval_users", type=int, default=300, help="seeded sample of test users")
    parser.add_argument("--uni99", action="store_true", help="also evaluate with 1 positive + 99 sampled negatives")
    parser.add_argument("--sasrec_epochs", type=int, default=10, help="LiteLLM4Rec: epochs of the SASRec beside it")
    parser.add_argument("--sasrec_hidden", type=int, default=64, help="LiteLLM4Rec: hidden size of the SASRec beside it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dataset_name = write_user_subset(Path(args.data_path), args.dataset, args.users, 2020) if args.users else args.dataset
    overrides = {"data_path": args.data_path, "dataset": dataset_name, "show_progress": False}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = Config(model=args.model, config_file_list=args.config_files, config_dict=overrides)
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)

    started = time.perf_counter()
    model = get_model(args.model)(config, train_data._dataset).to(config["device"])
    build_seconds = time.perf_counter() - started
    trainer = Trainer(config, model)

    model.train()
    step_seconds = []
    for step, batch in enumerate(train_data):
        if step >= args.train_steps:
            break
        started = time.perf_counter()
        loss = model.calculate_loss(batch.to(config["device"]))
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        step_seconds.append(time.perf_counter() - started)
        print(f"step {step}: loss {loss.item():.4f} ({step_seconds[-1]:.1f} s)", flush=True)

    full = _user_subset(test_data, args.eval_users, config["seed"])
    row: Dict[str, Any] = {
        "model": args.model, "dataset": dataset_name, "device": str(config["device"]), "threads": args.threads,
        "train_steps": len(step_seconds), "train_batch_size": config["train_batch_size"],
        "train_batches_per_epoch": len(train_data), "build_seconds": round(build_seconds, 1),
        "train_seconds_per_step": round(sum(step_seconds) / max(len(step_seconds), 1), 2),
        "eval_users": len(full._dataset), "items": dataset.item_num - 1,
        "command": "python benchmarks/llm_sequence.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    row["train_seconds_per_epoch_extrapolated"] = round(row["train_seconds_per_step"] * len(train_data), 0)
    row["full"] = _evaluate(trainer, full)
    print("full ranking:", row["full"], flush=True)
    sasrec, sasrec_label = _sasrec_beside(args.model, model, config, dataset, args.sasrec_epochs, args.sasrec_hidden)
    sasrec_trainer = Trainer(config, sasrec)
    row["sasrec"] = {"label": sasrec_label, "full": _evaluate(sasrec_trainer, full)}
    if args.uni99:
        sampled = _sampled_loader(args.config_files, overrides, args.model, args.eval_users, config["seed"])
        row["uni99"] = _evaluate(trainer, sampled)
        row["sasrec"]["uni99"] = _evaluate(sasrec_trainer, sampled)
    row["peak_rss_mb"] = round(_peak_rss_mb(), 0)
    print(json.dumps(row, indent=1))
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8"))


if __name__ == "__main__":
    main()
