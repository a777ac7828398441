"""UniSAR vs SASRec and BERT4Rec on semi-synthetic Office search + recommendation data (CPU).

Data: ../shared/data/amazon-office (LC-Rec json) made mixed-behaviour data by
``recbole_llm.convert.amazon_search`` (SEMI-SYNTHETIC searches: category-path queries, half of
the interactions). UniSAR trains on all events; SASRec and BERT4Rec (RecBole built-ins) on the
recommendation events alone. Every model ranks the same fixed candidates for the same
recommendation test targets (uni99: target + 99 items the user never touched); UniSAR also
reports the search targets, beside a text-matching baseline: BM25 (rank_bm25, IDF over the whole
catalogue) of the search query against each candidate's text, on the same candidates, once with
the item text UniSAR reads (title words) and once with title + category words (the semi-synthetic
queries are made of the target's category words, so that variant is close to an oracle).
Metrics HR and NDCG @1, 5, 10, 20 (ties count against the target).

Usage: python benchmarks/unisar_office.py [--epochs 8] [--baseline-epochs 15] [--history-length 10] [--baselines SASRec]
       python benchmarks/unisar_office.py --bm25-only   (adds the BM25 rows to an existing result)
Writes benchmarks/results/unisar_office.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import recbole
import torch
from rank_bm25 import BM25Okapi
from recbole.data import data_preparation

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from recbole_llm.config import Config  # noqa: E402
from recbole_llm.convert import convert  # noqa: E402
from recbole_llm.convert.amazon_search import words_of  # noqa: E402
from recbole_llm.convert.lcrec import load_json  # noqa: E402
from recbole_llm.convert.search import ITEM_WORDS_FIELD, QUERY_FIELD  # noqa: E402
from recbole_llm.data.search_dataset import (  # noqa: E402
    CANDIDATES, POSITIVE_INDEX, REC, SEARCH, TARGET_KIND, TARGET_SESSION,
)
from recbole_llm.quick_start import load_data_and_model, run_recbole_llm  # noqa: E402
from recbole_llm.registry import create_dataset  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402

TOPK = (1, 5, 10, 20)
SHARED = {"seed": 2020, "show_progress": False, "state": "INFO", "hidden_size": 64, "train_batch_size": 512,
          "eval_batch_size": 512, "stopping_step": 3}


def rank_metrics(scores: np.ndarray, positive: np.ndarray) -> dict:
    """HR/NDCG@k from candidate scores [n, K] and the target column of each row (ties count against it)."""
    target = scores[np.arange(len(scores)), positive][:, None]
    rank = (scores >= target).sum(1) - 1
    out = {}
    for k in TOPK:
        hit = rank < k
        out[f"hit@{k}"] = round(float(hit.mean()), 4)
        out[f"ndcg@{k}"] = round(float((hit / np.log2(rank + 2)).mean()), 4)
    return out


def write_rec_only(mixed: Path, out: Path) -> None:
    """The recommendation events of the mixed dataset, with every item listed in a .item file."""
    out.mkdir(parents=True, exist_ok=True)
    lines = (mixed / f"{mixed.name}.inter").read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    rec = ["\t".join(r[:3]) for r in rows if r[3] == "rec"]
    (out / f"{out.name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rec) + "\n")
    items = [line.split("\t")[0] for line in (mixed / f"{mixed.name}.item").read_text().splitlines()[1:]]
    (out / f"{out.name}.item").write_text("item_id:token\n" + "\n".join(items) + "\n")


def unisar_test_scores(saved_file: str):
    """UniSAR's rec and search test rows: {user token: (candidate tokens, positive)}, scores, positives."""
    config, model, dataset, _, _, test_data = load_data_and_model(saved_file)
    model.eval()
    rows = test_data.dataset.inter_feat
    item_tokens, user_tokens = dataset.field2id_token["item_id"], dataset.field2id_token["user_id"]
    results = {}
    for kind in (REC, 2):
        part = rows[rows[TARGET_KIND] == kind]
        with torch.no_grad():
            scores = torch.cat([model.score_candidates(part[i:i + 512], part[CANDIDATES][i:i + 512])
                                for i in range(0, len(part), 512)]).numpy()
        users = [user_tokens[u] for u in part["user_id"].tolist()]
        candidates = [[item_tokens[i] for i in row] for row in part[CANDIDATES].tolist()]
        results[kind] = (users, candidates, scores, part[POSITIVE_INDEX].numpy())
    return results


def search_test_targets(dataset, test_data) -> Tuple[List[List[str]], List[List[str]], np.ndarray]:
    """The search test rows: query words, candidate item tokens and the target's column, per row."""
    rows = test_data.dataset.inter_feat
    part = rows[rows[TARGET_KIND] == SEARCH]
    words, items = dataset.field2id_token[QUERY_FIELD], dataset.field2id_token["item_id"]
    queries = [[words[w] for w in dataset.session_query[s].tolist() if w] for s in part[TARGET_SESSION].tolist()]
    candidates = [[items[i] for i in row] for row in part[CANDIDATES].tolist()]
    return queries, candidates, part[POSITIVE_INDEX].numpy()


def item_texts(dataset, raw_items: Path) -> Dict[str, Dict[str, List[str]]]:
    """Per item token: ``title`` (the item words UniSAR reads) and ``title+category`` word lists."""
    words, tokens = dataset.field2id_token[ITEM_WORDS_FIELD], dataset.field2id_token["item_id"]
    title = {tokens[i]: [words[w] for w in row if w] for i, row in enumerate(dataset.item_words.tolist()) if i}
    meta = load_json(raw_items)
    category = {item: words_of(str(meta.get(item, {}).get("categories") or "")) for item in title}
    return {"title": title, "title+category": {item: title[item] + category[item] for item in title}}


def bm25_scores(texts: Dict[str, List[str]], queries: List[List[str]], candidates: List[List[str]]) -> np.ndarray:
    """BM25 (Okapi, IDF over every item of ``texts``) of each query against its row's candidates [n, K]."""
    catalogue = sorted(texts)
    index = {item: i for i, item in enumerate(catalogue)}
    bm25 = BM25Okapi([texts[item] for item in catalogue])
    return np.stack([bm25.get_batch_scores(query, [index[item] for item in row])
                     for query, row in zip(queries, candidates)])


def bm25_baselines(dataset, test_data, raw_items: Path) -> Dict[str, dict]:
    """Search-task metrics of BM25 on UniSAR's search test candidates, for both item texts."""
    queries, candidates, positives = search_test_targets(dataset, test_data)
    return {f"BM25 ({name})": {"search": rank_metrics(bm25_scores(texts, queries, candidates), positives),
                               "search_targets": len(queries)}
            for name, texts in item_texts(dataset, raw_items).items()}


def search_dataset(mixed: Path, history_length: int):
    """The mixed dataset and its test loader as UniSAR builds them (no model)."""
    config = Config(model="UniSAR", config_file_list=[str(mixed / f"{mixed.name}.yaml")],
                    config_dict={**SHARED, "history_length": history_length})
    dataset = create_dataset(config)
    return dataset, data_preparation(config, dataset)[2]


def baseline_scores(saved_file: str, targets: dict):
    """A RecBole model's full-ranking scores gathered on UniSAR's rec test candidates."""
    _, model, dataset, _, _, test_data = load_data_and_model(saved_file)
    model.eval()
    user_tokens, token2id = dataset.field2id_token["user_id"], dataset.field2token_id["item_id"]
    item_tokens = dataset.field2id_token["item_id"]
    scores, positives, users = [], [], []
    for batch in test_data:
        interaction = batch[0]
        with torch.no_grad():
            full = model.full_sort_predict(interaction).view(len(interaction), -1)
        for row, (user, item) in enumerate(zip(interaction["user_id"].tolist(), interaction["item_id"].tolist())):
            entry = targets.get(user_tokens[user])
            if entry is None or entry[0][entry[1]] != item_tokens[item]:
                continue  # this user's rec test target differs between the two splits
            ids = torch.tensor([token2id[t] for t in entry[0]])
            scores.append(full[row, ids].numpy())
            positives.append(entry[1])
            users.append(user_tokens[user])
    return users, np.array(scores), np.array(positives)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "amazon-office"))
    parser.add_argument("--epochs", type=int, default=8, help="UniSAR epochs (early stopping 3)")
    parser.add_argument("--baseline-epochs", type=int, default=15, help="SASRec/BERT4Rec epochs (early stopping 3)")
    parser.add_argument("--history-length", type=int, default=10, help="UniSAR: last N rec items and N searches")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    parser.add_argument("--baselines", nargs="*", default=["SASRec", "BERT4Rec"], choices=["SASRec", "BERT4Rec"],
                        help="RecBole models ranked on UniSAR's rec test candidates")
    parser.add_argument("--train-needs-both-kinds", action="store_true",
                        help="UniSAR trains only on targets whose history holds both behaviour kinds")
    parser.add_argument("--name", default="unisar_office", help="results file name (benchmarks/results/<name>.json/.md)")
    parser.add_argument("--bm25-only", action="store_true",
                        help="add the BM25 search rows to the existing results (no training)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_root = REPO / "dataset"
    mixed = convert("amazon_search", [args.data], data_root / "OfficeSearch", search_ratio=0.5, seed=2020,
                    overwrite=True).path
    raw_items = Path(args.data) / "Office.item.json"
    if args.bm25_only:
        report = json.loads((RESULTS / f"{args.name}.json").read_text())
        dataset, test_data = search_dataset(mixed, args.history_length)
        report["search_baselines"] = bm25_baselines(dataset, test_data, raw_items)
        report["bm25_command"] = f"python benchmarks/unisar_office.py --bm25-only --data {args.data}"
        write_results(report, args.name)
        return
    write_rec_only(mixed, data_root / "OfficeSearchRec")

    start = time.time()
    unisar = run_recbole_llm("UniSAR", config_file_list=[str(mixed / "OfficeSearch.yaml")],
                             config_dict={**SHARED, "epochs": args.epochs, "history_length": args.history_length,
                                          "train_needs_both_kinds": args.train_needs_both_kinds})
    unisar_rows = unisar_test_scores(unisar["saved_model_file"])
    users, candidates, scores, positives = unisar_rows[REC]
    targets = {u: (c, int(p)) for u, c, p in zip(users, candidates, positives)}
    report = {
        "command": "python benchmarks/unisar_office.py " + shlex.join(sys.argv[1:]),
        "data": f"{args.data} -> semi-synthetic OfficeSearch (search_ratio 0.5, seed 2020)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "recbole": recbole.__version__},
        "protocol": "leave-one-out per behaviour kind; fixed uni99 candidates; HR/NDCG, ties count against the target",
        "history_length": args.history_length,
        "unisar_train_needs_both_kinds": args.train_needs_both_kinds,
        "models": {},
    }
    baseline_config = {**SHARED, "epochs": args.baseline_epochs, "MAX_ITEM_LIST_LENGTH": 20, "dataset": "OfficeSearchRec",
                       "data_path": str(data_root), "n_layers": 2, "n_heads": 2, "inner_size": 256,
                       "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}}
    dropout = {"SASRec": {"hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5}, "BERT4Rec": {}}
    common = set(targets)
    for name in args.baselines:
        result = run_recbole_llm(name, config_dict={**baseline_config, **dropout[name]})
        b_users, b_scores, b_positives = baseline_scores(result["saved_model_file"], targets)
        common &= set(b_users)
        report["models"][name] = {
            "rec": rank_metrics(b_scores, b_positives), "rec_targets": len(b_users),
            "epochs": result["timing"]["epochs"], "train_seconds_per_epoch": result["timing"]["train_seconds_per_epoch"],
            "users": b_users, "scores": b_scores, "positives": b_positives,
        }
    search = unisar_rows[2]
    report["models"]["UniSAR"] = {
        "rec": rank_metrics(scores, positives), "rec_targets": len(users),
        "search": rank_metrics(search[2], search[3]), "search_targets": len(search[0]),
        "epochs": unisar["timing"]["epochs"], "train_seconds_per_epoch": unisar["timing"]["train_seconds_per_epoch"],
        "trainer_test_result": dict(unisar["test_result"]),
        "users": users, "scores": scores, "positives": positives,
    }
    for name, entry in report["models"].items():  # the same targets for every model
        keep = np.array([u in common for u in entry.pop("users")])
        entry["rec_common"] = rank_metrics(entry.pop("scores")[keep], entry.pop("positives")[keep])
    report["common_rec_targets"] = len(common)
    _, _, dataset, _, _, test_data = load_data_and_model(unisar["saved_model_file"])
    report["search_baselines"] = bm25_baselines(dataset, test_data, raw_items)
    report["wall_seconds"] = round(time.time() - start, 1)
    write_results(report, args.name)


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def write_results(report: dict, file_name: str) -> None:
    _write_text(RESULTS / f"{file_name}.json", json.dumps(report, indent=2))
    lines = ["# UniSAR on semi-synthetic Office (CPU)\n", f"command: `{report['command']}`  ",
             f"data: {report['data']}  ", f"versions: {report['versions']}  ", f"protocol: {report['protocol']}\n",
             *([f"UniSAR trains only on targets whose history holds both behaviour kinds: "
                f"{report['unisar_train_needs_both_kinds']}\n"] if "unisar_train_needs_both_kinds" in report else []),
             f"Recommendation, the {report['common_rec_targets']} test targets all models share:\n",
             "| model | HR@1 | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | epochs | s/epoch |", "|---|" + "---|" * 9]
    for name, e in report["models"].items():
        m = e["rec_common"]
        lines.append(f"| {name} | {m['hit@1']} | {m['hit@5']} | {m['hit@10']} | {m['hit@20']} | {m['ndcg@5']} | "
                     f"{m['ndcg@10']} | {m['ndcg@20']} | {e['epochs']} | {e['train_seconds_per_epoch']} |")
    unisar = report["models"]["UniSAR"]
    lines += [f"\nSearch task, the {unisar['search_targets']} search test targets (same uni99 candidates):\n",
              "| model | HR@1 | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 |", "|---|" + "---|" * 7]
    for name, entry in {"UniSAR": unisar, **report.get("search_baselines", {})}.items():
        m = entry["search"]
        lines.append(f"| {name} | {m['hit@1']} | {m['hit@5']} | {m['hit@10']} | {m['hit@20']} | {m['ndcg@5']} | "
                     f"{m['ndcg@10']} | {m['ndcg@20']} |")
    if "search_baselines" in report:
        lines.append("\nBM25 (title): the query against the item words UniSAR reads. BM25 (title+category): "
                     "title plus category words; the semi-synthetic query IS the target's category words, so "
                     "this variant is close to an oracle (ties with same-category candidates count against it).")
    if "bm25_command" in report:
        lines.append(f"BM25 rows added by `{report['bm25_command']}`.")
    text = "\n".join(lines) + "\n"
    _write_text(RESULTS / f"{file_name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
