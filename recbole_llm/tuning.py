"""Hyperparameter tuning through RecBole's ``HyperTuning`` (hyperopt) or Ray Tune, for any model;
:func:`main` is the command line of ``run_hyper.py`` / ``recbole-llm-hyper``."""
from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from recbole_llm import compat

compat.apply()

from recbole.trainer import HyperTuning  # noqa: E402

from recbole_llm.errors import MissingFileError, UserError  # noqa: E402
from recbole_llm.profiles import PROFILE_HELP, PROFILES  # noqa: E402
from recbole_llm.quick_start import objective_function  # noqa: E402
from recbole_llm.registry import get_model  # noqa: E402
from recbole_llm.utils import exit_on_user_error, split_files  # noqa: E402

_RANGE_TYPES = ("choice", "uniform", "quniform", "loguniform")


def check_search(model: str, params_file: str, config_files: Optional[List[str]]) -> None:
    """Refuse an unknown model, a missing file or a malformed search-space line before any trial."""
    get_model(model)
    for file in [params_file, *(config_files or [])]:
        if not os.path.isfile(file):
            raise MissingFileError(f"file {file!r} does not exist")
    with open(params_file, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=2)
            if len(parts) != 3 or parts[1] not in _RANGE_TYPES:
                raise UserError(f"{params_file}:{number}: expected '<name> <{'|'.join(_RANGE_TYPES)}> <range>', "
                                f"got {line.strip()!r}")
            if parts[1] == "choice":
                eval_literal(parts[2].replace(" ", ""), params_file, number)


def _objective_for(model: str, dataset: str, argv: Sequence[str], profile: str):
    def objective(config_dict: Optional[Dict[str, Any]] = None, config_file_list: Optional[List[str]] = None):
        merged = {"model": model, "dataset": dataset, **(config_dict or {})}
        return objective_function(merged, config_file_list, saved=False, argv=argv, profile=profile)

    return objective


def hyperopt_tune(args, overrides: Sequence[str] = ()) -> HyperTuning:
    """Run the search described by ``args`` (see ``run_hyper.py --help``) and write the results;
    ``overrides`` are ``--key=value`` settings fixed for every trial."""
    tuner = HyperTuning(
        _objective_for(args.model, args.dataset, list(overrides), getattr(args, "profile", "default")),
        algo=args.algo,
        params_file=args.params_file,
        fixed_config_file_list=split_files(args.config_files),
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


def ray_trial(params: Dict[str, Any], model: str, dataset: str, config_file_list: Optional[List[str]] = None,
              argv: Sequence[str] = (), profile: str = "default") -> None:
    """A Ray Tune function trainable: one training run; validation metrics (as ``ndcg@10`` ...)
    and test metrics (as ``test_ndcg@10`` ...) are reported to Ray."""
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    result = objective_function({"model": model, "dataset": dataset, **params}, config_file_list, saved=False,
                                argv=list(argv), profile=profile)
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
                raise UserError(f"{params_file}:{number}: expected '<name> <type> <range>', got {line.strip()!r}")
            name, kind, value = parts
            if kind == "choice":
                space[name] = tune.choice(eval_literal(value, params_file, number))
            elif kind in ("uniform", "loguniform"):
                low, high = (float(v) for v in value.split(","))
                space[name] = getattr(tune, kind)(low, high)
            else:
                raise UserError(f"{params_file}:{number}: unknown range type {kind!r} (choice, uniform, loguniform)")
    return space


def eval_literal(value: str, file: str, line: int) -> Any:
    """A search-space value read as a Python literal, or a ``UserError`` naming file and line."""
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as err:
        raise UserError(f"{file}:{line}: cannot read {value.strip()!r} as a Python literal") from err


def ray_tune(args, overrides: Sequence[str] = ()):
    """Search with Ray Tune (local, or the cluster at ``--ray_address``); returns Ray's analysis.
    ``overrides`` are ``--key=value`` settings fixed for every trial."""
    import ray
    import torch
    from ray import tune

    ray.init(address=args.ray_address, include_dashboard=False, ignore_reinit_error=True)
    config_files = [os.path.abspath(f) for f in split_files(args.config_files) or []]
    analysis = tune.run(
        tune.with_parameters(ray_trial, model=args.model, dataset=args.dataset, config_file_list=config_files or None,
                             argv=list(overrides), profile=getattr(args, "profile", "default")),
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


@exit_on_user_error
def main(argv: Optional[List[str]] = None) -> None:
    """Hyperparameter search with RecBole's HyperTuning (or Ray Tune) over any model."""
    parser = argparse.ArgumentParser(description="Tune a recbole-llm or RecBole model.", allow_abbrev=False,
                                     epilog="Any other --key=value is a fixed config override of every trial.")
    parser.add_argument("--model", "-m", required=True, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="fixed config files, space or comma separated")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help=PROFILE_HELP)
    parser.add_argument("--params_file", required=True, help="search space, RecBole's hyper format")
    parser.add_argument("--output_file", default="hyper_example.result", help="where results are written")
    parser.add_argument("--display_file", default=None, help="optional HTML plot of the search")
    parser.add_argument("--tool", default="hyperopt", choices=["hyperopt", "ray"], help="tuning tool")
    parser.add_argument("--ray_address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--ray_dir", default="ray_results", help="Ray Tune's results folder")
    parser.add_argument("--ray_metric", default="ndcg@10", help="validation metric Ray ranks trials by")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"])
    parser.add_argument("--max_evals", type=int, default=100, help="trials (ignored by exhaustive)")
    parser.add_argument("--early_stop", type=int, default=10, help="trials without progress before stopping")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    check_search(args.model, args.params_file, split_files(args.config_files))
    if args.tool == "ray":
        ray_tune(args, overrides)
    else:
        hyperopt_tune(args, overrides)


if __name__ == "__main__":
    main()
