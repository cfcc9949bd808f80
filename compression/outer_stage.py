"""The outer, query-independent stage: any model's video tokens -> a compact `TokenSet`.

`compress` is the plug-and-play entry point (METHOD.md sections 2-3): the global retention pool
picks M_s high-contribution, low-redundancy tokens across all frames, DPC-KNN clusters the rest
and its cluster tokens refill the budget to exactly M = max(1, round(r N)) tokens (N if N <= M),
sorted into original order. `config.method` switches to a baseline on the same tokens.

Host synchronisations per video: a handful for input validation and for splitting the recycle
pool (its size is data dependent), one per block of the retention pool (plus one per 64
admissions inside a block); none per token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from compression.baselines import run_baseline
from compression.config import CompressionConfig
from compression.dpc_knn import dpc_knn
from compression.kept_tokens import KeptTokens, VideoTokens, to_token_set
from compression.retention_pool import retention_pool
from compression.token_set import EncodedVideo, TokenKind, TokenSet


def compress(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    grid_index: torch.Tensor,
    config: CompressionConfig = CompressionConfig(),
    grid: tuple[int, int, int] | None = None,
) -> TokenSet:
    """Compress one video's tokens.

    tokens: [N, d] or [F, N_v, d] float32/bfloat16/float16 projected tokens; scores: [N]
    contribution of each token; grid_index: [N, 3] integer (t, h, w) of each token; grid:
    (T, H, W), by default grid_index.max(0) + 1; T * H * W must equal N. Tokens may come in any
    order; the result is in original (frame-major, raster) order, on the tokens' device, with
    `assignment` mapping every original token to the row that represents it (-1: dropped).
    Raises ValueError on malformed input (shapes, NaN/inf, indices off the grid).
    """
    video = VideoTokens.from_inputs(tokens, scores, grid_index, grid)
    if config.method == "ours":
        kept = pool_and_clusters(video, config)
    else:
        kept = run_baseline(video, config)
    return to_token_set(video, kept, config)


def compress_video(
    encoded: EncodedVideo, config: CompressionConfig = CompressionConfig()
) -> TokenSet:
    """`compress` an encoded video, keeping its frame timestamps and extras."""
    token_set = compress(encoded.tokens, encoded.scores, encoded.index, config, grid=encoded.grid)
    return token_set.with_metadata(
        frame_timestamps=tuple(encoded.frame_timestamps), extras=dict(encoded.extras)
    )


def compress_batch(
    videos: Sequence[EncodedVideo], config: CompressionConfig = CompressionConfig()
) -> list[TokenSet]:
    """`compress_video` on each video (lengths may differ).

    One video at a time: the pool's steps are matrix-vector products that already fill a GPU
    for a video of thousands of tokens, and padding videos of different lengths into one batch
    would change nothing in the result but add memory. Work is queued asynchronously on CUDA;
    the only host synchronisations are the few per video listed in the module docstring.
    """
    return [compress_video(video, config) for video in videos]


def pool_and_clusters(
    video: VideoTokens, config: CompressionConfig, represented: int | None = None
) -> KeptTokens:
    """The paper's outer stage on validated tokens (METHOD.md sections 2 and 3).

    represented: how many original tokens the rows stand for (default: one each, the flat
    stage); the budget M and its split are those of `represented`, M capped at the row count.
    The hierarchical pool (`compression.hierarchy`) runs this same selection on the union of
    token sets, then recomputes sizes and means with the rows' sizes as weights.
    """
    represented = video.count if represented is None else represented
    budget = min(config.budget(represented), video.count)
    capacity, _ = config.split_budget(represented)
    pool = retention_pool(video.tokens, video.scores, capacity, config.tau)
    device = pool.device
    in_pool = torch.zeros(video.count, dtype=torch.bool, device=device)
    in_pool[pool] = True
    recycled = torch.nonzero(~in_pool).flatten()
    assignment = torch.full((video.count,), -1, dtype=torch.long, device=device)
    assignment[pool] = torch.arange(pool.numel(), device=device)
    n_clusters = budget - pool.numel()  # unused pool capacity goes to clusters
    selected = KeptTokens(
        origin=pool,
        values=video.tokens[pool],
        kind=torch.full_like(pool, int(TokenKind.SELECTED)),
        size=torch.ones_like(pool),
        assignment=assignment,
    )
    if n_clusters == 0:
        return selected
    clusters = dpc_knn(
        video.tokens[recycled], n_clusters, config.knn_k, convention=config.dpc_knn_convention
    )
    assignment[recycled] = clusters.labels + pool.numel()
    return dataclasses.replace(
        selected,
        origin=torch.cat([pool, recycled[clusters.centres]]),
        values=torch.cat([selected.values, clusters.means]),
        kind=torch.cat([selected.kind, torch.full_like(clusters.centres, int(TokenKind.CLUSTER))]),
        size=torch.cat([selected.size, clusters.sizes]),
    )
