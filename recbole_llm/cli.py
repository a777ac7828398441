"""Command-line entry points: ``run_recbole_llm.py`` / ``recbole-llm`` and ``run_hyper.py``.

Arguments the parser does not know are RecBole ``--key=value`` config overrides; they are handed
to :class:`recbole_llm.config.Config` as its ``argv`` (``sys.argv`` is never read there). A user
error prints ``error: <message>`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from recbole_llm.profiles import PROFILES
from recbole_llm.utils import exit_on_user_error, split_files

_PROFILE_HELP = ("size profile: 'cpu' small Transformers that answer in minutes on a laptop, 'default' "
                 "the models' own yaml (the papers' sizes); explicit --key=value flags still win")


@exit_on_user_error
def main(argv: Optional[List[str]] = None) -> dict:
    """Train and test one model; returns the run's result dict (see ``run_recbole_llm``)."""
    parser = argparse.ArgumentParser(description="Run a recbole-llm or RecBole model.", allow_abbrev=False,
                                     epilog="Any other --key=value is a RecBole config override.")
    parser.add_argument("--model", "-m", default="SASRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="config files, space or comma separated")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help=_PROFILE_HELP)
    parser.add_argument("--nproc", type=int, default=1, help="processes on this node (data parallel)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes over all nodes")
    parser.add_argument("--ip", default="localhost", help="address of the rank-0 node")
    parser.add_argument("--port", default="5678", help="port of the rank-0 node")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this node's first process")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    from recbole_llm.quick_start import run

    return run(
        model=args.model,
        dataset=args.dataset,
        config_file_list=split_files(args.config_files),
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
        argv=overrides,
        profile=args.profile,
    )


@exit_on_user_error
def hyper_main(argv: Optional[List[str]] = None) -> None:
    """Hyperparameter search with RecBole's HyperTuning (or Ray Tune) over any model."""
    parser = argparse.ArgumentParser(description="Tune a recbole-llm or RecBole model.", allow_abbrev=False,
                                     epilog="Any other --key=value is a fixed config override of every trial.")
    parser.add_argument("--model", "-m", required=True, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="fixed config files, space or comma separated")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help=_PROFILE_HELP)
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

    from recbole_llm.tuning import check_search, hyperopt_tune, ray_tune

    check_search(args.model, args.params_file, split_files(args.config_files))
    if args.tool == "ray":
        ray_tune(args, overrides)
    else:
        hyperopt_tune(args, overrides)


if __name__ == "__main__":
    main()
