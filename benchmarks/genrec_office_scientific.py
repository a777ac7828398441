"""TIGER and LETTER beside SASRec on Office and Scientific, same protocol, one command.

    python benchmarks/genrec_office_scientific.py --datasets Office Scientific

Each (dataset, model) pair runs through ``run_recbole_llm`` in this process, in turn, with the
converter-written ``dataset/<Name>/<Name>.yaml`` (convert first:
``python -m recbole_llm.convert lcrec --input ../shared/data/amazon-office --output dataset/Office``
and ``... unisrec --input ../shared/data/amazon-scientific --output dataset/Scientific``).
Leave-one-out full ranking, metrics at 10 and 20 (the beam is 20). ``--epochs`` caps every
model's training (the paper runs train to convergence; a CPU run cannot), ``--rqvae_epochs`` the
tokenizer's. Writes benchmarks/results/genrec_office_scientific.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = {"topk": [10, 20], "metrics": ["Recall", "NDCG"], "valid_metric": "NDCG@10",
          "show_progress": False, "seed": 2020, "beam_size": 20}
# SASRec as in the shared data README (dropout 0.5), its default sizes.
SASREC = {"hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5}


def _run(model: str, dataset: str, args) -> Dict[str, Any]:
    from recbole_llm.quick_start import run_recbole_llm

    config = {**SHARED, "data_path": args.data_path, "epochs": args.epochs, "eval_step": args.eval_step,
              "stopping_step": 3, "train_batch_size": args.batch_size, "eval_batch_size": 512}
    if model == "SASRec":
        config.update(SASREC, epochs=args.sasrec_epochs)
    else:
        config.update(rqvae_epochs=args.rqvae_epochs, cf_epochs=args.cf_epochs, d_model=args.d_model,
                      num_layers=args.layers, num_decoder_layers=args.layers)
    start = time.time()
    result = run_recbole_llm(model=model, dataset=dataset, saved=True,
                             config_file_list=[str(Path(args.data_path) / dataset / f"{dataset}.yaml")],
                             config_dict=config)
    return {"dataset": dataset, "model": model, "seconds": round(time.time() - start, 1),
            "epochs": config["epochs"], "test": dict(result["test_result"]),
            "valid": dict(result["best_valid_result"])}


def _markdown(rows: List[Dict[str, Any]], command: str) -> str:
    lines = ["| dataset | model | R@10 | N@10 | R@20 | N@20 | epochs | seconds |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        test = row["test"]
        lines.append(f"| {row['dataset']} | {row['model']} | {test['recall@10']:.4f} | {test['ndcg@10']:.4f} | "
                     f"{test['recall@20']:.4f} | {test['ndcg@20']:.4f} | {row['epochs']} | {row['seconds']} |")
    return "\n".join(lines) + f"\n\nCommand: `{command}` (CPU).\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["Office", "Scientific"])
    parser.add_argument("--models", nargs="+", default=["SASRec", "TIGER", "LETTER"])
    parser.add_argument("--data_path", default=str(ROOT / "dataset"))
    parser.add_argument("--epochs", type=int, default=10, help="generative models' epochs")
    parser.add_argument("--sasrec_epochs", type=int, default=50)
    parser.add_argument("--eval_step", type=int, default=5)
    parser.add_argument("--rqvae_epochs", type=int, default=200)
    parser.add_argument("--cf_epochs", type=int, default=5, help="SASRec epochs for LETTER's CF embeddings")
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    command = "python benchmarks/genrec_office_scientific.py " + " ".join(sys.argv[1:])
    sys.argv = sys.argv[:1]
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        for model in args.models:
            rows.append(_run(model, dataset, args))
            print(json.dumps(rows[-1]), flush=True)
            import torch
            import transformers

            payload = {"command": command, "device": "cpu", "rows": rows, "settings": vars(args),
                       "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                    "transformers": transformers.__version__}}
            (out / "genrec_office_scientific.json").write_text(json.dumps(payload, indent=2) + "\n")
            (out / "genrec_office_scientific.md").write_text(_markdown(rows, command))
    print(_markdown(rows, command))


if __name__ == "__main__":
    main()
