"""Per-user test metrics, read from RecBole's own evaluation pass (for paired significance tests).

:class:`PerUserRecorder` wraps one trainer's collector and evaluator: it records the user of every
evaluated row and the collected ``rec.topk`` matrix of the last evaluation, and scores it with
RecBole's own metric class, so the mean of the per-user values equals the reported metric.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch


class PerUserRecorder:
    """Records per-user NDCG@k of a trainer's most recent full-ranking evaluation."""

    def __init__(self, trainer) -> None:
        self._config = trainer.config
        self._users: List[torch.Tensor] = []
        self._topk: Optional[torch.Tensor] = None
        self._last_users: Optional[torch.Tensor] = None
        self._uid_field = trainer.config["USER_ID_FIELD"]
        collect, evaluate = trainer.eval_collector.eval_batch_collect, trainer.evaluator.evaluate

        def eval_batch_collect(scores, interaction, positive_u, positive_i):
            self._users.append(interaction[self._uid_field].detach().cpu())
            return collect(scores, interaction, positive_u, positive_i)

        def evaluator_evaluate(struct):
            self._topk = struct.get("rec.topk") if "rec.topk" in struct else None
            users, self._users = self._users, []
            self._last_users = torch.cat(users) if users else None
            return evaluate(struct)

        trainer.eval_collector.eval_batch_collect = eval_batch_collect
        trainer.evaluator.evaluate = evaluator_evaluate

    def ndcg(self, dataset, k: int = 10) -> Optional[Dict[str, Any]]:
        """``{"users": external user tokens, "ndcg@k": per-user values}`` of the last evaluation.

        None when that evaluation collected no ``rec.topk`` (a sampled or non-ranking protocol,
        or a trainer that evaluates without RecBole's collector) or when ``k`` is not a cut-off.
        """
        from recbole.evaluator.metrics import NDCG

        if self._topk is None or self._last_users is None or k not in self._config["topk"]:
            return None
        if len(self._last_users) != len(self._topk):
            raise RuntimeError(f"recorded {len(self._last_users)} users for {len(self._topk)} ranked rows")
        metric = NDCG(self._config)
        pos_index, pos_len = metric.used_info({"rec.topk": self._topk})
        values = metric.metric_info(pos_index, pos_len)[:, k - 1]
        tokens = dataset.id2token(self._uid_field, self._last_users.numpy())
        return {"users": np.asarray(tokens).astype(str), f"ndcg@{k}": np.asarray(values, dtype=np.float64)}
