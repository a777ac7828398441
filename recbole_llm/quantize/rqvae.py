"""RQ-VAE item tokenizer with LETTER's collaborative and diversity regularizers.

References:
    Rajput et al. "Recommender Systems with Generative Retrieval" (TIGER), NeurIPS 2023,
    arXiv:2305.05065 (RQ-VAE semantic ids).
    Wang et al. "Learnable Item Tokenization for Generative Recommendation" (LETTER), CIKM 2024,
    arXiv:2405.07314 (collaborative and diversity regularization).

An MLP encoder maps an item's text embedding to a ``code_dim`` vector; ``n_levels`` codebooks
quantize it residually (the straight-through estimator carries the gradient past the
quantizer); an MLP decoder reconstructs the text embedding. The last level may be assigned with
Sinkhorn-balanced transport so that codes are used evenly. LETTER adds an in-batch contrastive
loss between the quantized vector and the item's collaborative (CF) embedding (weight
``cf_weight``) and a contrastive loss pulling each chosen code toward the codes of its balanced
k-means cluster (weight ``div_weight``). Every loss is computed on whole batches: no per-sample
Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from recbole_llm.quantize.kmeans import kmeans, sinkhorn_assignment


@dataclass
class RQVAEConfig:
    """Sizes and loss weights of an :class:`RQVAE`."""

    input_dim: int
    hidden_sizes: Sequence[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128, 64])
    code_dim: int = 32
    n_levels: int = 3
    codebook_size: int = 256
    dropout: float = 0.0
    commitment_weight: float = 0.25
    sinkhorn_epsilon: float = 0.003
    sinkhorn_iters: int = 50
    cf_dim: int = 0
    cf_weight: float = 0.0
    div_weight: float = 0.0


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """ReLU MLP with Xavier-normal weights: PyTorch's default init shrinks the activations through
    six layers to a latent spread of ~1e-4, which the commitment term then collapses onto a few codes."""
    layers: List[nn.Module] = []
    for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(size_in, size_out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ResidualQuantizer(nn.Module):
    """``n_levels`` codebooks of ``codebook_size`` vectors applied to successive residuals."""

    def __init__(self, n_levels: int, codebook_size: int, code_dim: int):
        super().__init__()
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(codebook_size, code_dim) * 0.01) for _ in range(n_levels)]
        )

    @torch.no_grad()
    def init_from_data(self, latents: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """k-means initialisation: level l's codebook = centroids of the level-l residuals."""
        residual = latents.detach().cpu()
        for codebook in self.codebooks:
            centroids = kmeans(residual, codebook.shape[0], generator=generator)
            codebook.copy_(centroids)
            residual = residual - centroids[torch.cdist(residual, centroids).argmin(dim=1)]

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor, generator: Optional[torch.Generator] = None) -> int:
        """Move every code that no latent picks onto a random residual of its level; returns how many.

        Without this the codebooks, initialised on the first (small) latents, are left behind as
        the encoder's output spreads, and a few codes at the edge take every item.
        """
        residual = latents.detach()
        restarted = 0
        for codebook in self.codebooks:
            usage = torch.bincount(torch.cdist(residual, codebook).argmin(dim=1), minlength=codebook.shape[0])
            dead = (usage == 0).nonzero().squeeze(1)
            if len(dead):
                picks = torch.randint(len(residual), (len(dead),), generator=generator).to(residual.device)
                codebook[dead] = residual[picks]
                restarted += len(dead)
            residual = residual - codebook[torch.cdist(residual, codebook).argmin(dim=1)]
        return restarted

    def forward(self, latents: torch.Tensor, sinkhorn_epsilon: float = 0.0, sinkhorn_iters: int = 50):
        """(quantized [N, d] with straight-through gradient, codes [N, L], codebook+commit terms).

        The commitment term is returned unweighted; the caller applies its weight.
        """
        residual = latents
        quantized = torch.zeros_like(latents)
        codes, codebook_terms, commit_terms = [], [], []
        last = len(self.codebooks) - 1
        for level, codebook in enumerate(self.codebooks):
            distances = torch.cdist(residual.detach(), codebook.detach())
            if level == last and sinkhorn_epsilon > 0:
                level_codes = sinkhorn_assignment(distances, sinkhorn_epsilon, sinkhorn_iters)
            else:
                level_codes = distances.argmin(dim=1)
            chosen = codebook[level_codes]
            codebook_terms.append(F.mse_loss(chosen, residual.detach()))
            commit_terms.append(F.mse_loss(residual, chosen.detach()))
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(level_codes)
        straight_through = latents + (quantized - latents).detach()
        return straight_through, torch.stack(codes, dim=1), sum(codebook_terms), sum(commit_terms)


class RQVAE(nn.Module):
    """Residual-quantized auto-encoder over item text embeddings."""

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.config = config
        sizes = [config.input_dim, *config.hidden_sizes, config.code_dim]
        self.encoder = _mlp(sizes, config.dropout)
        self.decoder = _mlp(list(reversed(sizes)), config.dropout)
        self.quantizer = ResidualQuantizer(config.n_levels, config.codebook_size, config.code_dim)
        self.cf_projection = (
            nn.Linear(config.cf_dim, config.code_dim, bias=False)
            if config.cf_weight > 0 and config.cf_dim > 0 else None
        )

    @torch.no_grad()
    def init_codebooks(self, embeddings: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Initialise every codebook with k-means on the encoded ``embeddings``."""
        self.quantizer.init_from_data(self.encoder(embeddings), generator)

    def losses(
        self,
        embeddings: torch.Tensor,
        cf_embeddings: Optional[torch.Tensor] = None,
        code_clusters: Optional[List[torch.Tensor]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """Loss terms of one batch; ``total`` is their weighted sum.

        ``cf_embeddings`` [B, cf_dim] enables the collaborative term, ``code_clusters`` (one
        label vector [codebook_size] per level) the diversity term.
        """
        cfg = self.config
        latents = self.encoder(embeddings)
        quantized, codes, codebook_term, commit_term = self.quantizer(
            latents, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters
        )
        terms = {
            "reconstruction": F.mse_loss(self.decoder(quantized), embeddings),
            "quantization": codebook_term + cfg.commitment_weight * commit_term,
        }
        total = terms["reconstruction"] + terms["quantization"]
        if self.cf_projection is not None and cf_embeddings is not None:
            terms["collaborative"] = collaborative_loss(quantized, self.cf_projection(cf_embeddings))
            total = total + cfg.cf_weight * terms["collaborative"]
        if cfg.div_weight > 0 and code_clusters is not None:
            per_level = [
                diversity_loss(codebook, codes[:, level], code_clusters[level], generator)
                for level, codebook in enumerate(self.quantizer.codebooks)
            ]
            terms["diversity"] = sum(per_level) / len(per_level)
            total = total + cfg.div_weight * terms["diversity"]
        terms["total"] = total
        return terms

    @torch.no_grad()
    def codes(self, embeddings: torch.Tensor, balanced_last_level: bool = True) -> torch.Tensor:
        """Codes [N, n_levels] of ``embeddings`` (the last level Sinkhorn-balanced over all N)."""
        epsilon = self.config.sinkhorn_epsilon if balanced_last_level else 0.0
        _, codes, _, _ = self.quantizer(self.encoder(embeddings), epsilon, self.config.sinkhorn_iters)
        return codes


def collaborative_loss(quantized: torch.Tensor, cf_embeddings: torch.Tensor) -> torch.Tensor:
    """In-batch InfoNCE: item i's quantized vector must score its own CF embedding highest."""
    logits = quantized @ cf_embeddings.t()
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def diversity_loss(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    cluster_labels: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Contrastive loss pulling each chosen code toward another code of its cluster.

    For a sample with code ``c`` in cluster ``g``, the positive is a code drawn uniformly from
    the other members of ``g``; every other code of the level is a negative (``c`` itself is
    masked with -inf). Samples whose cluster holds only ``c`` have no positive and are left out.
    """
    n_codes = codebook.shape[0]
    order = torch.argsort(cluster_labels, stable=True)
    sizes = torch.bincount(cluster_labels, minlength=int(cluster_labels.max()) + 1)
    starts = torch.cumsum(sizes, 0) - sizes
    rank_in_cluster = torch.empty_like(cluster_labels)
    rank_in_cluster[order] = torch.arange(n_codes, device=codes.device) - starts[cluster_labels[order]]
    clusters = cluster_labels[codes]
    others = sizes[clusters] - 1
    has_positive = others > 0
    if not bool(has_positive.any()):
        return codebook.sum() * 0.0
    uniform = torch.rand(codes.shape, generator=generator).to(codes.device)
    draw = (uniform * others.clamp(min=1)).long()
    draw = torch.minimum(draw, (others - 1).clamp(min=0))
    draw = (draw + (draw >= rank_in_cluster[codes]).long()) * has_positive
    positives = order[starts[clusters] + draw]
    logits = codebook[codes] @ codebook.t()
    logits[torch.arange(codes.shape[0], device=codes.device), codes] = float("-inf")
    return F.cross_entropy(logits[has_positive], positives[has_positive])
