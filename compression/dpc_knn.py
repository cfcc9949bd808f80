"""DPC-KNN clustering of the recycle pool (METHOD.md section 3, Eqs. 3-4).

With the Euclidean distance between tokens scaled by 1/sqrt(dim), d(i, j) = |x_i - x_j| / sqrt(dim):

* local density rho_i = exp(-(1/k) sum_{j in kNN(i)} d(i, j)^2);
* delta_i = min distance to any token of higher density; for the densest token, the largest
  distance between any two tokens;
* the centres are the `num_clusters` tokens with the largest gamma_i = rho_i * delta_i;
* every token joins its nearest centre; a cluster token is the plain mean of its members.

Conventions (`DpcConvention`; `CompressionConfig.dpc_knn_convention` picks one):

* "peers" (the default): as every public DPC-KNN token clustering does it (TCFormer's
  `cluster_dpc_knn`, and PruneVid, HoliTom and FastVID after it): a token is one of its own k
  nearest neighbours, at distance 0 (with fewer than k tokens in all, all of them; the mean is
  over that count), and the densest token's delta is the largest distance over ALL pairs. Why
  the default: the paper builds on that line of work and cites it for DPC-KNN; with HoliTom's
  code changed in exactly these respects it reproduced this module's earlier convention, so these
  two conventions are the whole difference (16-20% of centres at 2% retention, issue 17).
* "exclude_self": this module's earlier convention, kept as an option (and the value of token
  sets stored before the option existed): the k nearest neighbours are k OTHER tokens (with fewer
  than k others, all of them, mean over that count; a lone token has rho = 1), and the densest
  token's delta is its own largest distance.

Decisions the paper leaves open (all deterministic: no noise, stable sorts):

* the 1/sqrt(dim) scale is what the public DPC-KNN token clustering (TCFormer, Chat-UniVi) uses:
  it changes no neighbour, no "nearest" and no distance order, only the balance between rho and
  delta in gamma. Without it, rho = exp(-mean |x_i - x_j|^2) of 3584-d tokens spans hundreds of
  orders of magnitude, gamma follows rho alone and delta (distinctness) stops mattering;
* ties, broken by index where the peers add uniform noise * 1e-6 to the densities: "higher
  density" compares (rho, -index), so of two tokens of exactly equal rho the one earlier in the
  input order counts as denser and exactly one token is the densest; equal gamma: the earlier
  token is the earlier centre; equally near centres: the earlier centre wins; a centre always
  joins its own cluster. Exact copies of a token are NOT guaranteed delta = 0 or equal rho: their
  distances come from |x|^2 + |y|^2 - 2 x.y in float32, whose rounding differs from row to row,
  so a copy's delta is ~0 (rounding) and the tie rule only decides exactly equal values;
* rho is never materialised: gamma is ranked by log(gamma) = log(rho) + log(delta), which orders
  tokens exactly as rho * delta does but cannot underflow (exp(-mean d^2) is 0 in float32 for the
  distances between real 3584-d tokens, which would make every gamma 0; the peers' products
  are then all 0 and their ranking is their noise); the ranking vector is float64, the
  distances float32; a lone token (delta over an empty set) has delta = 0.

One pass over the distances, at every length: the R x R squared distances are computed in row
chunks of at most `chunk_bytes` (by default 64 MiB on CPU, 4 GiB on CUDA), and each chunk is
reduced at once to every row's `_KEPT_NEIGHBOURS` nearest other tokens (distances and indices,
ascending) and its largest distance. The densities come from those lists; delta_i is the distance
to the first denser token in row i's list, which is exact: every token outside the list is at
least as far as any inside it. Only the rows with no denser token in their list (the local
density peaks, a few percent of the rows) are computed again against all rows, in chunks too.
So memory stays at one chunk plus R x (`_KEPT_NEIGHBOURS` + 1) numbers, and the matmul work is
one R x R product plus the peaks' rows (the earlier code computed the matrix twice once it
passed 256 MiB, ~42 frames). On CUDA the distances are one matmul in the tokens' own dtype
(bf16/fp16 tensor cores) with float32 accumulation and output; on CPU in float32 (CPU half
matmuls are slow and not more exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compression.config import DPC_CONVENTIONS, DpcConvention
from compression.kept_tokens import mean_by_group

# Row-chunk sizes of the distance matrix (float32 bytes per chunk).
_CPU_CHUNK_BYTES = 64 * 2**20
_CUDA_CHUNK_BYTES = 4 * 2**30
# Nearest other tokens kept per row in the one pass. More than k so that the nearest denser
# token is in the list for all but the local density peaks: on bench_compress's video-like tokens
# at 32 frames (6,272 recycled tokens, d = 3584) 86 rows are re-scanned (1.4%; 195 keeping 16,
# 47 keeping 64). Keeping them costs a top-k per chunk, small next to the chunk's matmul.
_KEPT_NEIGHBOURS = 32
_HALF_DTYPES = (torch.bfloat16, torch.float16)


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
    tokens: torch.Tensor,
    num_clusters: int,
    k: int,
    *,
    convention: DpcConvention = "peers",
    chunk_bytes: int | None = None,
) -> Clusters:
    """Cluster `tokens` [R, d] into `num_clusters` (clamped to [1, R]) DPC-KNN clusters."""
    _check_arguments(tokens, k, convention)
    num_clusters = max(1, min(int(num_clusters), tokens.shape[0]))
    x = matmul_operand(tokens)
    rows = _chunk_rows(tokens.shape[0], x.is_cuda, chunk_bytes)
    sq_norm = torch.cat([_squared_norms(x[s : s + rows]) for s in range(0, x.shape[0], rows)])
    order = _peak_order(x, sq_norm, k, convention, rows)
    centres = torch.sort(order[:num_clusters]).values
    labels = _nearest_centre(x, sq_norm, centres, rows)
    means, sizes = mean_by_group(tokens, labels, num_clusters)
    return Clusters(centres=centres, labels=labels, means=means, sizes=sizes)


def peak_order(
    tokens: torch.Tensor,
    k: int,
    *,
    convention: DpcConvention = "peers",
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """All rows of `tokens` [R, d] by descending gamma = rho * delta (earlier row first on ties):
    the density-peak ranking whose first C rows are `dpc_knn`'s centres (HoliTom's and FastVID's
    baselines take their centres from it too)."""
    _check_arguments(tokens, k, convention)
    x = matmul_operand(tokens)
    rows = _chunk_rows(tokens.shape[0], x.is_cuda, chunk_bytes)
    sq_norm = torch.cat([_squared_norms(x[s : s + rows]) for s in range(0, x.shape[0], rows)])
    return _peak_order(x, sq_norm, k, convention, rows)


def _check_arguments(tokens: torch.Tensor, k: int, convention: str) -> None:
    if tokens.shape[0] == 0:
        raise ValueError("dpc_knn needs at least one token")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if convention not in DPC_CONVENTIONS:
        raise ValueError(f"unknown DPC-KNN convention {convention!r}; one of {DPC_CONVENTIONS}")


def _peak_order(
    x: torch.Tensor, sq_norm: torch.Tensor, k: int, convention: str, rows: int
) -> torch.Tensor:
    r = x.shape[0]
    near_d2, near_index, farthest = _neighbour_lists(x, sq_norm, rows)

    # Density: the sum of the k_others nearest other tokens' squared distances, plus self's 0
    # under "peers"; summed in float32 in ascending order, so equal neighbourhoods stay equal.
    if convention == "peers":
        k_others, count = min(k, r) - 1, min(k, r)
    else:
        k_others = count = min(k, r - 1)
    knn_sum = near_d2[:, :k_others].sum(dim=1)
    log_rho = -knn_sum.double() / (max(count, 1) * x.shape[1])
    rank = _density_rank(log_rho)

    delta_sq = _nearest_denser(near_d2, near_index, rank)
    peaks = torch.nonzero(torch.isinf(delta_sq) & (rank != 0)).flatten()
    if peaks.numel():  # no denser token among the kept neighbours: look at every row
        delta_sq[peaks] = _rescan_nearest_denser(x, sq_norm, peaks, rank, rows)
    densest = torch.nonzero(rank == 0).flatten()
    delta_sq[densest] = farthest.max() if convention == "peers" else farthest[densest]

    # log(gamma) = log(rho) + log(|delta| / sqrt(dim)); the -log(sqrt(dim)) is the same for every
    # token, so it is left out of the ranking.
    log_gamma = log_rho + 0.5 * torch.log(delta_sq.double())
    return torch.sort(log_gamma, descending=True, stable=True).indices


def matmul_operand(tokens: torch.Tensor) -> torch.Tensor:
    """The tokens as the distance matmul takes them: bf16/fp16 as they are on CUDA (tensor cores,
    float32 accumulation via `gram`), float32 otherwise."""
    if tokens.is_cuda and tokens.dtype in _HALF_DTYPES:
        return tokens
    return tokens.float()


def gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T as float32: one matmul in the operands' dtype, accumulated and returned in
    float32 (a bf16/fp16 product would otherwise be rounded to bf16/fp16 before the distances
    are formed)."""
    if a.dtype in _HALF_DTYPES:
        return torch.mm(a, b.T, out_dtype=torch.float32)
    return a @ b.T


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    return x.float().square().sum(dim=1)


def _chunk_rows(r: int, on_cuda: bool, chunk_bytes: int | None) -> int:
    if chunk_bytes is None:
        chunk_bytes = _CUDA_CHUNK_BYTES if on_cuda else _CPU_CHUNK_BYTES
    return max(1, chunk_bytes // (4 * r))


def _squared_distances(
    x: torch.Tensor, sq_norm: torch.Tensor, rows: torch.Tensor | slice
) -> torch.Tensor:
    """d(i, j)^2 (unscaled) for the given rows against all rows, float32, clamped at 0."""
    d2 = gram(x[rows], x)
    d2.mul_(-2.0).add_(sq_norm[rows, None]).add_(sq_norm[None, :]).clamp_min_(0.0)
    return d2


def _neighbour_lists(
    x: torch.Tensor, sq_norm: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one pass: each row's nearest other tokens ([R, n] squared distances ascending and
    their indices, n = min(_KEPT_NEIGHBOURS, R - 1)) and its largest distance [R] (self's 0
    included)."""
    r = x.shape[0]
    kept = min(_KEPT_NEIGHBOURS, r - 1)
    near_d2 = torch.empty(r, kept, dtype=torch.float32, device=x.device)
    near_index = torch.empty(r, kept, dtype=torch.long, device=x.device)
    farthest = torch.empty(r, dtype=torch.float32, device=x.device)
    for start in range(0, r, rows):
        stop = min(start + rows, r)
        d2 = _squared_distances(x, sq_norm, slice(start, stop))
        self_dist = d2.diagonal(offset=start)
        self_dist.zero_()  # exactly 0, whatever the rounding of |x|^2 + |x|^2 - 2 x.x
        farthest[start:stop] = d2.max(dim=1).values
        self_dist.fill_(float("inf"))  # self is not one of the kept OTHER tokens
        near = d2.topk(kept, dim=1, largest=False, sorted=True)
        near_d2[start:stop], near_index[start:stop] = near.values, near.indices
    return near_d2, near_index, farthest


def _density_rank(log_rho: torch.Tensor) -> torch.Tensor:
    """Rank of every token by (rho desc, index asc); rank 0 is the densest."""
    order = torch.sort(log_rho, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _nearest_denser(
    near_d2: torch.Tensor, near_index: torch.Tensor, rank: torch.Tensor
) -> torch.Tensor:
    """Squared distance to the nearest denser token within each row's kept list (inf: none)."""
    if near_d2.shape[1] == 0:  # a lone token
        return torch.full_like(rank, float("inf"), dtype=torch.float32)
    not_denser = rank[near_index] >= rank[:, None]
    return near_d2.masked_fill(not_denser, float("inf")).min(dim=1).values


def _rescan_nearest_denser(
    x: torch.Tensor, sq_norm: torch.Tensor, peaks: torch.Tensor, rank: torch.Tensor, rows: int
) -> torch.Tensor:
    """Squared distance from each of `peaks` to its nearest denser token among all rows."""
    out = torch.empty(peaks.numel(), dtype=torch.float32, device=x.device)
    for start in range(0, peaks.numel(), rows):
        chunk = peaks[start : start + rows]
        d2 = _squared_distances(x, sq_norm, chunk)
        not_denser = rank[None, :] >= rank[chunk, None]
        out[start : start + rows] = d2.masked_fill_(not_denser, float("inf")).min(dim=1).values
    return out


def _nearest_centre(
    x: torch.Tensor, sq_norm: torch.Tensor, centres: torch.Tensor, rows: int
) -> torch.Tensor:
    """Cluster of every row: its nearest centre (earlier centre on ties; a centre: itself)."""
    c = x[centres]
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], rows):
        d2 = gram(x[start : start + rows], c)
        d2.mul_(-2.0).add_(sq_norm[start : start + rows, None]).add_(sq_norm[centres][None, :])
        labels[start : start + rows] = d2.argmin(dim=1)
    labels[centres] = torch.arange(centres.numel(), device=x.device)
    return labels
