"""Hyperparameter tuning through RecBole's ``HyperTuning`` (hyperopt), for any model."""
from __future__ import annotations

import os
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


def _report_to_ray(metrics: Dict[str, float]) -> None:
    try:
        from ray import train

        train.report(metrics)
    except (ImportError, AttributeError):  # ray < 2.7
        from ray.air import session

        session.report(metrics)


def ray_trial(params: Dict[str, Any], model: str, dataset: str, config_file_list: Optional[List[str]] = None) -> None:
    """A Ray Tune function trainable: one training run; validation metrics (as ``ndcg@10`` ...)
    and test metrics (as ``test_ndcg@10`` ...) are reported to Ray."""
    import os

    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    result = objective_function({"model": model, "dataset": dataset, **params}, config_file_list, saved=False)
    test = {f"test_{k}": v for k, v in result["test_result"].items()}
    _report_to_ray({**result["best_valid_result"], **test})


def ray_search_space(params_file: str) -> Dict[str, Any]:
    """RecBole's hyper file format (``name choice [..]``, ``uniform a,b`` ...) as a Ray search space."""
    from ray import tune

    space = {}
    with open(params_file, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=2)
            if len(parts) != 3:
                raise ValueError(f"{params_file}:{number}: expected '<name> <type> <range>', got {line.strip()!r}")
            name, kind, value = parts
            if kind == "choice":
                space[name] = tune.choice(eval_literal(value, params_file, number))
            elif kind in ("uniform", "loguniform"):
                low, high = (float(v) for v in value.split(","))
                space[name] = getattr(tune, kind)(low, high)
            else:
                raise ValueError(f"{params_file}:{number}: unknown range type {kind!r} (choice, uniform, loguniform)")
    return space


def eval_literal(value: str, file: str, line: int):
    import ast

    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"{file}:{line}: cannot read {value.strip()!r} as a Python literal") from err


def ray_tune(args):
    """Search with Ray Tune (local, or the cluster at ``--ray_address``); returns Ray's analysis."""
    import ray
    import torch
    from ray import tune
    from recbole_llm.cli import _split_files

    ray.init(address=args.ray_address, include_dashboard=False, ignore_reinit_error=True)
    config_files = [os.path.abspath(f) for f in _split_files(args.config_files) or []]
    analysis = tune.run(
        tune.with_parameters(ray_trial, model=args.model, dataset=args.dataset, config_file_list=config_files or None),
        config=ray_search_space(args.params_file),
        num_samples=args.max_evals,
        resources_per_trial={"cpu": 1, "gpu": 1 if torch.cuda.is_available() else 0},
        local_dir=os.path.abspath(args.ray_dir),
        log_to_file=True,
        verbose=1,
    )
    metric = args.ray_metric.lower()
    best = analysis.get_best_trial(metric, "max", "last")
    with open(args.output_file, "w", encoding="utf-8") as f:
        for trial in analysis.trials:
            f.write(f"{trial.config}\n{_format_metrics(trial.last_result)}\n\n")
    print("best params: ", best.config)
    print("best result: ", _format_metrics(best.last_result))
    return analysis


def _format_metrics(result: Dict[str, Any]) -> str:
    return "    ".join(f"{k}: {v}" for k, v in result.items() if "@" in k)
