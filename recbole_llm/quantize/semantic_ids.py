"""Semantic ids for a RecBole dataset: train (or resume, or reload) an RQ-VAE, then de-duplicate.

The ``semantic_ids`` stage (:mod:`recbole_llm.stages`) takes the item text embeddings and,
for LETTER, collaborative embeddings (computed by the caller, see :mod:`recbole_llm.teachers`):

1. the RQ-VAE, trained on the standardized text embeddings with a checkpoint every
   ``rqvae_save_step`` epochs, from which an interrupted run resumes;
2. the codes: ``rqvae_levels`` levels (the last one Sinkhorn-balanced), then one extra
   de-duplication level numbering the items that share the same codes, so that every item's id
   is unique. The collision rate before de-duplication is the stage's report.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from recbole_llm.quantize.kmeans import balanced_kmeans
from recbole_llm.quantize.rqvae import RQVAE, RQVAEConfig
from recbole_llm.stages import Checkpoint, Stage

logger = logging.getLogger(__name__)


@dataclass
class TokenizerTraining:
    """Optimisation settings of the RQ-VAE (config keys ``rqvae_*``; defaults in TIGER.yaml)."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    div_clusters: int
    save_step: int
    log_step: int
    seed: int
    show_progress: bool = False


def rqvae_settings(config, input_dim: int, cf_dim: int = 0) -> Tuple[RQVAEConfig, TokenizerTraining]:
    """The RQ-VAE architecture and training settings held by a RecBole ``config``."""
    architecture = RQVAEConfig(
        input_dim=input_dim,
        hidden_sizes=list(config["rqvae_hidden_sizes"]),
        code_dim=config["rqvae_code_dim"],
        n_levels=config["rqvae_levels"],
        codebook_size=config["rqvae_codebook_size"],
        dropout=config["rqvae_dropout"],
        commitment_weight=config["rqvae_commitment_weight"],
        sinkhorn_epsilon=config["rqvae_sinkhorn_epsilon"],
        sinkhorn_iters=config["rqvae_sinkhorn_iters"],
        cf_dim=cf_dim,
        cf_weight=config["rqvae_cf_weight"],
        div_weight=config["rqvae_div_weight"],
    )
    training = TokenizerTraining(
        epochs=config["rqvae_epochs"],
        batch_size=config["rqvae_batch_size"],
        learning_rate=config["rqvae_learning_rate"],
        weight_decay=config["rqvae_weight_decay"],
        div_clusters=config["rqvae_div_clusters"],
        save_step=config["rqvae_save_step"],
        log_step=config["rqvae_log_step"],
        seed=config["seed"],
        show_progress=bool(config["show_progress"]),
    )
    if architecture.n_levels < 1 or architecture.codebook_size < 2:
        raise ValueError(
            f"rqvae_levels must be >= 1 and rqvae_codebook_size >= 2, got "
            f"{architecture.n_levels} and {architecture.codebook_size}"
        )
    return architecture, training


def deduplicate(codes: np.ndarray) -> Tuple[np.ndarray, Dict[str, float]]:
    """Append a level numbering the items that share a code: unique ids [N, L+1] and a report.

    Items keep their order of appearance inside a group (the first one gets 0).
    """
    _, group, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    starts = np.cumsum(counts) - counts
    suffix = np.empty(len(codes), dtype=np.int64)
    suffix[order] = np.arange(len(codes)) - starts[group[order]]
    report = {
        "n_items": int(len(codes)),
        "unique_codes_before_dedup": int(len(counts)),
        "collision_rate_before_dedup": float(1.0 - len(counts) / max(len(codes), 1)),
        "items_in_collisions": int(counts[counts > 1].sum()),
        "largest_collision_group": int(counts.max()) if len(counts) else 0,
        "dedup_codebook_size": int(counts.max()) if len(counts) else 1,
    }
    return np.concatenate([codes, suffix[:, None]], axis=1), report


class TokenizerTrainer:
    """Trains one RQ-VAE with periodic checkpoints, resuming from the last one."""

    def __init__(self, architecture: RQVAEConfig, training: TokenizerTraining,
                 checkpoint: Optional[Checkpoint] = None, device: torch.device | str = "cpu"):
        self.training = training
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        torch.manual_seed(training.seed)
        self.model = RQVAE(architecture).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
        )
        self.generator = torch.Generator().manual_seed(training.seed)
        self.start_epoch = 0

    def fit(self, embeddings: torch.Tensor, cf_embeddings: Optional[torch.Tensor] = None) -> RQVAE:
        """Train on ``embeddings`` [N, input_dim] (rows aligned with ``cf_embeddings``)."""
        embeddings = embeddings.to(self.device)
        cf_embeddings = None if cf_embeddings is None else cf_embeddings.to(self.device)
        if not self._resume():
            self.model.init_codebooks(embeddings, self.generator)
        epochs = range(self.start_epoch, self.training.epochs)
        for epoch in self._progress(epochs):
            terms = self._train_epoch(embeddings, cf_embeddings)
            done = epoch + 1
            if done < self.training.epochs:
                self.model.eval()
                with torch.no_grad():
                    terms["restarted_codes"] = float(
                        self.model.quantizer.restart_dead_codes(self.model.encoder(embeddings), self.generator))
            if done % self.training.log_step == 0 or done == self.training.epochs:
                collision = deduplicate(self.model.codes(embeddings).cpu().numpy())[1]
                logger.info(
                    "rqvae epoch %d/%d %s collision_rate %.4f", done, self.training.epochs,
                    " ".join(f"{name} {value:.4f}" for name, value in terms.items()),
                    collision["collision_rate_before_dedup"],
                )
            if done % self.training.save_step == 0 or done == self.training.epochs:
                self._save(done)
        self.model.eval()
        return self.model

    def _progress(self, epochs: range):
        if not self.training.show_progress or len(epochs) == 0:
            return epochs
        from tqdm import tqdm

        return tqdm(epochs, desc="RQ-VAE", file=sys.stderr)

    def _train_epoch(self, embeddings: torch.Tensor, cf_embeddings: Optional[torch.Tensor]) -> Dict[str, float]:
        self.model.train()
        clusters = self._code_clusters()
        permutation = torch.randperm(embeddings.shape[0], generator=self.generator).to(self.device)
        sums: Dict[str, float] = {}
        batches = permutation.split(self.training.batch_size)
        for batch in batches:
            terms = self.model.losses(
                embeddings[batch],
                None if cf_embeddings is None else cf_embeddings[batch],
                clusters,
                self.generator,
            )
            self.optimizer.zero_grad()
            terms["total"].backward()
            self.optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        return {name: value / len(batches) for name, value in sums.items()}

    def _code_clusters(self) -> Optional[List[torch.Tensor]]:
        """Balanced k-means labels of each level's codes (only when the diversity term is on)."""
        if self.model.config.div_weight <= 0:
            return None
        return [
            balanced_kmeans(codebook, self.training.div_clusters, generator=self.generator).to(self.device)
            for codebook in self.model.quantizer.codebooks
        ]

    def _resume(self) -> bool:
        state = None if self.checkpoint is None else self.checkpoint.load()
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.start_epoch = int(state["epoch"])
        logger.info("rqvae resumed at epoch %d", self.start_epoch)
        return True

    def _save(self, epoch: int) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.save({
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        })


def item_semantic_ids(text_emb: torch.Tensor, cf_emb: Optional[np.ndarray], config,
                      cache_folder: Path) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Unique semantic ids [item_num, L+1] of every internal item id (row 0, padding: -1).

    ``text_emb`` [item_num, d] holds the item text embeddings (row 0: padding, skipped);
    ``cf_emb`` [item_num - 1, d_cf] the collaborative embeddings of items 1.. (LETTER) or None.
    Returns the ids and the report (collision rate before de-duplication and sizes).
    """
    text_emb = standardized(text_emb[1:].float())
    architecture, training = rqvae_settings(config, text_emb.shape[1], 0 if cf_emb is None else cf_emb.shape[1])
    stage = Stage("semantic_ids", cache_folder, {
        "text_emb": text_emb,
        "cf_emb": cf_emb,
        "architecture": asdict(architecture),
        "training": {name: value for name, value in asdict(training).items() if name not in ("show_progress", "log_step")},
    })

    def compute():
        trainer = TokenizerTrainer(architecture, training, stage.checkpoint, config["device"])
        model = trainer.fit(text_emb, None if cf_emb is None else torch.from_numpy(cf_emb))
        ids, report = deduplicate(model.codes(text_emb.to(trainer.device)).cpu().numpy())
        logger.info("semantic ids: %s", report)
        return ids, report

    ids = stage.run(compute)
    report = {key: value for key, value in stage.report.items() if key not in ("stage", "path")}
    return _with_padding_row(ids), report


def standardized(embeddings: torch.Tensor) -> torch.Tensor:
    """Per-dimension z-scores over the items: sentence encoders give unit-norm vectors whose
    coordinates are ~0.05, too small a reconstruction target for the RQ-VAE."""
    return (embeddings - embeddings.mean(dim=0)) / embeddings.std(dim=0).clamp_min(1e-8)


def _with_padding_row(ids: np.ndarray) -> torch.Tensor:
    table = torch.full((ids.shape[0] + 1, ids.shape[1]), -1, dtype=torch.long)
    table[1:] = torch.from_numpy(ids)
    return table
