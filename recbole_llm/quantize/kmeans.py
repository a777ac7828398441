"""Clustering helpers for the RQ-VAE: k-means, balanced k-means and Sinkhorn assignment."""
from __future__ import annotations

import numpy as np
import torch


def kmeans(points: torch.Tensor, n_clusters: int, n_iters: int = 20,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on ``points`` [N, d]; returns the centroids [n_clusters, d].

    Starts from k-means++ seeds. With fewer points than clusters, the missing centroids are
    copies of random points plus a little noise, so every code exists.
    """
    points = points.detach().float().cpu()
    n_points = points.shape[0]
    if n_points < n_clusters:
        extra = points[torch.randint(n_points, (n_clusters - n_points,), generator=generator)]
        noise = 1e-3 * torch.randn(extra.shape, generator=generator)
        return torch.cat([points, extra + noise])
    centroids = _kmeans_plus_plus(points, n_clusters, generator)
    for _ in range(n_iters):
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=n_clusters).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def _kmeans_plus_plus(points: torch.Tensor, n_clusters: int,
                      generator: torch.Generator | None) -> torch.Tensor:
    first = torch.randint(points.shape[0], (1,), generator=generator)
    chosen = [points[first].squeeze(0)]
    closest = torch.cdist(points, chosen[0].unsqueeze(0)).squeeze(1) ** 2
    for _ in range(1, n_clusters):
        weights = closest.clamp(min=0) + 1e-12
        index = torch.multinomial(weights, 1, generator=generator)
        chosen.append(points[index].squeeze(0))
        closest = torch.minimum(closest, torch.cdist(points, chosen[-1].unsqueeze(0)).squeeze(1) ** 2)
    return torch.stack(chosen)


def balanced_assignment(distances: np.ndarray, capacity: int) -> np.ndarray:
    """Assign each row to a column, closest pairs first, no column taking more than ``capacity``.

    ``distances`` is [n_points, n_clusters]; needs ``n_clusters * capacity >= n_points``.
    """
    n_points, n_clusters = distances.shape
    if n_clusters * capacity < n_points:
        raise ValueError(f"{n_clusters} clusters of capacity {capacity} cannot hold {n_points} points")
    assignment = np.full(n_points, -1, dtype=np.int64)
    load = np.zeros(n_clusters, dtype=np.int64)
    for flat in np.argsort(distances, axis=None, kind="stable"):
        point, cluster = divmod(int(flat), n_clusters)
        if assignment[point] < 0 and load[cluster] < capacity:
            assignment[point] = cluster
            load[cluster] += 1
    return assignment


def balanced_kmeans(points: torch.Tensor, n_clusters: int, n_iters: int = 10,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Cluster labels [N] of ``points`` [N, d] into clusters of (almost) equal size.

    Every cluster holds ``ceil(N / n_clusters)`` points at most, so no code ends up alone while
    another cluster swallows the codebook.
    """
    points = points.detach().float().cpu()
    n_clusters = min(n_clusters, points.shape[0])
    capacity = -(-points.shape[0] // n_clusters)
    centroids = kmeans(points, n_clusters, n_iters=n_iters, generator=generator)
    labels = torch.zeros(points.shape[0], dtype=torch.long)
    for _ in range(n_iters):
        distances = torch.cdist(points, centroids).numpy()
        labels = torch.from_numpy(balanced_assignment(distances, capacity))
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=n_clusters).unsqueeze(1).clamp(min=1)
        centroids = sums / counts
    return labels


def sinkhorn_assignment(distances: torch.Tensor, epsilon: float, n_iters: int = 50) -> torch.Tensor:
    """Codes [N] that spread ``N`` points evenly over the columns of ``distances`` [N, K].

    Solves the entropic optimal-transport problem with uniform marginals (Sinkhorn-Knopp, in the
    log domain) on distances rescaled to [-1, 1], then takes each row's most likely column.
    """
    distances = distances.detach().double()
    spread = (distances.max() - distances.min()).clamp(min=1e-12)
    scaled = 2 * (distances - distances.min()) / spread - 1
    log_plan = -scaled / epsilon
    n_points, n_codes = distances.shape
    log_row = -torch.log(torch.tensor(float(n_points), dtype=torch.float64))
    log_col = -torch.log(torch.tensor(float(n_codes), dtype=torch.float64))
    for _ in range(n_iters):
        log_plan = log_plan - torch.logsumexp(log_plan, dim=0, keepdim=True) + log_col
        log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True) + log_row
    return log_plan.argmax(dim=1)
