"""Hyperparameter tuning through RecBole's ``HyperTuning`` (hyperopt), for any model."""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

from recbole.trainer import HyperTuning

from recbole_llm.quick_start import objective_function


def _objective_for(model: str, dataset: str):
    def objective(config_dict: Optional[Dict[str, Any]] = None, config_file_list: Optional[List[str]] = None):
        merged = {"model": model, "dataset": dataset, **(config_dict or {})}
        return objective_function(merged, config_file_list, saved=False)

    return objective


def hyperopt_tune(args) -> HyperTuning:
    """Run the search described by ``args`` (see ``run_hyper.py --help``) and write the results."""
    from recbole_llm.cli import _split_files

    tuner = HyperTuning(
        _objective_for(args.model, args.dataset),
        algo=args.algo,
        params_file=args.params_file,
        fixed_config_file_list=_split_files(args.config_files),
        display_file=args.display_file,
        max_evals=args.max_evals,
        early_stop=args.early_stop,
    )
    tuner.run()
    tuner.export_result(output_file=args.output_file)
    print("best params: ", tuner.best_params)
    print("best result: ")
    print(tuner.params2result[tuner.params2str(tuner.best_params)])
    return tuner
