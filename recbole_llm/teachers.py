"""Teacher models the pipeline trains before a plugin model: a RecBole SASRec on the same data.

LETTER's collaborative regularizer reads the SASRec item table; LLM-SRec distils the whole
SASRec (CF-SRec). The teacher is a cached stage (:mod:`recbole_llm.stages`) whose key covers
every input of its training: the interactions, the item tokens, the user's config overrides
(learning rate, layers, history length, ...), the teacher settings and the seed, so changing
any of them trains a new teacher. This module runs RecBole's own trainer, so it belongs to the
runner side: algorithms receive the arrays it returns.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from recbole_llm import stages
from recbole_llm.utils import cache_dir

logger = logging.getLogger(__name__)

# keys of the plugin model's config that must not reach the teacher's SASRec config: the model's
# own sizes, and the process-group settings (the teacher trains in rank 0's process alone)
_EXCLUDED_KEYS = ("model", "epochs", "hidden_size", "inner_size", "saved", "train_neg_sample_args", "loss_type",
                  "local_rank", "world_size", "ip", "port", "nproc", "offset")


def _interaction_digest(dataset) -> str:
    columns = [dataset.uid_field, dataset.iid_field]
    if dataset.time_field and dataset.time_field in dataset.inter_feat:
        columns.append(dataset.time_field)
    return stages.digest(*[dataset.inter_feat[column] for column in columns])


def sasrec_teacher_state(config, dataset, epochs: int, hidden_size: int) -> Dict[str, Any]:
    """A RecBole SASRec trained on ``dataset``'s data: ``{"state_dict", "item_tokens", "settings"}``.

    Trained once per set of inputs, then read from ``cache_dir(config, "teachers")``.
    ``settings`` are the overrides the teacher was built with (to rebuild it, see
    :func:`sasrec_teacher`).
    """
    overrides = {key: value for key, value in config.external_config_dict.items() if key not in _EXCLUDED_KEYS}
    overrides.update(epochs=int(epochs), hidden_size=int(hidden_size), inner_size=4 * int(hidden_size), saved=False)
    item_tokens = [str(token) for token in dataset.field2id_token[dataset.iid_field]]
    stage = stages.Stage("sasrec_teacher", cache_dir(config, "teachers"), {
        "dataset": config["dataset"],
        "interactions": _interaction_digest(dataset),
        "item_tokens": item_tokens,
        "overrides": overrides,
        "seed": config["seed"],
    })

    def compute():
        state_dict, tokens, valid_score = _train_sasrec(config["dataset"], overrides)
        return {"state_dict": state_dict, "item_tokens": tokens}, {
            "epochs": int(epochs), "hidden_size": int(hidden_size), "best_valid_score": valid_score}

    state = stage.run(compute, kind="torch")
    return {**state, "settings": overrides}


def _train_sasrec(dataset_name: str, overrides: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], List[str], float]:
    from recbole.data import data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer

    from recbole_llm.config import Config
    from recbole_llm.registry import create_dataset

    logger.info("training the SASRec teacher: epochs %s, hidden size %s", overrides["epochs"], overrides["hidden_size"])
    teacher_config = Config(model="SASRec", dataset=dataset_name, config_dict=overrides)
    teacher_dataset = create_dataset(teacher_config)
    train_data, valid_data, _ = data_preparation(teacher_config, teacher_dataset)
    model = SASRec(teacher_config, train_data._dataset).to(teacher_config["device"])
    valid_score, _ = Trainer(teacher_config, model).fit(
        train_data, valid_data, verbose=False, saved=False, show_progress=False)
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    tokens = [str(token) for token in teacher_dataset.field2id_token[teacher_dataset.iid_field]]
    return state_dict, tokens, float(valid_score)


def aligned_rows(table: np.ndarray, source_tokens: List[str], tokens: List[str], source: str) -> np.ndarray:
    """Rows of ``table`` (indexed like ``source_tokens``) in the order of ``tokens``."""
    index = {token: row for row, token in enumerate(source_tokens)}
    missing = [token for token in tokens if token not in index]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} items of this dataset, e.g. {missing[:3]}")
    return table[[index[token] for token in tokens]].astype(np.float32)


def collaborative_embeddings(config, dataset) -> np.ndarray:
    """CF item embeddings [item_num - 1, d] aligned with ``dataset``'s items 1..item_num-1.

    From ``cf_checkpoint`` when set (a RecBole SASRec checkpoint or a ``.npy`` table), else the
    item table of the SASRec teacher (``cf_epochs``, ``cf_hidden_size``).
    """
    tokens = [str(token) for token in dataset.field2id_token[dataset.iid_field][1:]]
    if config["cf_checkpoint"]:
        return _load_cf_table(Path(config["cf_checkpoint"]), tokens)
    state = sasrec_teacher_state(config, dataset, config["cf_epochs"], config["cf_hidden_size"])
    table = state["state_dict"]["item_embedding.weight"].float().numpy()
    return aligned_rows(table, state["item_tokens"], tokens, source="the SASRec teacher")


def _load_cf_table(path: Path, tokens: List[str]) -> np.ndarray:
    """Rows for ``tokens`` from a ``.npy`` table (rows 1.. = items in our order) or a checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"cf_checkpoint {str(path)!r} does not exist (a RecBole checkpoint or a .npy table)")
    if path.suffix == ".npy":
        table = np.load(path, allow_pickle=False)
        if table.ndim != 2 or table.shape[0] != len(tokens) + 1:
            raise ValueError(
                f"cf_checkpoint {str(path)!r} has shape {table.shape}; expected {len(tokens) + 1} rows "
                "(padding row + one per item, in the dataset's internal id order)"
            )
        return table[1:].astype(np.float32)
    # a RecBole checkpoint pickles its Config: it is code and must come from a trusted source
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", {})
    if "item_embedding.weight" not in state:
        raise ValueError(f"cf_checkpoint {str(path)!r} holds no 'item_embedding.weight' (expected a SASRec checkpoint)")
    from recbole_llm.registry import create_dataset

    cf_config = checkpoint["config"]
    cf_tokens = [str(token) for token in create_dataset(cf_config).field2id_token[cf_config["ITEM_ID_FIELD"]]]
    return aligned_rows(state["item_embedding.weight"].float().numpy(), cf_tokens, tokens,
                        source=f"cf_checkpoint {str(path)!r}")


def sasrec_teacher(config, dataset, epochs: int, hidden_size: int):
    """The frozen SASRec teacher (eval mode, no gradients) and its item tokens (row order)."""
    from recbole.model.sequential_recommender import SASRec

    from recbole_llm.config import Config

    state = sasrec_teacher_state(config, dataset, epochs, hidden_size)
    teacher_config = Config(model="SASRec", dataset=config["dataset"], config_dict=state["settings"])
    model = SASRec(teacher_config, dataset)
    model.load_state_dict(state["state_dict"])
    model.eval().requires_grad_(False)
    return model, state["item_tokens"]
