"""RecBole ``Config`` that knows the plugin's models and yaml files.

Order of precedence (later wins), as in RecBole: RecBole's own property files, then the plugin's
``properties/overall.yaml``, ``properties/model/<Model>.yaml``, ``properties/dataset/<dataset>.yaml``,
then the user's config files, config dict and ``--key=value`` command-line overrides.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import recbole
import torch
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_llm import registry


def properties_dir() -> Path:
    """The plugin's ``properties/`` folder: the source checkout's, else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "properties"
    if (checkout / "overall.yaml").is_file():
        return checkout
    return Path(str(resources.files("recbole_llm.properties")))


class Config(RecBoleConfig):
    """``recbole.config.Config`` resolving plugin model names and loading plugin yaml files."""

    def _load_config_files(self, file_list):
        for file in file_list or []:
            if not os.path.isfile(file):
                raise FileNotFoundError(f"config file {file!r} does not exist")
            try:
                with open(file, "r", encoding="utf-8") as f:
                    loaded = yaml.load(f.read(), Loader=self.yaml_loader)
            except yaml.YAMLError as err:
                raise ValueError(f"config file {file!r} is not valid YAML: {err}") from err
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(
                    f"config file {file!r} must hold a mapping of key: value, got {type(loaded).__name__}"
                )
        return super()._load_config_files(file_list)

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError(
                    "no model given: pass --model=<Name>, a config file or config dict with 'model'"
                )
        if isinstance(model, str):
            model = registry.get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        """RecBole's files, then along the model's class hierarchy: RecBole's yaml of each base
        model (e.g. SASRec.yaml for a SASRec subclass), the plugin's overall.yaml, the plugin's
        yaml of each base class and of the model, and the plugin's dataset yaml. A subclass's
        yaml therefore holds only what differs from its base."""
        super()._load_internal_config_dict(model, model_class, dataset)
        bases = [cls.__name__ for cls in reversed(model_class.__mro__[1:])
                 if isinstance(cls, type) and issubclass(cls, AbstractRecommender)]
        recbole_models = Path(recbole.__file__).resolve().parent / "properties" / "model"
        props = properties_dir()
        files = [recbole_models / f"{name}.yaml" for name in bases]
        files.append(props / "overall.yaml")
        files += [props / "model" / f"{name}.yaml" for name in bases + [model]]
        for file in files:
            if file.is_file():
                self._update_internal_config_dict(str(file))
        dataset_file = props / "dataset" / f"{dataset}.yaml"
        if dataset_file.is_file():
            loaded = self._update_internal_config_dict(str(dataset_file))
            if loaded:
                self.parameters["Dataset"] += [key for key in loaded if key not in self.parameters["Dataset"]]

    def _init_device(self):
        """RecBole hard-codes the nccl backend; on a CPU-only run use gloo instead."""
        distributed = "local_rank" in self.final_config_dict
        use_cuda = torch.cuda.is_available() and len(str(self.final_config_dict["gpu_id"])) > 0
        if not distributed or use_cuda:
            super()._init_device()
            return
        cfg = self.final_config_dict
        cfg["gpu_id"] = str(cfg["gpu_id"])
        torch.distributed.init_process_group(
            backend="gloo",
            rank=cfg["local_rank"] + cfg["offset"],
            world_size=cfg["world_size"],
            init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
        )
        cfg["device"] = torch.device("cpu")
        cfg["single_spec"] = False
        if cfg["local_rank"] != 0:
            cfg["state"] = "error"
            cfg["show_progress"] = False
            cfg["verbose"] = False
