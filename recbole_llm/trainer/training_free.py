"""A Trainer for models without trainable parameters (scored from fixed embeddings).

``fit`` trains nothing: it saves the model's checkpoint (so the best-model reload of the test
evaluation works) and evaluates once on the validation data, which becomes the best validation
result. Evaluation is RecBole's, unchanged.
"""
from __future__ import annotations

from typing import Any, Dict

from recbole.trainer import Trainer


class _NoOptimizer:
    """Stands in for the optimizer of a model with no parameters; its checkpoint state is empty."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError("a training-free model's checkpoint holds no optimizer state")


class TrainingFreeTrainer(Trainer):
    """RecBole's Trainer for a model that has nothing to learn: zero epochs, one validation."""

    def __init__(self, config, model):
        if not config["single_spec"]:
            raise ValueError(f"{type(model).__name__} is training-free: there is nothing to train in parallel; "
                             "evaluate it in one process (nproc=1)")
        super().__init__(config, model)

    def _build_optimizer(self, **kwargs):
        if any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(f"{type(self.model).__name__} has trainable parameters: use RecBole's Trainer")
        return _NoOptimizer()

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.epochs:
            self.logger.info("%s is training-free: epochs=%d ignored", type(self.model).__name__, self.epochs)
        if saved:
            self._save_checkpoint(-1, verbose=verbose)
        if valid_data is None:
            return -1, None
        self.best_valid_score, self.best_valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
        return self.best_valid_score, self.best_valid_result
