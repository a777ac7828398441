"""Semantic ids for a RecBole dataset: train (or resume, or reload) an RQ-VAE, then de-duplicate.

The ``semantic_ids`` stage (:mod:`recbole_llm.stages`) takes the item text embeddings and,
for LETTER, collaborative embeddings (computed by the caller, see :mod:`recbole_llm.teachers`):

1. the RQ-VAE, trained on the standardized text embeddings with a checkpoint every
   ``rqvae_save_step`` epochs, from which an interrupted run resumes;
2. the codes: ``rqvae_levels`` levels (the last one Sinkhorn-balanced), then one extra
   de-duplication level numbering the items that share the same codes, so that every item's id
   is unique. The collision rate before de-duplication is the stage's report.

:func:`external_semantic_ids` instead reads a released LC-Rec/LETTER index (``{"<item>":
["<a_12>", "<b_7>", ...]}``) through the dataset's item tokens (the ``external_semantic_ids``
stage) and de-duplicates it the same way.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recbole_llm.quantize.kmeans import balanced_kmeans
from recbole_llm.quantize.rqvae import RQVAE, RQVAEConfig
from recbole_llm.stages import Checkpoint, Stage, path_input

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


CODE_TOKEN = re.compile(r"^<([A-Za-z]+)_(\d+)>$")


class SemanticIdIndexError(ValueError):
    """A released semantic-id index that cannot serve the dataset (names the file and entry)."""


def parse_code_index(path: Path) -> Dict[str, List[int]]:
    """Codes of every entry of an LC-Rec/LETTER index ``{"<item>": ["<a_12>", "<b_7>", ...]}``.

    Every entry must be a list of the same length whose position t always carries the same
    level prefix (``a``, ``b``, ...); anything else raises :class:`SemanticIdIndexError`.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except json.JSONDecodeError as err:
        raise SemanticIdIndexError(
            f"{path}, line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})") from None
    if not isinstance(index, dict) or not index:
        raise SemanticIdIndexError(f"{path}: expected a non-empty object {{item: [code, ...]}}")
    prefixes: Optional[List[str]] = None
    codes: Dict[str, List[int]] = {}
    for item, entry in index.items():
        if not isinstance(entry, list) or not entry:
            raise SemanticIdIndexError(f"{path}: item {item!r}: expected a list of codes like \"<a_12>\", got {entry!r}")
        matches = [CODE_TOKEN.match(code) if isinstance(code, str) else None for code in entry]
        for position, (code, match) in enumerate(zip(entry, matches)):
            if match is None:
                raise SemanticIdIndexError(
                    f"{path}: item {item!r}, position {position}: code {code!r} is not of the form \"<a_12>\"")
        if prefixes is None:
            prefixes = [match.group(1) for match in matches]
        if len(entry) != len(prefixes):
            raise SemanticIdIndexError(
                f"{path}: item {item!r} has {len(entry)} codes, expected {len(prefixes)} like the first entry")
        for position, (match, prefix) in enumerate(zip(matches, prefixes)):
            if match.group(1) != prefix:
                raise SemanticIdIndexError(
                    f"{path}: item {item!r}, position {position}: level prefix {match.group(1)!r}, expected {prefix!r}")
        codes[str(item)] = [int(match.group(2)) for match in matches]
    return codes


def external_semantic_ids(path: str | Path, item_tokens: Sequence[str],
                          cache_folder: Path) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Unique semantic ids [len(item_tokens) + 1, L+1] read from a released index (row 0: -1).

    ``item_tokens`` are the dataset's item tokens in internal-id order from id 1 (for data
    converted by the ``lcrec`` converter they are the index's item keys). Colliding codes get the
    de-duplication level of :func:`deduplicate`; the report counts them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"semantic_id_file: {str(path)!r} is not a file")
    tokens = [str(token) for token in item_tokens]
    stage = Stage("external_semantic_ids", cache_folder, {"index": path_input(path), "item_tokens": tokens})

    def compute():
        index = parse_code_index(path)
        missing = [token for token in tokens if token not in index]
        if missing:
            raise SemanticIdIndexError(
                f"{path}: {len(missing)} of the dataset's {len(tokens)} items have no entry "
                f"(first: {missing[:5]}); the keys must be the dataset's item tokens")
        ids, report = deduplicate(np.array([index[token] for token in tokens], dtype=np.int64))
        report.update(index_file=str(path), index_entries=len(index),
                      colliding_ids=report["n_items"] - report["unique_codes_before_dedup"])
        logger.info("semantic ids from %s: %s", path, report)
        return ids, report

    ids = stage.run(compute)
    report = {key: value for key, value in stage.report.items() if key not in ("stage", "path")}
    return _with_padding_row(ids), report


def level_sizes_of(ids: torch.Tensor) -> List[int]:
    """Codes per level of semantic ids [item_num, L] (row 0, padding, skipped): max + 1."""
    return [int(size) + 1 for size in ids[1:].max(dim=0).values.tolist()]
