"""Fine-tuning schedule of the text-based transferable models (VQRec, UniSRec).

Without ``pretrained_file`` this is RecBole's :class:`~recbole.trainer.Trainer` unchanged. With it
(the model has loaded the pre-trained tensors), the sequence encoder stays frozen when
``freeze_encoder`` is set (the papers' ``fix_enc``). A model that learns a code permutation
(VQRec) trains only that permutation for the first ``permutation_epochs`` epochs, at
``permutation_lr``; then the permutation is written into the model and the model trains.

The model provides ``set_trainable(encoder: bool)`` and ``permutation_parameters()``, and, when
the latter is not empty, ``learn_permutation()``, ``fix_permutation()`` and the boolean buffer
``permutation_active``.
"""
from __future__ import annotations

from recbole.trainer import Trainer


class TransferTrainer(Trainer):
    """RecBole's Trainer plus the transfer schedule (frozen encoder, VQRec's code permutation)."""

    def __init__(self, config, model):
        self.permutation_epochs = 0
        self.freeze_encoder = bool(config["freeze_encoder"])
        if config["pretrained_file"]:  # the model has loaded it
            if model.permutation_parameters():
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
        elif self.permutation_epochs and bool(self.model.permutation_active):
            self.model.fix_permutation()
            self.model.set_trainable(encoder=not self.freeze_encoder)
            self.logger.info("code permutation fixed after epoch %d; training the model", epoch_idx - 1)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
