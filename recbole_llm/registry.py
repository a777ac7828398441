"""Name resolution for models, trainers and datasets: plugin first, then RecBole.

A plugin model lives in ``recbole_llm/model/<name lower-cased>.py`` and defines a class of that
name (``vqrec.py`` -> ``VQRec``). It may declare two class attributes:

``dataset_class``
    the :class:`recbole.data.dataset.Dataset` subclass it needs (default: RecBole's choice);
``trainer_class``
    the :class:`recbole.trainer.Trainer` subclass it needs (default: RecBole's choice).

Nothing is imported from ``recbole.quick_start`` (it imports ray at module import).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from typing import Dict, List, Type

from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

import recbole_llm.model as plugin_model_package

_RECBOLE_MODEL_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def _plugin_model_modules() -> Dict[str, str]:
    """{model name lower-cased: module path} of every plugin model file."""
    return {  # keyed without underscores: transrec_llm.py holds TransRecLLM
        info.name.replace("_", ""): f"{plugin_model_package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(plugin_model_package.__path__)
        if not info.name.startswith("_")
    }


def _recbole_model_modules() -> Dict[str, str]:
    modules = {}
    for submodule in _RECBOLE_MODEL_SUBMODULES:
        package = f"recbole.model.{submodule}"
        spec = importlib.util.find_spec(package)  # does not run the package's __init__
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            modules.setdefault(info.name, f"{package}.{info.name}")
    return modules


def _class_in_module(module_path: str, name: str) -> type:
    module = importlib.import_module(module_path)
    for attribute, value in vars(module).items():
        if isinstance(value, type) and attribute.lower() == name.lower() and value.__module__ == module.__name__:
            return value
    raise ValueError(f"module {module_path} defines no model class named {name!r}")


def available_models() -> Dict[str, List[str]]:
    """Names of the plugin's models and of RecBole's (module names, as RecBole spells files)."""
    plugin = []
    for name, path in sorted(_plugin_model_modules().items()):
        try:
            plugin.append(_class_in_module(path, name).__name__)
        except (ImportError, ValueError):
            plugin.append(name)
    recbole_names = sorted(_recbole_model_modules())
    return {"recbole_llm": plugin, "recbole": recbole_names}


def get_model(model_name: str) -> type:
    """The model class called ``model_name`` (case-insensitive): plugin first, then RecBole."""
    key = model_name.lower()
    plugin = _plugin_model_modules()
    if key in plugin:
        return _class_in_module(plugin[key], model_name)
    recbole_modules = _recbole_model_modules()
    if key in recbole_modules:
        try:
            return _class_in_module(recbole_modules[key], model_name)
        except ImportError as err:  # exlib models (lightgbm, xgboost) need optional packages
            raise ValueError(f"model {model_name!r} needs an optional package: {err}") from err
    names = available_models()
    raise ValueError(
        f"unknown model {model_name!r}. Plugin models: {', '.join(names['recbole_llm'])}. "
        f"RecBole models: {', '.join(names['recbole'])}."
    )


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """The trainer class for ``model_name``: the model's ``trainer_class``, else RecBole's."""
    model_class = get_model(model_name)
    trainer_class = getattr(model_class, "trainer_class", None)
    if trainer_class is not None:
        return trainer_class
    return recbole_get_trainer(model_type, model_class.__name__)


def _check_dataset_files(config) -> None:
    data_path = config["data_path"]
    if config["dataset"] == "ml-100k" or os.path.isdir(data_path):
        return
    raise FileNotFoundError(
        f"dataset folder {data_path!r} for dataset {config['dataset']!r} does not exist. "
        f"Set data_path (now {os.path.dirname(data_path)!r}) or convert the raw data first: "
        "python -m recbole_llm.convert <format> --input ... --output dataset/<name>"
    )


def create_dataset(config):
    """Build the dataset the model needs: its ``dataset_class``, else RecBole's choice."""
    _check_dataset_files(config)
    model_class = get_model(config["model"])
    dataset_class = getattr(model_class, "dataset_class", None)
    if dataset_class is None:
        return recbole_create_dataset(config)
    dataset = dataset_class(config)
    if config["save_dataset"]:
        dataset.save()
    return dataset
