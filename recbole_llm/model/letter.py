"""LETTER: learnable item tokenization for generative recommendation, on top of TIGER.

Reference:
    Wenjie Wang et al. "Learnable Item Tokenization for Generative Recommendation."
    CIKM 2024, arXiv:2405.07314.

LETTER differs from TIGER in two places. The tokenizer: the RQ-VAE adds a collaborative
regularizer (``rqvae_cf_weight``, alpha; CF embeddings from a RecBole SASRec on the same data)
and a diversity regularizer (``rqvae_div_weight``, beta; balanced k-means clusters of each
codebook), see :mod:`recbole_llm.quantize.rqvae`. The generator: the ranking-guided generation
loss, a cross-entropy on logits divided by the temperature ``ranking_temperature`` (tau).
Ranking (constrained beam search or exact scoring) is TIGER's.
"""
from __future__ import annotations

from recbole_llm.model.tiger import TIGER


class LETTER(TIGER):
    """TIGER with LETTER's regularized tokenizer and ranking-guided loss."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        temperature = config["ranking_temperature"]
        if temperature is None or temperature <= 0:
            raise ValueError(f"ranking_temperature must be a positive number, got {temperature!r}")
        self.loss_temperature = float(temperature)
