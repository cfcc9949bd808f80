"""DPC-KNN clustering of the recycle pool (METHOD.md section 3, Eqs. 3-4).

With the Euclidean distance between tokens scaled by 1/sqrt(dim), d(i, j) = |x_i - x_j| / sqrt(dim):

* local density rho_i = exp(-(1/k) sum_{j in kNN(i)} d(i, j)^2);
* delta_i = min distance to any token of higher density; for the densest token, its max distance;
* the centres are the `num_clusters` tokens with the largest gamma_i = rho_i * delta_i;
* every token joins its nearest centre; a cluster token is the plain mean of its members.

Decisions the paper leaves open (all deterministic: no noise, stable sorts):

* the 1/sqrt(dim) scale is what the public DPC-KNN token clustering (TCFormer, Chat-UniVi) uses:
  it changes no neighbour, no "nearest" and no distance order, only the balance between rho and
  delta in gamma. Without it, rho = exp(-mean |x_i - x_j|^2) of 3584-d tokens spans hundreds of
  orders of magnitude, gamma follows rho alone and delta (distinctness) stops mattering;

* the k nearest neighbours do NOT include the token itself; with fewer than k other tokens the
  density uses all of them, and the mean is over that smaller count (a lone token has rho = 1);
* "higher density" compares (rho, -index): of two tokens with equal rho the one earlier in the
  input order counts as denser, so exactly one token is the densest and an exact duplicate of an
  earlier token has delta = 0 (it never outranks the token it duplicates);
* rho is never materialised: gamma is ranked by log(gamma) = log(rho) + log(delta), which orders
  tokens exactly as rho * delta does but cannot underflow (exp(-mean d^2) is 0 in float32 for the
  distances between real 3584-d tokens, which would make every gamma 0); the ranking vector is
  float64, the distances float32;
* equal gamma: the earlier token wins; equally near centres: the earlier centre wins;
* a centre always joins its own cluster (an exact duplicate centre could otherwise join another);
* a lone token (delta over an empty set) has delta = 0.

Memory: distances are computed in row chunks of at most `chunk_bytes` (by default 4 GiB on CUDA;
on CPU the whole matrix up to 256 MiB, else 64 MiB chunks), so a 25,000-token pool never needs
its 2.5 GB N x N matrix on CPU; when the whole matrix fits one chunk it is computed once and
reused by both passes, otherwise each pass recomputes its chunks (twice the matmul work).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from compression.kept_tokens import mean_by_group

# Row-chunk sizes of the distance matrix: CPU keeps the whole matrix (computed once, used by both
# passes) up to 256 MiB and otherwise works in 64 MiB chunks (two passes, less memory).
_CPU_WHOLE_BYTES = 256 * 2**20
_CPU_CHUNK_BYTES = 64 * 2**20
_CUDA_CHUNK_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Clusters:
    """Result of `dpc_knn` on R tokens.

    centres: [C] int64 row indices of the centres, ascending.
    labels: [R] int64, the cluster (position in `centres`) each row joined.
    means: [C, d] the plain mean of each cluster's members, in the input dtype.
    sizes: [C] int64 member count of each cluster (>= 1; they sum to R).
    """

    centres: torch.Tensor
    labels: torch.Tensor
    means: torch.Tensor
    sizes: torch.Tensor


def dpc_knn(
    tokens: torch.Tensor, num_clusters: int, k: int, *, chunk_bytes: int | None = None
) -> Clusters:
    """Cluster `tokens` [R, d] into `num_clusters` (clamped to [1, R]) DPC-KNN clusters."""
    r = tokens.shape[0]
    if r == 0:
        raise ValueError("dpc_knn needs at least one token")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    num_clusters = max(1, min(int(num_clusters), r))
    x = tokens.float()
    sq_norm = (x * x).sum(dim=1)
    rows = _chunk_rows(r, x.is_cuda, chunk_bytes)
    cache: list[torch.Tensor] = []

    def distance_chunks() -> Iterator[tuple[int, torch.Tensor]]:
        if cache:  # the whole matrix fitted one chunk: reuse it
            yield 0, cache[0]
            return
        for start in range(0, r, rows):
            chunk = _squared_distances(x, sq_norm, start, min(start + rows, r))
            if rows >= r:
                cache.append(chunk)
            yield start, chunk

    log_rho = _log_density(distance_chunks(), min(k, r - 1), r, x.device) / x.shape[1]
    rank = _density_rank(log_rho)
    delta_sq = _delta_squared(distance_chunks(), rank, r)
    cache.clear()
    # log(gamma) = log(rho) + log(|delta| / sqrt(dim)); the -log(sqrt(dim)) is the same for every
    # token, so it is left out of the ranking.
    log_gamma = log_rho + 0.5 * torch.log(delta_sq.double())
    best = torch.sort(log_gamma, descending=True, stable=True).indices[:num_clusters]
    centres = torch.sort(best).values
    labels = _nearest_centre(x, sq_norm, centres, rows)
    means, sizes = mean_by_group(x, labels, num_clusters)
    return Clusters(centres=centres, labels=labels, means=means.to(tokens.dtype), sizes=sizes)


def _chunk_rows(r: int, on_cuda: bool, chunk_bytes: int | None) -> int:
    if chunk_bytes is None:
        if on_cuda:
            chunk_bytes = _CUDA_CHUNK_BYTES
        elif 4 * r * r <= _CPU_WHOLE_BYTES:
            return r
        else:
            chunk_bytes = _CPU_CHUNK_BYTES
    return max(1, chunk_bytes // (4 * r))


def _squared_distances(
    x: torch.Tensor, sq_norm: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """d(i, j)^2 for rows start..stop-1 against all rows, float32, self-distance exactly 0."""
    d2 = x[start:stop] @ x.T
    d2.mul_(-2.0).add_(sq_norm[start:stop, None]).add_(sq_norm[None, :]).clamp_min_(0.0)
    d2.diagonal(offset=start).zero_()
    return d2


def _log_density(
    chunks: Iterator[tuple[int, torch.Tensor]], k_eff: int, r: int, device: torch.device
) -> torch.Tensor:
    """-(mean unscaled squared distance to the k_eff nearest other tokens), float64 [R].

    The caller divides by dim; summing the exact float32 squared distances first keeps equal
    neighbourhoods exactly equal (ties stay ties)."""
    if k_eff == 0:
        return torch.zeros(r, dtype=torch.float64, device=device)
    knn_sum = torch.empty(r, dtype=torch.float32, device=device)
    for start, d2 in chunks:
        stop = start + d2.shape[0]
        self_dist = d2.diagonal(offset=start)
        self_dist.fill_(float("inf"))  # self is not a neighbour
        knn_sum[start:stop] = d2.topk(k_eff, dim=1, largest=False).values.sum(dim=1)
        self_dist.zero_()  # restore, the chunk may be reused
    return -knn_sum.double() / k_eff


def _density_rank(log_rho: torch.Tensor) -> torch.Tensor:
    """Rank of every token by (rho desc, index asc); rank 0 is the densest."""
    order = torch.sort(log_rho, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _delta_squared(
    chunks: Iterator[tuple[int, torch.Tensor]], rank: torch.Tensor, r: int
) -> torch.Tensor:
    """delta^2: squared distance to the nearest denser token (densest: to the farthest token)."""
    delta_sq = torch.empty(r, dtype=torch.float32, device=rank.device)
    for start, d2 in chunks:
        stop = start + d2.shape[0]
        farthest = d2.max(dim=1).values
        not_denser = rank[None, :] >= rank[start:stop, None]
        nearest_denser = d2.masked_fill(not_denser, float("inf")).min(dim=1).values
        delta_sq[start:stop] = torch.where(torch.isinf(nearest_denser), farthest, nearest_denser)
    return delta_sq


def _nearest_centre(
    x: torch.Tensor, sq_norm: torch.Tensor, centres: torch.Tensor, rows: int
) -> torch.Tensor:
    """Cluster of every row: its nearest centre (earlier centre on ties; a centre: itself)."""
    c = x[centres]
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows):
        d2 = x[start : start + rows] @ c.T
        d2.mul_(-2.0).add_(sq_norm[start : start + rows, None]).add_(sq_norm[centres][None, :])
        labels[start : start + rows] = d2.argmin(dim=1)
    labels[centres] = torch.arange(centres.numel(), device=x.device)
    return labels
