"""Command-line entry point of ``run_recbole_llm.py`` / ``recbole-llm`` (tuning: :mod:`recbole_llm.tuning`).

Arguments the parser does not know are RecBole ``--key=value`` config overrides; they are handed
to :class:`recbole_llm.config.Config` as its ``argv`` (``sys.argv`` is never read there). A user
error prints ``error: <message>`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from recbole_llm.profiles import PROFILE_HELP, PROFILES
from recbole_llm.utils import exit_on_user_error, split_files


@exit_on_user_error
def main(argv: Optional[List[str]] = None) -> dict:
    """Train and test one model; returns the run's result dict (see ``run_recbole_llm``)."""
    parser = argparse.ArgumentParser(description="Run a recbole-llm or RecBole model.", allow_abbrev=False,
                                     epilog="Any other --key=value is a RecBole config override.")
    parser.add_argument("--model", "-m", default="SASRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="config files, space or comma separated")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help=PROFILE_HELP)
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


if __name__ == "__main__":
    main()
