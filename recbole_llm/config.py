"""RecBole ``Config`` that knows the plugin's models and yaml files.

Order of precedence (later wins), as in RecBole: RecBole's own property files, then the plugin's
``properties/overall.yaml``, ``properties/model/<Model>.yaml``, ``properties/dataset/<dataset>.yaml``,
then the user's config files, config dict and the ``--key=value`` overrides in ``argv``.

Unlike RecBole's, this Config never reads ``sys.argv``: command-line overrides arrive only through
its ``argv`` argument (none by default), so calling it from Python, a test or a tuning trial has no
hidden input.
"""
from __future__ import annotations

import difflib
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from recbole_llm import compat

compat.apply()

import recbole  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from recbole.config import Config as RecBoleConfig  # noqa: E402
from recbole.model.abstract_recommender import AbstractRecommender  # noqa: E402

from recbole_llm import registry  # noqa: E402
from recbole_llm.errors import MissingFileError, UserError  # noqa: E402
from recbole_llm.profiles import profile_overrides  # noqa: E402

# Keys RecBole or this plugin set at run time rather than in a yaml file.
_RUNTIME_KEYS = {"model", "dataset", "local_rank", "world_size", "nproc", "ip", "port", "offset",
                 "config_files", "single_spec", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type",
                 "valid_metric_bigger", "data_path", "benchmark_filename"}


def properties_dir() -> Path:
    """The plugin's ``properties/`` folder: the source checkout's, else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "properties"
    if (checkout / "overall.yaml").is_file():
        return checkout
    return Path(str(resources.files("recbole_llm.properties")))


class Config(RecBoleConfig):
    """``recbole.config.Config`` resolving plugin model names and loading plugin yaml files.

    ``argv`` holds ``--key=value`` overrides (the highest precedence, as RecBole's command line);
    ``sys.argv`` is never read. ``profile`` names a size profile of :mod:`recbole_llm.profiles`
    (``cpu``, ``default``): its values fill only the keys that no config file, config dict or
    ``argv`` entry sets, and sit above the model's and dataset's yaml.
    """

    def __init__(
        self,
        model: Any = None,
        dataset: Optional[str] = None,
        config_file_list: Optional[List[str]] = None,
        config_dict: Optional[Dict[str, Any]] = None,
        argv: Optional[Sequence[str]] = None,
        profile: str = "default",
    ) -> None:
        self._argv = list(argv or [])
        self.profile = profile
        self._profile_keys: List[str] = []
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
        self._check_user_keys_and_values()

    def _load_cmd_line(self) -> Dict[str, Any]:
        """The ``--key=value`` overrides of ``argv`` (RecBole's parsing, without ``sys.argv``)."""
        overrides: Dict[str, str] = {}
        for arg in self._argv:
            key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
            if not key or not sep:
                raise UserError(f"argument {arg!r} is not of the form --key=value")
            if key in overrides and overrides[key] != value:
                raise UserError(f"--{key} is given twice with different values ({overrides[key]!r}, {value!r})")
            overrides[key] = value
        return self._convert_config_dict(overrides)

    def _check_user_keys_and_values(self) -> None:
        """Warn on a key that looks like a misspelled known key; refuse values of the wrong kind."""
        known = set(self.internal_config_dict) | _RUNTIME_KEYS
        for keys in self.parameters.values():
            known.update(keys)
        logger = logging.getLogger(__name__)
        for key, value in self.external_config_dict.items():
            if key in self._profile_keys:
                continue
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
                if close:
                    logger.warning(f"unknown config key {key!r}: did you mean {close[0]!r}? It is not used.")
                continue
            default = self.internal_config_dict.get(key)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise UserError(f"config key {key!r}: expected True or False, got {value!r}")
            if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
                raise UserError(f"config key {key!r}: expected a number (default {default!r}), got {value!r}")
        nproc = self.final_config_dict.get("nproc")
        if nproc is not None and (not isinstance(nproc, int) or nproc < 1):
            raise UserError(f"nproc must be a whole number of processes >= 1, got {nproc!r}: use --nproc=1 "
                            "for one process")

    def _load_config_files(self, file_list):
        for file in file_list or []:
            if not os.path.isfile(file):
                raise MissingFileError(f"config file {file!r} does not exist")
            try:
                with open(file, "r", encoding="utf-8") as f:
                    loaded = yaml.load(f.read(), Loader=self.yaml_loader)
            except yaml.YAMLError as err:
                raise UserError(f"config file {file!r} is not valid YAML: {err}") from err
            if loaded is not None and not isinstance(loaded, dict):
                raise UserError(
                    f"config file {file!r} must hold a mapping of key: value, got {type(loaded).__name__}"
                )
        return super()._load_config_files(file_list)

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise UserError(
                    "no model given: pass --model=<Name>, a config file or config dict with 'model'"
                )
        if isinstance(model, str):
            model = registry.get_model(model)
        final_model, model_class, final_dataset = super()._get_model_and_dataset(model, dataset)
        for key, value in profile_overrides(self.profile, final_model, final_dataset).items():
            if key not in self.external_config_dict:
                self.external_config_dict[key] = value
                self._profile_keys.append(key)
        return final_model, model_class, final_dataset

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
