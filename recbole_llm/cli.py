"""Command-line entry points: ``run_recbole_llm.py`` / ``recbole-llm`` and ``run_hyper.py``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _split_files(value: Optional[str]) -> Optional[List[str]]:
    if not value:
        return None
    return [part for part in value.replace(",", " ").split() if part]


def main(argv: Optional[List[str]] = None) -> dict:
    """Train and test one model. Unknown ``--key=value`` arguments are RecBole config overrides."""
    parser = argparse.ArgumentParser(description="Run a recbole-llm or RecBole model.")
    parser.add_argument("--model", "-m", default="SASRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="config files, space or comma separated")
    args, _ = parser.parse_known_args(argv)

    from recbole_llm.quick_start import run_recbole_llm

    return run_recbole_llm(model=args.model, dataset=args.dataset, config_file_list=_split_files(args.config_files))


def hyper_main(argv: Optional[List[str]] = None) -> None:
    """Hyperparameter search with RecBole's HyperTuning over any model."""
    parser = argparse.ArgumentParser(description="Tune a recbole-llm or RecBole model.")
    parser.add_argument("--model", "-m", required=True, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="fixed config files, space or comma separated")
    parser.add_argument("--params_file", required=True, help="search space, RecBole's hyper format")
    parser.add_argument("--output_file", default="hyper_example.result", help="where results are written")
    parser.add_argument("--display_file", default=None, help="optional HTML plot of the search")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"])
    parser.add_argument("--max_evals", type=int, default=100, help="trials (ignored by exhaustive)")
    parser.add_argument("--early_stop", type=int, default=10, help="trials without progress before stopping")
    args, _ = parser.parse_known_args(argv)

    from recbole_llm.tuning import hyperopt_tune

    hyperopt_tune(args)


if __name__ == "__main__":
    main(sys.argv[1:])
