"""Entry points mirroring RecBole's quick start, for plugin and built-in models alike."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from logging import getLogger
from typing import Any, Dict, List, Optional, Sequence

from recbole_llm import compat

compat.apply()

import torch  # noqa: E402
from recbole.data import data_preparation  # noqa: E402
from recbole.utils import get_environment, init_logger, init_seed, set_color  # noqa: E402

from recbole_llm import stages  # noqa: E402
from recbole_llm.config import Config  # noqa: E402
from recbole_llm.errors import MissingFileError, UserError  # noqa: E402
from recbole_llm.memory import fit_eval_batch_size  # noqa: E402
from recbole_llm.per_user import PerUserRecorder  # noqa: E402
from recbole_llm.registry import create_dataset, get_model, get_trainer  # noqa: E402
from recbole_llm.trainer.distributed import distributed_trainer  # noqa: E402
from recbole_llm.utils import unique_run_file  # noqa: E402


def check_topk(config: Config, dataset) -> None:
    """Refuse a ranking cut-off larger than the number of items, before any training."""
    n_items = dataset.item_num - 1  # RecBole counts the padding id 0
    largest = max(config["topk"])
    if n_items < largest:
        kept = [k for k in config["topk"] if k <= n_items] or [n_items]
        raise UserError(
            f"dataset {config['dataset']!r} has {n_items} items, fewer than the largest topk {largest}: "
            f"set topk to at most {n_items}, e.g. --topk=\"{kept}\""
        )


def build(config: Config):
    """Dataset, loaders and model for a ready config (seeded as RecBole seeds them)."""
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    dataset = create_dataset(config)
    logger.info(dataset)
    check_topk(config, dataset)
    fit_eval_batch_size(config, dataset.item_num)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    return dataset, (train_data, valid_data, test_data), model


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: equal fingerprints mean identical weights."""
    return state_fingerprint(model.state_dict())


def state_fingerprint(state_dict: Dict[str, torch.Tensor]) -> str:
    """:func:`model_fingerprint` of a state dict (a checkpoint's ``state_dict``, for instance)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _EpochTimer:
    """Wraps one trainer instance's ``_train_epoch`` to count epochs, their wall time and this
    process's CPU time in them (on a shared machine the wall time follows the other jobs' load)."""

    def __init__(self, trainer) -> None:
        self.epochs = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._train_epoch = trainer._train_epoch
        trainer._train_epoch = self

    def __call__(self, *args, **kwargs):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return self._train_epoch(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu_start
            self.epochs += 1


def _run_checkpoint_file(config: Config, folder: str) -> str:
    """This run's own checkpoint path. RecBole names it ``<model>-<date to the second>.pth``, so
    runs started together shared one; every rank of a data-parallel run takes rank 0's name."""
    name = [unique_run_file(folder, config["model"])]
    if not config["single_spec"]:
        torch.distributed.broadcast_object_list(name, src=0)
    return name[0]


def _train_and_test(config: Config, saved: bool, verbose: bool = True) -> Dict[str, Any]:
    start = time.perf_counter()
    with stages.collect_reports() as reports:
        _, (train_data, valid_data, test_data), model = build(config)
    setup_seconds = time.perf_counter() - start
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if not config["single_spec"]:
        trainer_class = distributed_trainer(trainer_class)
    trainer = trainer_class(config, model)
    trainer.saved_model_file = _run_checkpoint_file(config, trainer.checkpoint_dir)
    epoch_timer = _EpochTimer(trainer)
    per_user = PerUserRecorder(trainer)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=verbose, saved=saved, show_progress=config["show_progress"]
    )
    start = time.perf_counter()
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    test_seconds = time.perf_counter() - start
    test_per_user = per_user.ndcg(test_data._dataset, k=10)
    return {
        "model": config["model"],
        "model_fingerprint": model_fingerprint(model),
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": getattr(trainer, "saved_model_file", None) if saved else None,
        "preparation": {report["stage"]: report for report in reports},
        "timing": {
            "setup_seconds": round(setup_seconds, 3),
            "epochs": epoch_timer.epochs,
            "train_seconds_per_epoch": round(epoch_timer.seconds / max(epoch_timer.epochs, 1), 3),
            "train_cpu_seconds_per_epoch": round(epoch_timer.cpu_seconds / max(epoch_timer.epochs, 1), 3),
            "test_eval_seconds": round(test_seconds, 3),
        },
        "test_per_user": test_per_user,
    }


def _make_run_folders(config: Config) -> None:
    """RecBole creates ./log/<model> and the checkpoint folder check-then-create: runs started
    together in one working folder race on it (FileExistsError). Create them race-free first."""
    os.makedirs(os.path.join("log", str(config["model"])), exist_ok=True)
    os.makedirs(config["checkpoint_dir"], exist_ok=True)


def run_recbole_llm(
    model: Optional[str] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
    argv: Optional[Sequence[str]] = None,
    profile: str = "default",
) -> Dict[str, Any]:
    """Train and test one model (plugin or RecBole built-in) and return RecBole's result dict.

    ``argv`` holds ``--key=value`` overrides (above ``config_dict``, as on RecBole's command
    line); ``profile`` (``cpu`` or ``default``) fills the keys none of them sets with the sizes
    of :mod:`recbole_llm.profiles`.

    Keys: model, best_valid_score, valid_score_bigger, best_valid_result, test_result,
    saved_model_file (the best checkpoint when ``saved``), preparation (a plugin model's report
    on its own preparation stages, e.g. tokenizer collisions or SAID's stage 1; empty for others),
    model_fingerprint (a hash of the trained weights), test_per_user (``{"users", "ndcg@10"}``:
    each test user's token and NDCG@10, whose mean is the reported one; None under a protocol
    without full ranking and in a distributed run), timing (setup seconds incl. data and model
    preparation, epochs, train seconds per epoch, test-evaluation seconds). For data-parallel
    training over several processes use :func:`run`.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict,
                    argv=argv, profile=profile)
    init_seed(config["seed"], config["reproducibility"])
    _make_run_folders(config)
    init_logger(config)
    logger = getLogger()
    if argv:
        logger.info(f"overrides: {' '.join(argv)}")
    logger.info(config)
    result = _train_and_test(config, saved=saved)
    environment = get_environment(config)
    logger.info("The running environment of this training is as follows:\n" + environment.draw())
    logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    logger.info(run_summary(config, result))
    if not config["single_spec"]:
        torch.distributed.destroy_process_group()
    return result


def metrics_table(result: Dict[str, float]) -> str:
    """``{"recall@10": ..., "ndcg@50": ...}`` as a small text table: one row per metric, one
    column per cut-off."""
    cutoffs: List[str] = []
    rows: Dict[str, Dict[str, float]] = {}
    for key, value in result.items():
        metric, _, k = key.partition("@")
        if k and k not in cutoffs:
            cutoffs.append(k)
        rows.setdefault(metric, {})[k] = value
    width = max([len(metric) for metric in rows] + [6])
    lines = ["  ".join([" " * width] + [f"{'@' + k:>8}" for k in cutoffs])]
    for metric, values in rows.items():
        cells = [f"{values[k]:8.4f}" if k in values else " " * 8 for k in cutoffs]
        lines.append("  ".join([f"{metric:<{width}}"] + cells))
    return "\n".join(lines)


def run_summary(config: Config, result: Dict[str, Any]) -> str:
    """What a run ends with: the test metrics, the checkpoint and how to reload it."""
    timing = result["timing"]
    lines = [
        f"{config['model']} on {config['dataset']}: {timing['epochs']} epochs, "
        f"{timing['train_seconds_per_epoch']:.1f} s per epoch",
        "test result:",
        metrics_table(result["test_result"]),
    ]
    checkpoint = result.get("saved_model_file")
    if checkpoint and os.path.isfile(checkpoint):
        lines += [
            f"checkpoint: {checkpoint}",
            "reload it with:",
            f"    python -c \"from recbole_llm import load_data_and_model; "
            f"config, model, dataset, train, valid, test = load_data_and_model({checkpoint!r})\"",
        ]
    return "\n".join(lines)


def objective_function(
    config_dict: Optional[Dict[str, Any]] = None,
    config_file_list: Optional[List[str]] = None,
    saved: bool = True,
    argv: Optional[Sequence[str]] = None,
    profile: str = "default",
) -> Dict[str, Any]:
    """One tuning trial, with the signature RecBole's ``HyperTuning`` calls; ``argv`` and
    ``profile`` are the fixed overrides and size profile of every trial."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list, argv=argv, profile=profile)
    init_seed(config["seed"], config["reproducibility"])
    logging.basicConfig(level=logging.ERROR)
    return _train_and_test(config, saved=saved, verbose=False)


def load_data_and_model(model_file: str):
    """Rebuild config, model (with the saved weights), dataset and loaders from a checkpoint.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)`` as RecBole does.
    """
    if not os.path.isfile(model_file):
        raise MissingFileError(f"checkpoint {model_file!r} does not exist")
    # A checkpoint pickles RecBole's Config: loading it runs code, so it must come from a trusted source.
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    config["device"] = torch.device("cuda" if torch.cuda.is_available() and config["gpu_id"] else "cpu")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, (train_data, valid_data, test_data), model = build(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def _run_rank(rank: int, model, dataset, config_file_list, config_dict, saved, argv, profile, queue) -> None:
    result = run_recbole_llm(
        model=model,
        dataset=dataset,
        config_file_list=config_file_list,
        config_dict={**config_dict, "local_rank": rank},
        saved=saved,
        argv=argv,
        profile=profile,
    )
    queue.put((rank, result))


def run(
    model: Optional[str] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: str = "5678",
    group_offset: int = 0,
    argv: Optional[Sequence[str]] = None,
    profile: str = "default",
) -> Dict[str, Any]:
    """Train and test in one process, or data-parallel in ``nproc`` processes on this node.

    Several processes use torch.distributed (gloo on CPU, nccl on GPU); ``world_size``, ``ip``,
    ``port`` and ``group_offset`` (the global rank of this node's first process) span nodes.
    Returns rank 0's result dict, with ``rank_results`` holding every local rank's result.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"nproc must be a whole number of processes >= 1, got {nproc!r}: use --nproc=1 "
                        "for one process, --nproc=N for N processes on this node")
    if nproc == 1 and world_size <= 0:
        return run_recbole_llm(model, dataset, config_file_list, config_dict, saved, argv=argv, profile=profile)
    import torch.multiprocessing as mp

    # RecBole's init_logger creates ./log/<model> without exist_ok: create it before the ranks race.
    os.makedirs(os.path.join("log", str(model or (config_dict or {}).get("model"))), exist_ok=True)

    queue = mp.get_context("spawn").SimpleQueue()
    distributed = {
        "world_size": nproc if world_size == -1 else world_size,
        "ip": ip,
        "port": str(port),
        "nproc": nproc,
        "offset": group_offset,
    }
    mp.spawn(
        _run_rank,
        args=(model, dataset, config_file_list, {**(config_dict or {}), **distributed}, saved,
              list(argv or []), profile, queue),
        nprocs=nproc,
        join=True,
    )
    results = {}
    while not queue.empty():
        rank, result = queue.get()
        results[rank] = result
    return {**results[0], "rank_results": [results[r] for r in sorted(results)]}
