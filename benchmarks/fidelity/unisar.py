"""UniSAR beside its release (TengShi-RUC/UniSAR) on identical semi-synthetic Office data (CPU).

    python benchmarks/fidelity/unisar.py --unisar /tmp/peers/UniSAR \
        --unisar_python /tmp/peers/unisar_venv/bin/python --data ../shared/data/amazon-office \
        --users 1000 --epochs 3 --seeds 2020

Both sides read the same users (the first ``--users`` of ``Office.inter.json``) made mixed
search/recommendation data by ``recbole_llm.convert.amazon_search`` (SEMI-SYNTHETIC searches:
category-path queries, half of the interactions, seed 2020). :func:`write_release_format` writes
that data in the release's own pickles (``dataset/{rec,src}_{train,val,test}.pkl`` and
``vocab/*.pkl``) with the same ids, the same leave-one-out split per behaviour kind, the same
histories (the last ``--history_length`` recommendation items and search sessions before each
target, nothing of a later split) and the same uni99 evaluation candidates as our
``SearchRecDataset``. Items are id-only on both sides (the release's Amazon setting).

Equal settings: hidden size 64, 1 layer, 2 heads, feed-forward 64, dropout 0.1, PLE with 4 shared
and 4 task experts and towers 128-64-200-80-1, loss weights and temperatures, Adam learning rate,
no weight decay, epochs, training negatives per target, seed, one CPU thread. A training step
sees the same rows on both sides: the release takes one recommendation batch of ``--batch_size``
rows plus a search batch sized so both loaders end together; ours takes a mixed batch of twice
``--batch_size`` rows. Differences that remain (the release's format and code): its training
negatives are fixed in its pickles (ours are redrawn every batch); it keeps the best epoch by the
mean of rec and search NDCG@5 on validation (ours by rec NDCG@10); it cannot take a row whose user
has no history of one behaviour kind (NaN: fully masked attention), so those rows are dropped from
its pickles (train, valid and test) and both sides are scored on the test rows it keeps (ours is
also reported on all of its test rows). Ties: ours counts ties against the target, the release
ranks by ``argsort``.

``--ours_train_rows release`` trains ours only on the rows the release takes
(``train_needs_both_kinds``); ``--sasrec`` adds SASRec trained on the recommendation events,
ranking the same rec test candidates; ``--append`` keeps the rows of an earlier result file.

The checkout is read and run, never copied into the project: the script copies it to
``<work>/official``, points its ``Amazon`` setting at the written pickles (sizes appended to
``utils/const.py``), writes its ``config/UniSAR_Amazon.yaml`` (its yaml overrides command-line
flags) and drops the ``verbose=True`` that torch >= 2.5 refuses in ``ReduceLROnPlateau``.
Writes ``<out>/fidelity_unisar.json`` (rows in the fidelity schema; ``ndcg@10`` is the
recommendation task's, ``search_ndcg@10`` the search task's) and ``.md``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import pickle
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TOPK = (1, 5, 10, 20, 50)
REC_KIND, SEARCH_KIND = 1, 2
TRAIN, VALID, TEST = "train", "val", "test"
SPLITS = (TRAIN, VALID, TEST)
MODEL = "UniSAR"


# ----- the release's input format -------------------------------------------------------------
@dataclass
class Event:
    """One behaviour event with ids as the release reads them (0 is padding everywhere)."""

    user: int
    item: int  # the consumed item; for a search, its first clicked item
    time: float
    search: bool
    session: int = 0  # search session id (1-based), 0 for a recommendation
    query: Sequence[int] = ()  # word ids of the search query
    clicks: Sequence[int] = ()  # clicked item ids of the search session


def split_labels(count: int) -> List[str]:
    """Leave-one-out per behaviour kind: the last target tests, the second-to-last validates."""
    labels = [TRAIN] * count
    if count >= 2:
        labels[-1] = TEST
    if count >= 3:
        labels[-2] = VALID
    return labels


Candidates = Callable[[int, int, int], List[int]]  # (user, kind, target item) -> uni99 items, target first


def release_tables(
    events: Sequence[Event],
    candidates: Candidates,
    train_negatives: int,
    n_items: int,
    seed: int,
) -> Tuple[Dict[int, dict], Dict[str, Dict[str, List[dict]]]]:
    """The release's user vocabulary and its rec/src rows per split.

    A row's ``rec_his`` / ``src_session_his`` count the user's recommendation items / search
    sessions before the target (strictly earlier time) that belong to the target's split or an
    earlier one: the release reads the history as that prefix of the user's lists. Valid/test rows
    carry ``candidates``' negatives; training rows ``train_negatives`` uniform items other than
    the target (fixed, the release's format holds them).
    """
    rng = np.random.default_rng(seed)
    by_user: Dict[int, List[Tuple[int, Event]]] = {}
    for index, event in enumerate(events):
        by_user.setdefault(event.user, []).append((index, event))
    users: Dict[int, dict] = {}
    rows: Dict[str, Dict[str, List[dict]]] = {kind: {split: [] for split in SPLITS} for kind in ("rec", "src")}
    for user in sorted(by_user):
        timeline = [event for _, event in sorted(by_user[user], key=lambda pair: (pair[1].time, pair[0]))]
        rec = [event for event in timeline if not event.search]
        src = [event for event in timeline if event.search]
        users[user] = {"rec_his": [e.item for e in rec], "rec_his_ts": [e.time for e in rec],
                       "src_session_his": [e.session for e in src], "src_session_his_ts": [e.time for e in src]}
        labels = {id(e): label for part in (rec, src) for e, label in zip(part, split_labels(len(part)))}
        visible = {split: (sum(labels[id(e)] in SPLITS[: i + 1] for e in rec),
                           sum(labels[id(e)] in SPLITS[: i + 1] for e in src)) for i, split in enumerate(SPLITS)}
        for event in timeline:
            split = labels[id(event)]
            rec_before = sum(e.time < event.time for e in rec)
            src_before = sum(e.time < event.time for e in src)
            row = {"user_id": user, "rec_his": min(rec_before, visible[split][0]),
                   "src_session_his": min(src_before, visible[split][1])}
            if event.search:
                row["keyword"] = list(event.query)
            kind = "src" if event.search else "rec"
            if split != TRAIN:
                items = candidates(user, SEARCH_KIND if event.search else REC_KIND, event.item)
                rows[kind][split].append({**row, "item_id": items[0], "neg_items": list(items[1:])})
                continue
            for target in (event.clicks or [event.item]) if event.search else [event.item]:
                negatives = []
                while len(negatives) < train_negatives:
                    draw = int(rng.integers(1, n_items))
                    if draw != target:
                        negatives.append(draw)
                rows[kind][split].append({**row, "item_id": int(target), "neg_items": negatives})
    return users, rows


def _dump(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(value, handle)
    os.replace(tmp, path)


def write_release_format(
    folder: Path,
    events: Sequence[Event],
    candidates: Candidates,
    n_items: int,
    n_users: int,
    max_query_words: int,
    max_session_clicks: int,
    train_negatives: int,
    seed: int,
) -> Dict[str, Dict[str, int]]:
    """Write the release's pickles under ``folder``; returns rows written and dropped per file.

    Rows whose user has no earlier recommendation item or no earlier search session are dropped
    (the release turns them into NaN).
    """
    users, rows = release_tables(events, candidates, train_negatives, n_items, seed)
    (folder / "dataset").mkdir(parents=True, exist_ok=True)
    (folder / "vocab").mkdir(parents=True, exist_ok=True)
    counts: Dict[str, Dict[str, int]] = {}
    for kind, splits in rows.items():
        for split, table in splits.items():
            kept = [row for row in table if row["rec_his"] > 0 and row["src_session_his"] > 0]
            columns = ["user_id", "item_id", "neg_items", "rec_his", "src_session_his"] + (["keyword"] if kind == "src" else [])
            frame = pd.DataFrame(kept, columns=columns)
            _dump(folder / "dataset" / f"{kind}_{split}.pkl", frame)
            counts[f"{kind}_{split}"] = {"rows": len(kept), "dropped": len(table) - len(kept)}
    sessions = sorted({e.session for e in events if e.search})
    if sessions != list(range(1, len(sessions) + 1)):
        raise ValueError("search session ids must be 1..n_sessions")
    keyword = np.zeros((len(sessions) + 1, max_query_words), dtype=np.int64)
    clicks = np.zeros((len(sessions) + 1, max_session_clicks), dtype=np.int64)
    queries: Dict[Tuple[int, ...], int] = {}
    for event in events:
        if event.search:
            query = list(event.query)[:max_query_words]
            keyword[event.session, : len(query)] = query
            session_clicks = list(event.clicks or [event.item])[:max_session_clicks]
            clicks[event.session, : len(session_clicks)] = session_clicks
            queries.setdefault(tuple(query), len(queries) + 1)
    query_vocab: List[List[int]] = [[]] + [list(q) for q in sorted(queries, key=queries.get)]
    _dump(folder / "vocab" / "user_vocab.pkl", users)
    _dump(folder / "vocab" / "query_vocab.pkl", query_vocab)
    _dump(folder / "vocab" / "src_session_vocab_np.pkl", {"keyword": keyword, "pos_items": clicks})
    _dump(folder / "vocab" / "user_vocab_np.pkl", {"user_id": np.arange(n_users, dtype=np.int64)})
    _dump(folder / "vocab" / "item_vocab_np.pkl", {"item_id": np.arange(n_items, dtype=np.int64)})
    return counts


def read_release_format(folder: Path) -> Dict[str, Any]:
    """The pickles of :func:`write_release_format` (``{"user_vocab", "query_vocab", "sessions", "<kind>_<split>"}``)."""
    out: Dict[str, Any] = {}
    for kind in ("rec", "src"):
        for split in SPLITS:
            out[f"{kind}_{split}"] = pd.read_pickle(folder / "dataset" / f"{kind}_{split}.pkl")
    for name in ("user_vocab", "query_vocab", "src_session_vocab_np", "user_vocab_np", "item_vocab_np"):
        with open(folder / "vocab" / f"{name}.pkl", "rb") as handle:
            out[name] = pickle.load(handle)
    return out


def release_history(user_vocab: Dict[int, dict], row, length: int) -> Tuple[List[int], List[int]]:
    """The history the release builds for a row: its last ``length`` rec items and search sessions."""
    entry = user_vocab[int(row["user_id"])]
    return (entry["rec_his"][: int(row["rec_his"])][-length:],
            entry["src_session_his"][: int(row["src_session_his"])][-length:])


# ----- our dataset -> events -------------------------------------------------------------------
def dataset_events(dataset) -> List[Event]:
    """The events of a (not yet built) ``SearchRecDataset``, with its ids and session numbering."""
    from recbole_llm.convert.search import BEHAVIOR_FIELD, CLICKS_FIELD, QUERY_FIELD

    frame = dataset.inter_feat
    behaviour = dataset.field2id_token[BEHAVIOR_FIELD][frame[BEHAVIOR_FIELD].to_numpy()]
    events, session = [], 0
    for user, item, when, kind, query, clicks in zip(
        frame[dataset.uid_field].to_numpy(), frame[dataset.iid_field].to_numpy(), frame[dataset.time_field].to_numpy(),
        behaviour, frame[QUERY_FIELD].to_numpy(), frame[CLICKS_FIELD].to_numpy(),
    ):
        search = kind == "search"
        session += int(search)
        events.append(Event(int(user), int(item), float(when), search, session if search else 0,
                            [int(w) for w in query] if search else [],
                            [int(c) for c in clicks] if search and len(clicks) else ([int(item)] if search else [])))
    return events


def dataset_candidates(dataset, events: Sequence[Event], n_negatives: int, seed: int) -> Candidates:
    """Our ``sampled_candidates`` in the release's layout (target first), from raw tokens as ours draws them."""
    from recbole_llm.data.search_dataset import sampled_candidates

    user_tokens, item_tokens = dataset.field2id_token[dataset.uid_field], dataset.field2id_token[dataset.iid_field]
    token2id = dataset.field2token_id[dataset.iid_field]
    real_items = list(item_tokens[1:])
    touched: Dict[int, set] = {}
    for event in events:
        touched.setdefault(event.user, set()).update(item_tokens[i] for i in [event.item, *event.clicks] if i)

    def draw(user: int, kind: int, item: int) -> List[int]:
        tokens, position = sampled_candidates(user_tokens[user], kind, item_tokens[item], real_items,
                                              touched[user], n_negatives, seed)
        ids = [token2id[t] for t in tokens]
        return [ids[position]] + ids[:position] + ids[position + 1:]

    return draw


# ----- metrics ------------------------------------------------------------------------------
def rank_metrics(scores: np.ndarray, positive: np.ndarray, prefix: str = "") -> Dict[str, float]:
    """HR/NDCG@k (and recall@k = HR@k: one target per row); ties count against the target."""
    target = scores[np.arange(len(scores)), positive][:, None]
    rank = (scores >= target).sum(1) - 1
    out = {}
    for k in TOPK:
        hit = rank < k
        out[f"{prefix}hit@{k}"] = float(hit.mean())
        out[f"{prefix}recall@{k}"] = float(hit.mean())
        out[f"{prefix}ndcg@{k}"] = float((hit / np.log2(rank + 2)).mean())
    return out


def release_metrics(result: Dict[str, str]) -> Dict[str, float]:
    """The release's test dict ``{'rec': 'HR@1:0.1,NDCG@1:...', 'src': ...}`` in our metric names."""
    out = {}
    for kind, prefix in (("rec", ""), ("src", "search_")):
        for pair in result[kind].split(","):
            name, value = pair.split(":")
            metric, k = name.split("@")
            base = "hit" if metric == "HR" else "ndcg"
            out[f"{prefix}{base}@{k}"] = float(value)
            if base == "hit":
                out[f"{prefix}recall@{k}"] = float(value)
    return out


# ----- the two sides -------------------------------------------------------------------------
def shared_settings(args: argparse.Namespace) -> Dict[str, Any]:
    return {"hidden_size": 64, "n_layers": 1, "n_heads": 2, "inner_size": 64, "dropout_prob": 0.1,
            "history_length": args.history_length, "max_query_words": 16, "max_session_clicks": 1,
            "train_negatives": args.train_negatives, "search_loss_weight": 0.1, "query_item_cl_weight": 0.001,
            "query_item_cl_temperature": 0.5, "history_cl_weight": 0.1, "history_cl_temperature": 0.1,
            "learning_rate": 1e-3, "weight_decay": 0.0, "epochs": args.epochs, "rec_batch_size": args.batch_size}


def ours_config(args: argparse.Namespace, work: Path, seed: int) -> Dict[str, Any]:
    s = shared_settings(args)
    config = {k: v for k, v in s.items() if k != "rec_batch_size"}
    return {**config, "train_batch_size": 2 * s["rec_batch_size"], "eval_batch_size": 512, "seed": seed,
            "stopping_step": args.epochs + 1, "multi_task": "PLE", "n_shared_experts": 4, "n_task_experts": 4,
            "expert_size": 64, "tower_sizes": [128, 64, 200, 80], "show_progress": False, "state": "INFO",
            "checkpoint_dir": str(work / "saved"), "train_needs_both_kinds": args.ours_train_rows == "release",
            "load_col": {"inter": ["user_id", "item_id", "timestamp", "behavior", "query", "session_items"],
                         "item": ["item_id"]}}


def load_mixed(yaml_file: Path, args: argparse.Namespace, work: Path):
    from recbole_llm.config import Config
    from recbole_llm.registry import create_dataset

    config = Config(model=MODEL, config_file_list=[str(yaml_file)], config_dict=ours_config(args, work, args.seeds[0]))
    return create_dataset(config)


def run_ours(yaml_file: Path, args: argparse.Namespace, work: Path, seed: int) -> Dict[str, Any]:
    """Train ours; test metrics on the rows the release keeps and on all test rows."""
    import torch

    from recbole_llm.data.search_dataset import (
        CANDIDATES, HISTORY_KIND, POSITIVE_INDEX, REC, SEARCH, TARGET_KIND,
    )
    from recbole_llm.quick_start import load_data_and_model, run_recbole_llm

    torch.set_num_threads(1)
    result = run_recbole_llm(MODEL, config_file_list=[str(yaml_file)], config_dict=ours_config(args, work, seed))
    _, model, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    model.eval()
    rows = test_data.dataset.inter_feat
    kept, everything = {}, {}
    for kind, prefix in ((REC, ""), (SEARCH, "search_")):
        part = rows[rows[TARGET_KIND] == kind]
        with torch.no_grad():
            scores = torch.cat([model.score_candidates(part[i:i + 512], part[CANDIDATES][i:i + 512])
                                for i in range(0, len(part), 512)]).numpy()
        kinds = part[HISTORY_KIND]
        both = ((kinds == REC).any(1) & (kinds == SEARCH).any(1)).numpy()
        positives = part[POSITIVE_INDEX].numpy()
        kept.update(rank_metrics(scores[both], positives[both], prefix))
        kept[f"{prefix}targets"] = int(both.sum())
        everything.update(rank_metrics(scores, positives, prefix))
        everything[f"{prefix}targets"] = len(part)
    return {"metrics": kept, "all_test_rows": everything, "epochs": result["timing"]["epochs"],
            "train_seconds_per_epoch": result["timing"]["train_seconds_per_epoch"]}


def prepare_official(checkout: Path, work: Path, data: Path, sizes: Dict[str, int], args: argparse.Namespace) -> Path:
    """A patched copy of the checkout reading ``data`` under its ``Amazon`` setting."""
    target = work / "official"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkout, target, ignore=shutil.ignore_patterns(".git", "output", "data"))
    (target / "data").mkdir()
    os.symlink(data, target / "data" / "Amazon")
    runner = target / "utils" / "Runner.py"
    text, n = re.subn(r",\s*verbose=True", "", runner.read_text(encoding="utf-8"))
    if n != 1:
        raise RuntimeError(f"{runner}: expected one 'verbose=True' in ReduceLROnPlateau, found {n}")
    runner.write_text(text, encoding="utf-8")
    const = target / "utils" / "const.py"
    names = ", ".join(sizes)
    body = "\n".join(f"    {name} = {value}" for name, value in sizes.items())
    const.write_text(const.read_text(encoding="utf-8") + (
        "\n\n_release_init_setting_Amazon = init_setting_Amazon\n\n\ndef init_setting_Amazon():\n"
        f"    _release_init_setting_Amazon()\n    global {names}\n{body}\n"), encoding="utf-8")
    s = shared_settings(args)
    config = {"batch_size": s["rec_batch_size"], "dropout": s["dropout_prob"], "lr": s["learning_rate"],
              "min_lr": 1e-6, "l2": s["weight_decay"], "epoch": s["epochs"], "patience": 3, "early_stop": 0,
              "num_layers": s["n_layers"], "num_heads": s["n_heads"],
              "q_i_cl_temp": s["query_item_cl_temperature"], "q_i_cl_weight": s["query_item_cl_weight"],
              "his_cl_temp": s["history_cl_temperature"], "his_cl_weight": s["history_cl_weight"],
              "pred_hid_units": [200, 80, 1], "src_loss_weight": s["search_loss_weight"]}
    (target / "config" / "UniSAR_Amazon.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return target


def run_official(copy: Path, python: str, seed: int, work: Path) -> Dict[str, Any]:
    """Run the release's main.py; its final test metrics and training seconds per epoch from its log."""
    stamp = f"seed{seed}"
    command = [python, "main.py", "--model", MODEL, "--data", "Amazon", "--gpu", "cpu", "--random_seed", str(seed),
               "--time", stamp, "--num_workers", "1", "--eval_batch_size", "512"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": str(seed)}
    (work / "logs").mkdir(exist_ok=True)
    with open(work / "logs" / f"official_{stamp}.out", "w", encoding="utf-8") as out:
        started = time.time()
        subprocess.run(command, cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    log = (copy / "output" / "Amazon" / MODEL / "logs" / f"{stamp}.log").read_text(encoding="utf-8").splitlines()
    messages = [line.split(" - ", 1)[-1] for line in log]
    tests = [i for i, m in enumerate(messages) if m.strip() == "Test Result:"]
    if not tests:
        raise RuntimeError(f"no 'Test Result:' in {copy}/output/Amazon/{MODEL}/logs/{stamp}.log")
    result = ast.literal_eval(messages[tests[-1] + 1])
    epochs = [float(m.split(":")[1].rstrip("s")) for m in messages if m.startswith("total time:")]
    return {"metrics": release_metrics(result), "epochs": len(epochs),
            "train_seconds_per_epoch": round(statistics.mean(epochs), 2) if epochs else None,
            "wall_seconds": round(time.time() - started, 1), "command": shlex.join(command)}


def _office_benchmark():
    """benchmarks/unisar_office.py as a module (its rec-only writer and its baseline scorer)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("unisar_office", REPO / "benchmarks" / "unisar_office.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sasrec(mixed: Path, dataset, test_rows: List[dict], args: argparse.Namespace, work: Path, seed: int) -> Dict[str, Any]:
    """SASRec (RecBole) on the recommendation events alone, scored on the rec test rows the release keeps.

    Settings as in benchmarks/unisar_office.py (hidden 64, 2 layers, 2 heads, 20 items, dropout 0.5,
    CE loss) with this run's epochs, seed and one thread.
    """
    from recbole_llm.quick_start import run_recbole_llm

    office = _office_benchmark()
    office.write_rec_only(mixed, work / "dataset" / "OfficeSearchRec")
    users, items = dataset.field2id_token[dataset.uid_field], dataset.field2id_token[dataset.iid_field]
    targets = {users[row["user_id"]]: ([items[row["item_id"]]] + [items[i] for i in row["neg_items"]], 0)
               for row in test_rows}
    config = {"seed": seed, "show_progress": False, "state": "INFO", "hidden_size": 64, "n_layers": 2, "n_heads": 2,
              "inner_size": 256, "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "MAX_ITEM_LIST_LENGTH": 20,
              "train_batch_size": 2 * args.batch_size, "eval_batch_size": 512, "epochs": args.epochs,
              "stopping_step": args.epochs + 1, "dataset": "OfficeSearchRec", "data_path": str(work / "dataset"),
              "checkpoint_dir": str(work / "saved"),
              "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}}
    result = run_recbole_llm("SASRec", config_dict=config)
    scored_users, scores, positives = office.baseline_scores(result["saved_model_file"], targets)
    return {"model": "SASRec", "seed": seed, **rank_metrics(scores, positives), "targets": len(scored_users),
            "epochs": result["timing"]["epochs"], "train_seconds_per_epoch": result["timing"]["train_seconds_per_epoch"]}


# ----- data ---------------------------------------------------------------------------------------
def write_subset(data: Path, users: Optional[int], work: Path) -> Path:
    """LC-Rec json of the first ``users`` users (all when None) and the items they touch."""
    sequences = json.loads((data / "Office.inter.json").read_text(encoding="utf-8"))
    chosen = dict(list(sequences.items())[:users]) if users else sequences
    items = json.loads((data / "Office.item.json").read_text(encoding="utf-8"))
    used = {str(i) for history in chosen.values() for i in history}
    raw = work / "lcrec"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "Office.inter.json").write_text(json.dumps(chosen), encoding="utf-8")
    (raw / "Office.item.json").write_text(json.dumps({k: v for k, v in items.items() if k in used}), encoding="utf-8")
    return raw


VARIANTS = {"ours": "ours", "ours, release rows": "ours, trained on the release's rows", "official": "official"}


def variant(row: dict) -> str:
    """``ours``, ``ours, release rows`` (trained only on the rows the release takes) or ``official``."""
    if row["side"] == "ours" and row.get("ours_train_rows") == "release":
        return "ours, release rows"
    return row["side"]


def summarise(rows: List[dict]) -> str:
    metrics = [f"{p}{m}@{k}" for p in ("", "search_") for m in ("hit", "ndcg") for k in (1, 5, 10, 20)]
    lines = ["| side | seeds | " + " | ".join(metrics) + " | s/epoch |", "|---|---|" + "---|" * (len(metrics) + 1)]
    means = {}
    for name, label in VARIANTS.items():
        part = [r for r in rows if variant(r) == name]
        if not part:
            continue
        cells = []
        for metric in metrics + ["train_seconds_per_epoch"]:
            values = [r[metric] for r in part if r.get(metric) is not None]
            mean = statistics.mean(values) if values else float("nan")
            means[(name, metric)] = mean
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{mean:.4f}{spread}" if metric != "train_seconds_per_epoch" else f"{mean:.1f}")
        lines.append(f"| {label} | {len(part)} | " + " | ".join(cells) + " |")
    for name in ("ours", "ours, release rows"):
        if (name, "ndcg@10") in means and ("official", "ndcg@10") in means:
            ratio = [f"{means[(name, m)] / means[('official', m)]:.3f}" if means[("official", m)] else "n/a"
                     for m in metrics]
            lines.append(f"| {VARIANTS[name]} / official | | " + " | ".join(ratio) + " | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unisar", type=Path, help="checkout of TengShi-RUC/UniSAR (its side is skipped when absent)")
    parser.add_argument("--unisar_python", default=sys.executable, help="python of the release's environment")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "amazon-office")
    parser.add_argument("--users", type=int, default=None, help="first N users (all when omitted)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020])
    parser.add_argument("--history_length", type=int, default=10)
    parser.add_argument("--train_negatives", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=256, help="recommendation rows per training step")
    parser.add_argument("--sides", nargs="*", default=["ours", "official"], choices=["ours", "official"],
                        help="sides to run (none: only --sasrec)")
    parser.add_argument("--ours_train_rows", default="all", choices=["all", "release"],
                        help="'release': ours trains only on the rows the release can take (train_needs_both_kinds)")
    parser.add_argument("--append", action="store_true", help="keep the rows of an existing result file")
    parser.add_argument("--sasrec", action="store_true",
                        help="also SASRec on the rec events, ranking the same rec test candidates (a reference)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fidelity_unisar"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not (args.data / "Office.inter.json").is_file():
        raise SystemExit(f"{args.data} holds no Office.inter.json (LC-Rec Office); pass --data")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    from recbole_llm.convert import convert

    raw = write_subset(args.data, args.users, work)
    mixed = convert("amazon_search", [raw], work / "dataset" / "OfficeSearch", search_ratio=0.5, seed=2020,
                    overwrite=True).path
    yaml_file = mixed / "OfficeSearch.yaml"
    dataset = load_mixed(yaml_file, args, work)
    events = dataset_events(dataset)
    release_data = work / "release_data"
    candidates = dataset_candidates(dataset, events, 99, 2020)
    counts = write_release_format(release_data, events, candidates, dataset.item_num, dataset.user_num, 16, 1,
                                  args.train_negatives, args.seeds[0])
    print("release pickles:", counts, flush=True)
    setting = (f"semi-synthetic Office, first {args.users or 'all'} users, {args.epochs} epochs, history "
               f"{args.history_length}+{args.history_length}, uni99, id-only items")
    command = "python benchmarks/fidelity/unisar.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows: List[dict] = []
    reference: List[dict] = []
    commands = [command]
    if args.append and (args.out / "fidelity_unisar.json").is_file():
        previous = json.loads((args.out / "fidelity_unisar.json").read_text(encoding="utf-8"))
        rows, reference = previous["rows"], previous.get("reference_rows", [])
        commands = previous.get("commands", [previous["command"]]) + commands
    official_copy = None
    if "official" in args.sides and args.unisar and (args.unisar / "main.py").is_file():
        sizes = {"item_id_num": dataset.item_num, "user_id_num": dataset.user_num,
                 "word_id_num": dataset.num("query"), "final_emb_size": 64,
                 "max_rec_his_len": args.history_length, "max_src_session_his_len": args.history_length,
                 "max_session_item_len": 1, "max_query_word_len": 16}
        official_copy = prepare_official(args.unisar.resolve(), work, release_data.resolve(), sizes, args)
    elif "official" in args.sides:
        print(f"no UniSAR checkout at {args.unisar}: the official side is skipped", flush=True)
    if args.sasrec:
        _, tables = release_tables(events, candidates, args.train_negatives, dataset.item_num, args.seeds[0])
        kept = [r for r in tables["rec"][TEST] if r["rec_his"] > 0 and r["src_session_his"] > 0]
    for seed in args.seeds:
        if args.sasrec:
            reference.append({**run_sasrec(mixed, dataset, kept, args, work, seed), "command": command})
            print(json.dumps({k: reference[-1][k] for k in ("model", "seed", "ndcg@10", "targets")}), flush=True)
            write_outputs(args.out, {"rows": rows, "reference_rows": reference, "release_rows": counts,
                                     "command": command, "commands": commands}, setting)
        for side in args.sides:
            if side == "official" and official_copy is None:
                continue
            if side == "ours":
                run = {**run_ours(yaml_file, args, work, seed), "ours_train_rows": args.ours_train_rows}
            else:
                run = run_official(official_copy, args.unisar_python, seed, work)
            row = {"model": MODEL, "setting": setting, "side": side, "seed": seed, **run.pop("metrics"),
                   "train_seconds_per_epoch": run.pop("train_seconds_per_epoch"), "epochs": run.pop("epochs"),
                   "command": run.pop("command", command), **run}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k in ("side", "seed", "ndcg@10", "search_ndcg@10",
                                                                    "train_seconds_per_epoch")}), flush=True)
            report = {"rows": rows, "reference_rows": reference, "release_rows": counts, "command": command,
                      "commands": commands,
                      "data": f"{args.data} -> amazon_search (search_ratio 0.5, seed 2020)"}
            write_outputs(args.out, report, setting)  # after every run: a stopped run keeps what it finished


def write_outputs(out: Path, report: dict, setting: str) -> None:
    from recbole_llm.utils import atomic_write

    def text_writer(text: str):
        return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(out / "fidelity_unisar.json", text_writer(json.dumps(report, indent=2)))
    kept = {k: v["rows"] for k, v in report["release_rows"].items() if k.endswith("_test")}
    dropped = {k: v["dropped"] for k, v in report["release_rows"].items()}
    md = ["# UniSAR beside its release (TengShi-RUC/UniSAR @1a14a24)\n", f"setting: {setting}  ",
          *[f"command: `{c}`  " for c in report.get("commands", [report["command"]])], "",
          "Recommendation (hit/ndcg) and search (search_hit/search_ndcg) test metrics on the test rows the release "
          f"can take ({kept}), mean ± std over seeds:\n", summarise(report["rows"]), "",
          f"Rows dropped from the release's pickles (a user without history of one behaviour kind): {dropped}.",
          "Ours on all of its test rows: " + "; ".join(
              f"{VARIANTS[variant(r)]} seed {r['seed']}: ndcg@10 {r['all_test_rows']['ndcg@10']:.4f}, search_ndcg@10 "
              f"{r['all_test_rows']['search_ndcg@10']:.4f}" for r in report["rows"] if r["side"] == "ours"), ""]
    if report.get("reference_rows"):
        md += ["Reference: SASRec (RecBole) trained on the recommendation events alone, ranking the same rec test "
               f"candidates of the rows above ({report['reference_rows'][0]['targets']} of them: the users whose "
               "rec test target is the same under RecBole's split of the rec-only data):\n",
               "| model | seeds | hit@10 | ndcg@5 | ndcg@10 | ndcg@20 | s/epoch |",
               "|---|---|---|---|---|---|---|"]
        part = report["reference_rows"]
        cells = []
        for metric in ("hit@10", "ndcg@5", "ndcg@10", "ndcg@20", "train_seconds_per_epoch"):
            values = [r[metric] for r in part]
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{spread}")
        md += [f"| SASRec | {len(part)} | " + " | ".join(cells) + " |", ""]
    atomic_write(out / "fidelity_unisar.md", text_writer("\n".join(md) + "\n"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
