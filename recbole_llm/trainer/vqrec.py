"""VQ-Rec fine-tuning schedule on top of RecBole's :class:`~recbole.trainer.Trainer`.

Without ``pretrained_file`` this is RecBole's Trainer unchanged. With it (the model has loaded the
pre-trained code embeddings and sequence encoder), for the first ``permutation_epochs`` epochs only
the code permutation learns (at ``permutation_lr``); after that the permutation is written into
the code-embedding table and the model trains, with the sequence encoder frozen when
``freeze_encoder`` is set.
"""
from __future__ import annotations

from recbole.trainer import Trainer


class VQRecTrainer(Trainer):
    """RecBole's Trainer plus the fine-tuning schedule of VQ-Rec (permutation, frozen encoder)."""

    def __init__(self, config, model):
        self.permutation_epochs = 0
        self.freeze_encoder = bool(config["freeze_encoder"])
        if config["pretrained_file"]:  # the model has loaded it
            self.permutation_epochs = int(config["permutation_epochs"] or 0)
            model.set_trainable(encoder=not self.freeze_encoder)
        super().__init__(config, model)

    def _build_optimizer(self, **kwargs):
        """One parameter group per learning rate: the code permutation has its own."""
        permutation = self.model.permutation_parameters()
        if "params" not in kwargs and permutation:
            others = [p for name, p in self.model.named_parameters() if not name.startswith("permutation.")]
            kwargs["params"] = [
                {"params": others},
                {"params": permutation, "lr": self.config["permutation_lr"]},
            ]
        return super()._build_optimizer(**kwargs)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if epoch_idx < self.permutation_epochs:
            self.model.learn_permutation()
        elif bool(self.model.permutation_active):
            self.model.fix_permutation()
            self.model.set_trainable(encoder=not self.freeze_encoder)
            self.logger.info("code permutation fixed after epoch %d; training the model", epoch_idx - 1)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
