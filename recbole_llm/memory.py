"""Evaluation batch sizes that fit the catalogue.

Full ranking materialises a dense score matrix [eval_batch_size, n_items] (plus RecBole's masked
copy and top-k buffers), so a batch that is harmless on 2k items exhausts memory on 100k. The
quick start caps ``eval_batch_size`` so that this matrix stays within ``eval_memory_mb``.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# float32 scores, the -inf-masked copy RecBole writes and the top-k workspace: about three copies
_SCORE_COPIES = 3
_BYTES_PER_SCORE = 4


def fitted_eval_batch_size(requested: int, n_items: int, memory_mb: float) -> int:
    """The largest batch <= ``requested`` whose score matrices fit in ``memory_mb`` (at least 1)."""
    if memory_mb is None or memory_mb <= 0:
        return int(requested)
    per_user = n_items * _SCORE_COPIES * _BYTES_PER_SCORE
    return max(1, min(int(requested), int(memory_mb * 2**20 // per_user)))


def fit_eval_batch_size(config, n_items: int) -> None:
    """Lower ``config['eval_batch_size']`` in place when the catalogue needs it (logged)."""
    requested = config["eval_batch_size"]
    fitted = fitted_eval_batch_size(requested, n_items, config["eval_memory_mb"])
    if fitted < requested:
        logger.warning("eval_batch_size %d -> %d: %d items x %d users of scores would exceed eval_memory_mb=%s",
                       requested, fitted, n_items, requested, config["eval_memory_mb"])
        config["eval_batch_size"] = fitted
