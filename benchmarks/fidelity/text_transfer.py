"""VQRec and UniSRec here beside the authors' code (RUCAIBox/VQ-Rec, RUCAIBox/UniSRec), same inputs.

    python benchmarks/fidelity/text_transfer.py --unisrec_repo /tmp/peers/UniSRec \\
        --vqrec_repo /tmp/peers/VQ-Rec --vqrec_python /tmp/peers/vqrec_venv/bin/python \\
        --work /tmp/fidelity --settings unisrec-transductive unisrec-inductive vqrec-inductive \\
        --seeds 2020 2021 2022 --epochs 5 --hidden_size 64

Both sides read the same files: the papers' Scientific split (``<data>/Scientific.{train,valid,test}.inter``,
optionally the first ``--max_users`` users), one MiniLM embedding per item written in the
releases' ``Scientific.feat1CLS`` layout (raw float32, ``item2index`` order), and for VQ-Rec the
item codes of one faiss index built by the authors' ``pq.py`` from those embeddings (ours reads it
through ``pq_index_file``). Sizes, learning rate, batch sizes, epochs, early stopping, metrics and
seed are the same command-line settings on both sides; each run is a subprocess with
``--threads`` CPU threads. A side whose checkout is not given (or absent) is skipped.

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
    "VQ-Rec's release, fine-tuning without a pre-trained model, trains only its code permutation for "
    "`reassign_steps` (5) epochs and then freezes the Transformer and position embeddings for good; "
    "ours (no `pretrained_file`) trains every parameter from the first epoch. The rows compare the "
    "two programs on one input, not one training schedule."
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


def build_official_index(vqrec_repo: Path, python: str, downstream: Path, width: int, log: Path) -> Path:
    """The authors' ``pq.py`` (CPU) on the ``.feat1CLS`` file: ``OPQ32,IVF1,PQ32x8`` over the training items."""
    index = downstream / DATASET / f"{DATASET}.OPQ32,IVF1,PQ32x8.strict.index"
    if not index.is_file():
        command = [python, "pq.py", "--dataset", DATASET, "--input_path", str(downstream), "--output_path",
                   str(downstream), "--use_gpu", "0", "--suffix", "feat1CLS", "--plm_size", str(width)]
        with open(log, "w", encoding="utf-8") as handle:
            subprocess.run(command, cwd=vqrec_repo, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return index


def parse_log(text: str) -> Dict[str, float]:
    """Test metrics and mean train seconds per epoch from a RecBole log."""
    text = ANSI.sub("", text)
    marker = text.rfind("test result")
    if marker < 0:
        raise RuntimeError("no 'test result' line in the run's log")
    line = text[marker:].splitlines()[0]
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
        command += [f"--index_path={downstream}", "--plm_suffix=feat1CLS"]
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
    started = time.time()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(list(command), cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"{' '.join(command)} exited with {code}; see {log}")
    result = parse_log(log.read_text(encoding="utf-8", errors="replace"))
    result["wall_seconds"] = round(time.time() - started, 1)
    return result


def summary_table(rows: List[dict]) -> str:
    """Markdown: mean +- std per (model, setting, side) and the ratio ours/official of the means."""
    groups: Dict[tuple, Dict[str, List[dict]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["setting"]), {}).setdefault(row["side"], []).append(row)
    columns = [*METRICS, "train_seconds_per_epoch"]
    lines = ["| model | setting | side | seeds | " + " | ".join(c.replace("train_seconds_per_epoch", "train s/epoch")
                                                            for c in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]

    def mean_std(values: List[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    for (model, setting), sides in groups.items():
        for side in ("ours", "official"):
            if side in sides:
                cells = [mean_std([r[c] for r in sides[side]]) for c in columns]
                lines.append(f"| {model} | {setting} | {side} | {len(sides[side])} | " + " | ".join(cells) + " |")
        if "ours" in sides and "official" in sides:
            ratios = []
            for c in columns:
                official = statistics.mean(r[c] for r in sides["official"])
                ours = statistics.mean(r[c] for r in sides["ours"])
                ratios.append(f"{ours / official:.3f}" if official else "n/a")
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
        index = None
        if model == "VQRec":
            if not have_official:
                print(f"skipped {setting}: the item codes come from the authors' pq.py (give --vqrec_repo and --vqrec_python)")
                continue
            index = build_official_index(repo, python, downstream, width, logs / "vqrec_pq.log")
        label = f"{DATASET}, {stage}, from scratch, MiniLM feat1CLS" + (", same codes" if model == "VQRec" else "")
        label += f", {args.label}" if args.label else ""
        for seed in args.seeds:
            flags = shared_flags(args, seed, width, work)
            for side in args.sides:
                if side == "official" and not have_official:
                    print(f"skipped official {setting}: no checkout")
                    continue
                if side == "official":
                    command = official_command(model, stage, args, python, downstream, flags, width)
                    cwd = repo
                else:
                    command = ours_command(model, stage, downstream, flags, width, index, config_file)
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
              f"at most {args.epochs} epochs; full ranking over all items, test metrics of the best-validation "
              f"epoch.\n\n")
    notes = f"\n{VQREC_CAVEAT}\n" if any(r["model"] == "VQRec" for r in rows) else ""
    write_text(output.with_suffix(".md"), header + summary_table(rows) + notes)
    print(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
