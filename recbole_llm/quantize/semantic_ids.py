"""Semantic ids for a RecBole dataset: train (or resume, or reload) an RQ-VAE, then de-duplicate.

Pipeline, all cached under ``cache_dir(config, "semantic_ids")``:

1. collaborative embeddings (only when ``rqvae_cf_weight > 0``, LETTER): the item embedding
   table of a RecBole SASRec trained on the same dataset for ``cf_epochs`` epochs, or read from
   ``cf_checkpoint`` (a RecBole checkpoint or a ``.npy`` table);
2. the RQ-VAE, trained on the item text embeddings with a checkpoint every ``rqvae_save_step``
   epochs, from which an interrupted run resumes;
3. the codes: ``rqvae_levels`` levels (the last one Sinkhorn-balanced), then one extra
   de-duplication level numbering the items that share the same codes, so that every item's id
   is unique. The collision rate before de-duplication is logged and kept in a JSON report.

Random state is saved and restored around the pipeline, so a run that trains the tokenizer and
a run that reads it from the cache continue with the same random numbers.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from recbole_llm.quantize.kmeans import balanced_kmeans
from recbole_llm.quantize.rqvae import RQVAE, RQVAEConfig
from recbole_llm.utils import atomic_write, cache_dir, fingerprint, save_array

logger = logging.getLogger(__name__)


@dataclass
class TokenizerTraining:
    """Optimisation settings of the RQ-VAE."""

    epochs: int = 200
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    div_clusters: int = 10
    save_step: int = 50
    log_step: int = 50
    seed: int = 2020
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


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore Python's, numpy's and torch's random state on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


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


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:20]


def _save_torch(path: Path, payload: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


class TokenizerTrainer:
    """Trains one RQ-VAE with periodic checkpoints, resuming from the last one."""

    def __init__(self, architecture: RQVAEConfig, training: TokenizerTraining,
                 checkpoint_file: Optional[Path] = None, device: torch.device | str = "cpu"):
        self.training = training
        self.checkpoint_file = checkpoint_file
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
        if self.checkpoint_file is None or not self.checkpoint_file.is_file():
            return False
        state = torch.load(self.checkpoint_file, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.start_epoch = int(state["epoch"])
        logger.info("rqvae resumed from %s at epoch %d", self.checkpoint_file, self.start_epoch)
        return True

    def _save(self, epoch: int) -> None:
        if self.checkpoint_file is None:
            return
        _save_torch(self.checkpoint_file, {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        })


def item_semantic_ids(dataset, config) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Unique semantic ids [item_num, L+1] of every internal item id (row 0, padding: -1).

    ``dataset`` must carry ``item_text_emb`` (a :class:`~recbole_llm.data.TextSeqDataset`).
    Returns the ids and the report (collision rate before de-duplication and sizes).
    """
    text_emb = standardized(dataset.item_text_emb[1:].float())
    folder = cache_dir(config, "semantic_ids")
    with preserved_random_state():
        cf_emb = collaborative_embeddings(dataset, config) if config["rqvae_cf_weight"] > 0 else None
        architecture, training = rqvae_settings(config, text_emb.shape[1], 0 if cf_emb is None else cf_emb.shape[1])
        key = fingerprint(
            _array_digest(text_emb.numpy()),
            None if cf_emb is None else _array_digest(cf_emb),
            asdict(architecture),
            {name: value for name, value in asdict(training).items() if name not in ("show_progress", "log_step")},
        )
        ids_file, report_file = folder / f"semantic_ids_{key}.npy", folder / f"report_{key}.json"
        if ids_file.is_file() and report_file.is_file():
            logger.info("semantic ids read from cache %s", ids_file)
            return _with_padding_row(np.load(ids_file)), json.loads(report_file.read_text())
        trainer = TokenizerTrainer(architecture, training, folder / f"rqvae_{key}.pt", config["device"])
        model = trainer.fit(text_emb, None if cf_emb is None else torch.from_numpy(cf_emb))
        ids, report = deduplicate(model.codes(text_emb.to(trainer.device)).cpu().numpy())
    logger.info("semantic ids: %s", report)
    save_array(ids_file, ids)
    atomic_write(report_file, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return _with_padding_row(ids), report


def standardized(embeddings: torch.Tensor) -> torch.Tensor:
    """Per-dimension z-scores over the items: sentence encoders give unit-norm vectors whose
    coordinates are ~0.05, too small a reconstruction target for the RQ-VAE."""
    return (embeddings - embeddings.mean(dim=0)) / embeddings.std(dim=0).clamp_min(1e-8)


def _with_padding_row(ids: np.ndarray) -> torch.Tensor:
    table = torch.full((ids.shape[0] + 1, ids.shape[1]), -1, dtype=torch.long)
    table[1:] = torch.from_numpy(ids)
    return table


# ----------------------------------------------------------------- collaborative embeddings

_CF_MODEL_KEYS = ("model", "epochs", "hidden_size", "inner_size", "saved", "train_neg_sample_args", "loss_type")


def collaborative_embeddings(dataset, config) -> np.ndarray:
    """CF item embeddings [item_num - 1, d] aligned with ``dataset``'s items 1..item_num-1.

    From ``cf_checkpoint`` when set, else from a SASRec trained here (cached).
    """
    iid_field = dataset.iid_field
    tokens = list(dataset.field2id_token[iid_field][1:])
    path = config["cf_checkpoint"]
    if path:
        return _load_cf_table(Path(path), tokens)
    settings = {"epochs": config["cf_epochs"], "hidden_size": config["cf_hidden_size"]}
    key = fingerprint(config["dataset"], tokens, settings, config["seed"])
    cache_file = cache_dir(config, "semantic_ids") / f"cf_sasrec_{key}.npy"
    if cache_file.is_file():
        logger.info("CF embeddings read from cache %s", cache_file)
        return np.load(cache_file)
    table, cf_tokens = _train_sasrec(config, settings)
    aligned = _align(table, cf_tokens, tokens, source="the SASRec trained for CF embeddings")
    save_array(cache_file, aligned)
    return aligned


def _train_sasrec(config, settings: Dict[str, int]) -> Tuple[np.ndarray, List[str]]:
    """Train RecBole's SASRec on the same data; its item table and item tokens (row 0: padding)."""
    from recbole.data import data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer

    from recbole_llm.config import Config
    from recbole_llm.registry import create_dataset

    overrides = {k: v for k, v in config.external_config_dict.items() if k not in _CF_MODEL_KEYS}
    overrides.update(settings, inner_size=4 * settings["hidden_size"], saved=False)
    logger.info("training SASRec for CF embeddings: %s", settings)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cf_config = Config(model="SASRec", dataset=config["dataset"], config_dict=overrides)
    finally:
        sys.argv = argv
    cf_dataset = create_dataset(cf_config)
    train_data, valid_data, _ = data_preparation(cf_config, cf_dataset)
    model = SASRec(cf_config, train_data._dataset).to(cf_config["device"])
    Trainer(cf_config, model).fit(train_data, valid_data, verbose=False, saved=False, show_progress=False)
    table = model.item_embedding.weight.detach().cpu().numpy()
    return table, list(cf_dataset.field2id_token[cf_dataset.iid_field])


def _load_cf_table(path: Path, tokens: List[str]) -> np.ndarray:
    """Rows for ``tokens`` from a ``.npy`` table (rows 1.. = items in our order) or a checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"cf_checkpoint {str(path)!r} does not exist (a RecBole checkpoint or a .npy table)")
    if path.suffix == ".npy":
        table = np.load(path)
        if table.shape[0] != len(tokens) + 1:
            raise ValueError(
                f"cf_checkpoint {str(path)!r} has {table.shape[0]} rows; expected {len(tokens) + 1} "
                "(padding row + one per item, in the dataset's internal id order)"
            )
        return table[1:].astype(np.float32)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", {})
    if "item_embedding.weight" not in state:
        raise ValueError(f"cf_checkpoint {str(path)!r} holds no 'item_embedding.weight' (expected a SASRec checkpoint)")
    table = state["item_embedding.weight"].float().numpy()
    from recbole_llm.registry import create_dataset

    cf_config = checkpoint["config"]
    cf_tokens = list(create_dataset(cf_config).field2id_token[cf_config["ITEM_ID_FIELD"]])
    return _align(table, cf_tokens, tokens, source=f"cf_checkpoint {str(path)!r}")


def _align(table: np.ndarray, source_tokens: List[str], tokens: List[str], source: str) -> np.ndarray:
    index = {token: row for row, token in enumerate(source_tokens)}
    missing = [token for token in tokens if token not in index]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} items of this dataset, e.g. {missing[:3]}")
    return table[[index[token] for token in tokens]].astype(np.float32)
