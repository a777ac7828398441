"""Discrete item codes by optimized product quantization (OPQ + PQ) with faiss.

This is the faiss index ``OPQ{D},IVF1,PQ{D}x{b}`` written out step by step: an OPQ rotation,
centring on the mean of the fitting vectors (the single IVF1 centroid, whose residuals the PQ
encodes) and a product quantizer of ``D`` sub-vectors with ``code_cap = 2**b`` centroids each.
The quantizer is fitted on a chosen subset of rows (the items of the training split) and then
encodes every row, so items never seen in training still get codes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from recbole_llm.stages import Stage


def _bits_per_code(code_cap: int) -> int:
    bits = int(code_cap).bit_length() - 1
    if code_cap < 2 or 2**bits != code_cap or bits > 8:
        raise ValueError(f"code_cap must be a power of two between 2 and 256, got {code_cap}")
    return bits


def _unpack_codes(packed: np.ndarray, code_dim: int, bits: int) -> np.ndarray:
    """faiss packs ``bits``-bit codes little-endian into bytes; return them as int64 [n, code_dim]."""
    if bits == 8:
        return packed[:, :code_dim].astype(np.int64)
    stream = np.unpackbits(packed, axis=1, bitorder="little")[:, : code_dim * bits]
    weights = 1 << np.arange(bits, dtype=np.int64)
    return (stream.reshape(len(packed), code_dim, bits).astype(np.int64) * weights).sum(-1)


def _product_quantizer(faiss, dim: int, code_dim: int, bits: int, seed: int):
    """A faiss PQ with a fixed k-means seed, quiet about small fitting sets (a few thousand items)."""
    quantizer = faiss.ProductQuantizer(dim, code_dim, bits)
    quantizer.cp.seed = int(seed)
    quantizer.cp.min_points_per_centroid = 1
    return quantizer


def fit_item_codes(
    embeddings: np.ndarray,
    fit_rows: Sequence[int],
    code_dim: int = 32,
    code_cap: int = 256,
    seed: int = 2020,
    threads: int = 1,
    opq_iter: int = 50,
) -> np.ndarray:
    """Codes [n, code_dim] (int64 in ``[0, code_cap)``) of every row of ``embeddings``.

    The OPQ rotation, the centre and the codebooks are fitted on ``embeddings[fit_rows]`` only.
    ``threads`` fixes faiss' OpenMP threads and ``seed`` its k-means, so the codes are the same
    on every run with the same inputs. ``opq_iter`` is the number of OPQ rotation updates
    (faiss' default, 50).
    """
    import faiss

    bits = _bits_per_code(code_cap)
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1]
    if code_dim < 1 or dim % code_dim:
        raise ValueError(f"code_dim must divide the text embedding size {dim}, got {code_dim}")
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    if len(fit_rows) < code_cap:
        raise ValueError(
            f"product quantization needs at least code_cap={code_cap} fitting items, got {len(fit_rows)}: "
            "lower code_cap"
        )
    faiss.omp_set_num_threads(int(threads))
    rotation = faiss.OPQMatrix(dim, code_dim)
    rotation.niter = int(opq_iter)
    rotation_quantizer = _product_quantizer(faiss, dim, code_dim, bits, seed)
    rotation.pq = rotation_quantizer  # OPQ alternates rotation updates with this PQ's training
    rotation.train(np.ascontiguousarray(vectors[fit_rows]))
    rotated = rotation.apply(vectors)
    centre = rotated[fit_rows].mean(axis=0, keepdims=True)
    residuals = np.ascontiguousarray(rotated - centre, dtype=np.float32)
    quantizer = _product_quantizer(faiss, dim, code_dim, bits, seed)
    quantizer.train(np.ascontiguousarray(residuals[fit_rows]))
    return _unpack_codes(quantizer.compute_codes(residuals), code_dim, bits)


def cached_item_codes(
    embeddings: np.ndarray,
    fit_rows: Sequence[int],
    cache_folder: Path,
    code_dim: int = 32,
    code_cap: int = 256,
    seed: int = 2020,
    threads: int = 1,
    opq_iter: int = 50,
) -> np.ndarray:
    """:func:`fit_item_codes` as a cached stage (``pq_codes`` under ``cache_folder``).

    The key covers the embeddings, the fitting rows and every setting (see :mod:`recbole_llm.stages`).
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    fit_rows = np.asarray(sorted(set(int(r) for r in fit_rows)), dtype=np.int64)
    settings = {"method": "OPQ,IVF1,PQ", "code_dim": code_dim, "code_cap": code_cap, "seed": seed,
                "threads": threads, "opq_iter": opq_iter}
    stage = Stage("pq_codes", cache_folder, {"embeddings": vectors, "fit_rows": fit_rows, "settings": settings})

    def compute():
        codes = fit_item_codes(vectors, fit_rows, code_dim, code_cap, seed, threads, opq_iter)
        return codes, {"n_items": int(len(codes)), "fit_items": int(len(fit_rows)), **settings}

    return stage.run(compute)
