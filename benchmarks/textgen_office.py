"""CALRec and TransRecLLM on a stated subset of a converted dataset: short training, timed ranking.

    python benchmarks/textgen_office.py --model CALRec --train_steps 20 --eval_users 32 \\
        --output benchmarks/results/textgen_office.json

Trains the model for ``--train_steps`` batches (0: ranks with the pretrained LM) of the ordinary RecBole training data (SASRec:
``--sasrec_epochs`` full epochs through RecBole's Trainer), then ranks the first ``--eval_users``
users of the test split with ``full_sort_predict`` and reports NDCG@10 / Recall@10 on them,
training seconds per step and ranking throughput (users per second). Rows are appended to the
JSON file with the exact command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from recbole_llm import Config, create_dataset
from recbole_llm.registry import get_model, get_trainer
from recbole_llm.utils import atomic_write

MODEL_SETTINGS = {
    "CALRec": {"calrec_text_fields": ["title", "categories", "brand"]},
    "TransRecLLM": {"transrec_title_field": "title", "transrec_attribute_fields": ["categories"]},
    "SASRec": {"hidden_size": 64, "inner_size": 128, "n_layers": 2, "n_heads": 2, "train_batch_size": 1024},
}


def _metrics(scores: torch.Tensor, positives: torch.Tensor, k: int = 10) -> tuple:
    """(NDCG@k, Recall@k) sums: the positive's rank is the number of items scored above it."""
    positive_scores = scores.gather(1, positives.unsqueeze(1))
    ranks = (scores > positive_scores).sum(1).float()
    ranks = torch.where(torch.isinf(positive_scores.squeeze(1)), torch.full_like(ranks, float(scores.shape[1])), ranks)
    hits = ranks < k
    return float((hits / torch.log2(ranks + 2)).sum()), float(hits.sum())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(MODEL_SETTINGS))
    parser.add_argument("--dataset", default="Office")
    parser.add_argument("--data_root", default="dataset")
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--sasrec_epochs", type=int, default=30)
    parser.add_argument("--eval_users", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    parser.add_argument("--set", nargs="*", default=[], help="key=value config overrides (yaml values)")
    args = parser.parse_args(argv)
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    torch.set_num_threads(args.threads)
    import yaml

    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    config_file = Path(args.data_root) / args.dataset / f"{args.dataset}.yaml"
    sys.argv = sys.argv[:1]
    config = Config(model=args.model, dataset=args.dataset, config_file_list=[str(config_file)],
                    config_dict={"data_path": args.data_root, "state": "ERROR", "show_progress": False,
                                 "epochs": args.sasrec_epochs, **MODEL_SETTINGS[args.model], **overrides})
    from recbole.data import data_preparation

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    started = time.perf_counter()
    model = get_model(args.model)(config, train_data._dataset).to(config["device"])
    build_seconds = time.perf_counter() - started
    losses, steps = [], 0
    started = time.perf_counter()
    if args.model == "SASRec":
        trainer = get_trainer(config["MODEL_TYPE"], args.model)(config, model)
        trainer.fit(train_data, valid_data, saved=False, show_progress=False)
        steps = args.sasrec_epochs * len(train_data)
    elif args.train_steps > 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"])
        model.train()
        for steps, batch in enumerate(train_data, start=1):
            loss = model.calculate_loss(batch.to(config["device"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(round(loss.item(), 4))
            if steps == args.train_steps:
                break
    train_seconds = time.perf_counter() - started
    model.eval()
    ndcg = recall = 0.0
    users = 0
    started = time.perf_counter()
    with torch.no_grad():
        for interaction, _, _, positive_i in test_data:
            take = min(len(interaction), args.eval_users - users)
            scores = model.full_sort_predict(interaction[:take].to(config["device"])).cpu()
            scores[:, 0] = float("-inf")
            batch_ndcg, batch_recall = _metrics(scores, positive_i[:take].cpu())
            ndcg, recall, users = ndcg + batch_ndcg, recall + batch_recall, users + take
            if users >= args.eval_users:
                break
    eval_seconds = time.perf_counter() - started
    row = {
        "model": args.model, "dataset": args.dataset, "test_users": users, "train_steps": steps,
        "train_batch_size": config["train_batch_size"], "ndcg@10": round(ndcg / users, 4),
        "recall@10": round(recall / users, 4), "build_seconds": round(build_seconds, 1),
        "train_seconds_per_step": round(train_seconds / max(1, steps), 3), "first_losses": losses[:3],
        "last_losses": losses[-3:], "eval_seconds": round(eval_seconds, 1),
        "eval_users_per_second": round(users / eval_seconds, 4), "threads": args.threads,
        "device": str(config["device"]), "command": command,
    }
    if hasattr(model, "generation_report"):
        row["generation"] = model.generation_report()
    if args.output:
        path = Path(args.output)
        rows = json.loads(path.read_text())["rows"] if path.is_file() else []
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"rows": rows + [row]}, indent=1)))
    print(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
