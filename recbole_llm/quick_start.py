"""Entry points mirroring RecBole's quick start, for plugin and built-in models alike."""
from __future__ import annotations

import logging
import sys
from logging import getLogger
from typing import Any, Dict, List, Optional

import torch
from recbole.data import data_preparation
from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_llm.config import Config
from recbole_llm.registry import create_dataset, get_model, get_trainer


def _build(config: Config):
    """Dataset, loaders and model for a ready config (seeded as RecBole seeds them)."""
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    return dataset, (train_data, valid_data, test_data), model


def _train_and_test(config: Config, saved: bool, verbose: bool = True) -> Dict[str, Any]:
    _, (train_data, valid_data, test_data), model = _build(config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=verbose, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": getattr(trainer, "saved_model_file", None) if saved else None,
    }


def run_recbole_llm(
    model: Optional[str] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
) -> Dict[str, Any]:
    """Train and test one model (plugin or RecBole built-in) and return RecBole's result dict.

    Keys: model, best_valid_score, valid_score_bigger, best_valid_result, test_result,
    saved_model_file (the best checkpoint when ``saved``).
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    result = _train_and_test(config, saved=saved)
    environment = get_environment(config)
    logger.info("The running environment of this training is as follows:\n" + environment.draw())
    logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    if not config["single_spec"]:
        torch.distributed.destroy_process_group()
    return result


def objective_function(
    config_dict: Optional[Dict[str, Any]] = None,
    config_file_list: Optional[List[str]] = None,
    saved: bool = True,
) -> Dict[str, Any]:
    """One tuning trial, with the signature RecBole's ``HyperTuning`` calls."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    logging.basicConfig(level=logging.ERROR)
    return _train_and_test(config, saved=saved, verbose=False)


def load_data_and_model(model_file: str):
    """Rebuild config, model (with the saved weights), dataset and loaders from a checkpoint.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)`` as RecBole does.
    """
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    config["device"] = torch.device("cuda" if torch.cuda.is_available() and config["gpu_id"] else "cpu")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, (train_data, valid_data, test_data), model = _build(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
