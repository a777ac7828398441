"""VQRec and UniSRec here beside the authors' code (RUCAIBox/VQ-Rec, RUCAIBox/UniSRec), same inputs.

    python benchmarks/fidelity/text_transfer.py --unisrec_repo /tmp/peers/UniSRec \\
        --vqrec_repo /tmp/peers/VQ-Rec --vqrec_python /tmp/peers/vqrec_venv/bin/python \\
        --work /tmp/fidelity --settings unisrec-transductive unisrec-inductive vqrec-inductive \\
        --seeds 2020 2021 2022 --epochs 5 --hidden_size 64

Both sides read the same files: the papers' Scientific split (``<data>/Scientific.{train,valid,test}.inter``,
optionally the first ``--max_users`` users), one MiniLM embedding per item written in the
releases' ``Scientific.feat1CLS`` layout (raw float32, ``item2index`` order), and for VQ-Rec the
item codes of one faiss index built by the recipe of the authors' ``pq.py`` from those embeddings (ours reads it
through ``pq_index_file``). Sizes, learning rate, batch sizes, epochs, early stopping, metrics and
seed are the same command-line settings on both sides; each run is a subprocess with
``--threads`` CPU threads. A side whose checkout is not given (or absent) is skipped.

The VQ-Rec index is built here, once, by the release's recipe (``pq.py``: faiss
``index_factory(d, "OPQ32,IVF1,PQ32x8", METRIC_INNER_PRODUCT)``, trained on and filled with the
training-split items) with ``--threads`` OpenMP threads (``pq.py`` fixes 32), and both sides read
that one file. Most of ``pq.py``'s time is not the OPQ rotation: that factory string turns on
faiss' polysemous training of the PQ (a simulated-annealing reordering of each sub-codebook's 256
centroids), which took 116 of 127 s of a one-thread build with 2 OPQ rounds on 1,355 items here. With ``--max_users`` the VQ-Rec
items are renumbered 0..n-1 in their original order and the ``.feat1CLS`` keeps only their rows,
since the release requires one embedding row per item of the dataset. The release's fine-tuning
first trains only its code permutation for ``reassign_steps`` epochs and then freezes its
Transformer for good; ``--vqrec_reassign_steps -1`` (the default) makes it train every parameter
from the first epoch, the schedule ours follows without a pre-trained model.

Writes ``<output>.json`` (rows in the schema of the fidelity files: model, setting, side, seed,
metrics, train seconds per epoch, command) and ``<output>.md`` (mean +- std per side, ratio
ours/official). Setting names: ``<model>-<stage>``, model ``unisrec`` or ``vqrec``, stage
``transductive`` or ``inductive`` (VQ-Rec's release has only ``inductive``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET = "Scientific"
METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
METRIC_VALUE = re.compile(r"'?([a-z]+@\d+)'?\)?\s*[:,]\s*([0-9.eE+-]+)")
EPOCH_TIME = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
VQREC_CAVEAT = (
    "VQ-Rec's release, fine-tuning without a pre-trained model, trains only its code permutation for the "
    "first `reassign_steps` epochs (5 by default) and then freezes its Transformer and position embeddings "
    "for good. Its rows state the `reassign_steps` they ran with: -1 means neither happens and every "
    "parameter trains from the first epoch, as ours does without `pretrained_file`. Both sides read one "
    "faiss index built by the release's recipe (`pq.py`'s `OPQ32,IVF1,PQ32x8` over the training items) "
    "with one OpenMP thread."
)


def prepare_split(data: Path, folder: Path, max_users: Optional[int]) -> None:
    """Copy the split files into ``folder``, keeping only users with index < ``max_users``."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "test"):
        lines = (data / f"{DATASET}.{part}.inter").read_text(encoding="utf-8").splitlines()
        rows = [line for line in lines[1:] if max_users is None or int(line.split("\t", 1)[0]) < max_users]
        write_text(folder / f"{DATASET}.{part}.inter", "\n".join([lines[0], *rows]) + "\n")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def item_texts_in_index_order(data: Path) -> List[str]:
    """Each item's text from ``Scientific.text``, in ``Scientific.item2index`` order."""
    index = {}
    for line in (data / f"{DATASET}.item2index").read_text(encoding="utf-8").splitlines():
        asin, row = line.split("\t")
        index[asin] = int(row)
    texts = [""] * len(index)
    for line in (data / f"{DATASET}.text").read_text(encoding="utf-8").splitlines()[1:]:
        asin, text = line.split("\t", 1)
        if asin in index:
            texts[index[asin]] = text.strip()
    return texts


def write_feat1cls(data: Path, path: Path) -> int:
    """MiniLM embeddings of the item texts as a ``.feat1CLS`` file; returns their width."""
    sys.path.insert(0, str(REPO_ROOT))
    from recbole_llm.text.encoder import encode_texts

    if not path.is_file():
        embeddings = encode_texts(item_texts_in_index_order(data)).astype("<f4")
        tmp = path.with_name(f".{path.name}.tmp")
        embeddings.tofile(tmp)
        os.replace(tmp, path)
    return int(np.fromfile(path, dtype="<f4").size // len(item_texts_in_index_order(data)))


def compact_items(folder: Path, feat: Path, width: int, out: Path) -> None:
    """A copy of the split in ``folder`` whose items are renumbered 0..n-1 (original order), with a
    ``.feat1CLS`` holding only their rows of ``feat``: VQ-Rec's release wants one row per item."""
    parts = {part: (folder / f"{DATASET}.{part}.inter").read_text(encoding="utf-8").splitlines()
             for part in ("train", "valid", "test")}
    used = sorted({int(token) for lines in parts.values() for line in lines[1:]
                   for field in line.split("\t")[1:] for token in field.split()})
    new_id = {old: str(index) for index, old in enumerate(used)}
    out.mkdir(parents=True, exist_ok=True)
    for part, lines in parts.items():
        rows = []
        for line in lines[1:]:
            user, history, target = line.split("\t")
            rows.append("\t".join([user, " ".join(new_id[int(t)] for t in history.split()), new_id[int(target)]]))
        write_text(out / f"{DATASET}.{part}.inter", "\n".join([lines[0], *rows]) + "\n")
    rows = np.fromfile(feat, dtype="<f4").reshape(-1, width)[used]
    tmp = out / f".{DATASET}.feat1CLS.tmp"
    rows.astype("<f4").tofile(tmp)
    os.replace(tmp, out / f"{DATASET}.feat1CLS")


def training_items(folder: Path) -> np.ndarray:
    """Sorted item indices of the training split (histories and targets): what VQ-Rec's ``strict`` index is fitted on."""
    items = set()
    for line in (folder / f"{DATASET}.train.inter").read_text(encoding="utf-8").splitlines()[1:]:
        _, history, target = line.split("\t")
        items.update(int(token) for token in history.split())
        items.add(int(target))
    return np.array(sorted(items), dtype=np.int64)


def build_shared_index(folder: Path, width: int, threads: int) -> Path:
    """The release's quantizer recipe (``pq.py``) on ``folder``'s ``.feat1CLS``, with ``threads`` OpenMP
    threads: ``OPQ32,IVF1,PQ32x8`` (inner product) trained on and filled with the training items."""
    import faiss

    index_path = folder / f"{DATASET}.OPQ32,IVF1,PQ32x8.strict.index"
    if not index_path.is_file():
        vectors = np.fromfile(folder / f"{DATASET}.feat1CLS", dtype="<f4").reshape(-1, width)
        fitting = np.ascontiguousarray(vectors[training_items(folder)])
        faiss.omp_set_num_threads(threads)
        index = faiss.index_factory(width, "OPQ32,IVF1,PQ32x8", faiss.METRIC_INNER_PRODUCT)
        index.train(fitting)
        index.add(fitting)
        tmp = folder / f".{index_path.name}.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, index_path)
    return index_path


def parse_log(text: str) -> Dict[str, float]:
    """Test metrics and mean train seconds per epoch from a RecBole log."""
    text = ANSI.sub("", text)
    lines = [line for line in text.splitlines() if "test result" in line and METRIC_VALUE.search(line)]
    if not lines:
        raise RuntimeError("no 'test result' line with metrics in the run's log")
    line = lines[-1]
    values = {name.lower(): float(value) for name, value in METRIC_VALUE.findall(line)}
    if "hit@10" in values and "recall@10" not in values:  # leave-one-out: one target, hit == recall
        values.update({key.replace("hit", "recall"): value for key, value in values.items() if key.startswith("hit")})
    epochs = [float(seconds) for _, seconds in EPOCH_TIME.findall(text)]
    result = {metric: values[metric] for metric in METRICS}
    result["train_seconds_per_epoch"] = statistics.mean(epochs) if epochs else float("nan")
    result["epochs"] = len(epochs)
    return result


def shared_flags(args, seed: int, width: int, work: Path) -> List[str]:
    """The settings both sides take from the command line."""
    h = args.hidden_size
    return [
        f"--seed={seed}", f"--epochs={args.epochs}", f"--learning_rate={args.learning_rate}",
        f"--train_batch_size={args.train_batch_size}", f"--eval_batch_size={args.eval_batch_size}",
        f"--hidden_size={h}", f"--inner_size={args.inner_size}", f"--n_layers={args.n_layers}",
        f"--n_heads={args.n_heads}", f"--stopping_step={args.stopping_step}", "--use_gpu=False",
        "--metrics=['Recall','NDCG']", "--topk=[10,50]", "--valid_metric=NDCG@10", "--show_progress=False",
        f"--checkpoint_dir={work / 'saved'}", f"--plm_size={width}",
    ]


def official_command(model: str, stage: str, args, python: str, downstream: Path, flags: List[str], width: int) -> List[str]:
    command = [python, "finetune.py", "-d", DATASET, f"--data_path={downstream}/", f"--train_stage={stage}_ft", *flags]
    if model == "UniSRec":
        command.append(f"--adaptor_layers=[{width},{args.hidden_size}]")
    else:
        command += [f"--index_path={downstream}", "--plm_suffix=feat1CLS", f"--reassign_steps={args.vqrec_reassign_steps}"]
    return command


def ours_command(model: str, stage: str, downstream: Path, flags: List[str], width: int, index: Optional[Path],
                 config_file: Path) -> List[str]:
    command = [sys.executable, str(REPO_ROOT / "run_recbole_llm.py"), f"--model={model}", f"--dataset={DATASET}",
               f"--config_files={config_file}", f"--data_path={downstream}", f"--train_stage={stage}_ft",
               f"--text_embedding_file={downstream / DATASET / (DATASET + '.feat1CLS')}",
               f"--text_embedding_size={width}", *[flag for flag in flags if not flag.startswith("--plm_size")]]
    if model == "VQRec":
        command += [f"--pq_index_file={index}", "--code_dim=32", "--code_cap=256"]
    return command


def run_logged(command: Sequence[str], cwd: Path, log: Path, threads: int) -> Dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    started, cpu_before = time.time(), children_cpu_seconds()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(list(command), cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"{' '.join(command)} exited with {code}; see {log}")
    result = parse_log(log.read_text(encoding="utf-8", errors="replace"))
    result["wall_seconds"] = round(time.time() - started, 1)
    # CPU seconds of the whole run (data loading, training, evaluation): on a shared machine the
    # wall-clock epoch times follow the other jobs' load, the run's own CPU time much less so.
    result["cpu_seconds"] = round(children_cpu_seconds() - cpu_before, 1)
    return result


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summary_table(rows: List[dict]) -> str:
    """Markdown: mean +- std per (model, setting, side) and the ratio ours/official of the means."""
    groups: Dict[tuple, Dict[str, List[dict]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["setting"]), {}).setdefault(row["side"], []).append(row)
    columns = [*METRICS, "train_seconds_per_epoch"]
    if any("cpu_seconds" in row for row in rows):
        columns.append("cpu_seconds")
    names = {"train_seconds_per_epoch": "train s/epoch", "cpu_seconds": "run CPU s"}
    lines = ["| model | setting | side | seeds | " + " | ".join(names.get(c, c) for c in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]

    def mean_std(values: List[float]) -> str:
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    for (model, setting), sides in groups.items():
        for side in ("ours", "official"):
            if side in sides:
                cells = [mean_std([r[c] for r in sides[side] if c in r]) for c in columns]
                lines.append(f"| {model} | {setting} | {side} | {len(sides[side])} | " + " | ".join(cells) + " |")
        if "ours" in sides and "official" in sides:
            ratios = []
            for c in columns:
                official = [r[c] for r in sides["official"] if c in r]
                ours = [r[c] for r in sides["ours"] if c in r]
                ok = official and ours and statistics.mean(official)
                ratios.append(f"{statistics.mean(ours) / statistics.mean(official):.3f}" if ok else "n/a")
            lines.append(f"| {model} | {setting} | ours/official | | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(os.environ.get("RECBOLE_LLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", default=str(shared / "amazon-scientific"), help="the papers' Scientific split")
    parser.add_argument("--unisrec_repo", default=None, help="checkout of RUCAIBox/UniSRec (runs on recbole 1.2.1)")
    parser.add_argument("--unisrec_python", default=sys.executable, help="python for the UniSRec checkout")
    parser.add_argument("--vqrec_repo", default=None, help="checkout of RUCAIBox/VQ-Rec")
    parser.add_argument("--vqrec_python", default=None, help="python of the venv with recbole 1.0.1 for VQ-Rec")
    parser.add_argument("--work", default="/tmp/recbole_llm_fidelity", help="scratch folder (data, logs, checkpoints)")
    parser.add_argument("--settings", nargs="+", default=["unisrec-transductive", "unisrec-inductive", "vqrec-inductive"])
    parser.add_argument("--sides", nargs="+", default=["official", "ours"], choices=["official", "ours"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020])
    parser.add_argument("--max_users", type=int, default=None, help="keep the first N users (smoke runs)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--inner_size", type=int, default=128)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--n_heads", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=0.001)
    parser.add_argument("--train_batch_size", type=int, default=1024)
    parser.add_argument("--eval_batch_size", type=int, default=2048)
    parser.add_argument("--stopping_step", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "fidelity_text"))
    parser.add_argument("--vqrec_reassign_steps", type=int, default=-1,
                        help="the release's reassign_steps: epochs that train only its code permutation, after which "
                             "its Transformer is frozen; -1 trains every parameter from the first epoch")
    parser.add_argument("--label", default="", help="appended to every setting name (e.g. 'smoke, 300 users')")
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()
    downstream = work / "downstream"
    data = Path(args.data)
    if not (data / f"{DATASET}.train.inter").is_file():
        print(f"skipped: {data} holds no {DATASET} split")
        return
    prepare_split(data, downstream / DATASET, args.max_users)
    width = write_feat1cls(data, downstream / DATASET / f"{DATASET}.feat1CLS")
    config_file = work / "ours.yaml"
    write_text(config_file, json.dumps({
        "benchmark_filename": ["train", "valid", "test"], "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "MAX_ITEM_LIST_LENGTH": 50,
    }))  # JSON is YAML
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    output = Path(args.output)
    rows: List[dict] = json.loads(output.with_suffix(".json").read_text())["rows"] if output.with_suffix(".json").is_file() else []

    for setting in args.settings:
        name, stage = setting.split("-")
        model = {"unisrec": "UniSRec", "vqrec": "VQRec"}[name]
        repo = Path(args.unisrec_repo or "") if model == "UniSRec" else Path(args.vqrec_repo or "")
        python = args.unisrec_python if model == "UniSRec" else args.vqrec_python
        have_official = bool(str(repo)) and (repo / "finetune.py").is_file() and python
        index, folder = None, downstream
        label = f"{DATASET}, {stage}, from scratch, MiniLM feat1CLS"
        if model == "VQRec":
            if args.max_users is not None:
                folder = work / "downstream_compact"
                compact_items(downstream / DATASET, downstream / DATASET / f"{DATASET}.feat1CLS", width, folder / DATASET)
            index = build_shared_index(folder / DATASET, width, args.threads)
            label += f", same codes, release reassign_steps={args.vqrec_reassign_steps}"
        label += f", {args.label}" if args.label else ""
        for seed in args.seeds:
            flags = shared_flags(args, seed, width, work)
            for side in args.sides:
                if side == "official" and not have_official:
                    print(f"skipped official {setting}: no checkout")
                    continue
                if side == "official":
                    command = official_command(model, stage, args, python, folder, flags, width)
                    cwd = repo
                else:
                    command = ours_command(model, stage, folder, flags, width, index, config_file)
                    cwd = work
                log = logs / f"{setting}-{side}-{seed}.log"
                print(f"running {side} {setting} seed {seed} (log {log})", flush=True)
                result = run_logged(command, cwd, log, args.threads)
                rows = [r for r in rows if (r["model"], r["setting"], r["side"], r["seed"]) != (model, label, side, seed)]
                rows.append({"model": model, "setting": label, "side": side, "seed": seed, **result,
                             "command": " ".join(command)})
                output.parent.mkdir(parents=True, exist_ok=True)
                write_text(output.with_suffix(".json"), json.dumps({"rows": rows}, indent=1))
                print(json.dumps({k: v for k, v in result.items()}), flush=True)

    header = (f"# Text-based transfer: ours beside the authors' code\n\n"
              f"`python benchmarks/fidelity/text_transfer.py` (see the JSON for every exact command). CPU, "
              f"{args.threads} thread(s) per run; hidden {args.hidden_size}, inner {args.inner_size}, "
              f"{args.n_layers} layers, {args.n_heads} heads, lr {args.learning_rate}, batch {args.train_batch_size}, "
              f"epochs and users as each setting names them; full ranking over all items, test metrics of the "
              f"best-validation epoch; run CPU s: the CPU seconds of the whole run (data, training, evaluation), "
              f"steadier than the wall-clock epoch times on a shared machine.\n\n")
    notes = f"\n{VQREC_CAVEAT}\n" if any(r["model"] == "VQRec" for r in rows) else ""
    write_text(output.with_suffix(".md"), header + summary_table(rows) + notes)
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
