"""What every outer method shares: validated input tokens, and the kept tokens -> `TokenSet`.

An outer method (the paper's or a baseline) reads a `VideoTokens` and returns `KeptTokens`: the
rows it keeps, how each was made and which original tokens each one stands for. `to_token_set`
then sorts them into original order and fills the `TokenSet` columns, the same way for all.

Decision (issue 14): a kept token's contribution score (`TokenSet.scores`) is the mean score of
the original tokens it stands for (its `assignment` members), for every method. A selected token
keeps its own score; a cluster or merged token gets its members' mean, not its centre's score nor
their max: when token sets are pooled again, the global retention pool visits tokens by this
score, and a cluster of recycled (redundant or low-contribution) tokens should come after the
tokens the pool selected, as it does in the flat method, instead of competing with them on the
strength of one high-scoring member it happens to hold. The mean is also the same at every level:
the size-weighted mean of the means is the mean over all the originals (`compression.hierarchy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from compression.config import CompressionConfig
from compression.token_set import FLOAT_DTYPES, INDEX_DTYPE, KIND_DTYPE, SIZE_DTYPE, TokenSet


@dataclass(frozen=True)
class VideoTokens:
    """All N tokens of one video, validated and in original (frame-major, raster) order, so that
    row i IS original token i: tie-breaking "by original index" is tie-breaking by row.

    tokens: [N, d] float; scores: [N] float32; grid_index: [N, 3] int64 (t, h, w); grid (T, H, W).
    """

    tokens: torch.Tensor
    scores: torch.Tensor
    grid_index: torch.Tensor
    grid: tuple[int, int, int]

    @property
    def count(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_inputs(
        cls,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        grid_index: torch.Tensor,
        grid: tuple[int, int, int] | None = None,
    ) -> VideoTokens:
        """Validate user inputs (clear ValueError on anything wrong) and sort them into order.

        tokens [N, d] or [F, N_v, d]; scores [N] (or [F, N_v]); grid_index [N, 3] (or
        [F, N_v, 3]) integer (t, h, w); grid defaults to grid_index.max(0) + 1. Every cell of the
        grid must hold exactly one token (N == T * H * W).
        """
        for name, value in (("tokens", tokens), ("scores", scores), ("grid_index", grid_index)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if tokens.ndim not in (2, 3) or tokens.shape[-1] < 1 or tokens.numel() == 0:
            raise ValueError(
                f"tokens must be [N, d] or [F, N_v, d] with N, d >= 1, got {tuple(tokens.shape)}"
            )
        if tokens.dtype not in FLOAT_DTYPES:
            raise ValueError(f"tokens dtype must be one of {FLOAT_DTYPES}, got {tokens.dtype}")
        lead = tuple(tokens.shape[:-1])
        tokens = tokens.reshape(-1, tokens.shape[-1])
        n = tokens.shape[0]
        if tuple(scores.shape) not in {lead, (n,)}:
            raise ValueError(f"scores must have shape {(n,)}, got {tuple(scores.shape)}")
        if scores.dtype.is_complex or scores.dtype == torch.bool:
            raise ValueError(f"scores must be real numbers, got {scores.dtype}")
        if tuple(grid_index.shape) not in {(*lead, 3), (n, 3)}:
            raise ValueError(f"grid_index must have shape {(n, 3)}, got {tuple(grid_index.shape)}")
        if grid_index.dtype.is_floating_point or grid_index.dtype in (torch.bool, torch.uint8):
            raise ValueError(f"grid_index must be a signed integer tensor, got {grid_index.dtype}")
        if not bool(torch.isfinite(tokens).all()):
            raise ValueError("tokens contain NaN or infinite values")
        scores = scores.reshape(n).to(device=tokens.device, dtype=torch.float32)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("scores contain NaN or infinite values")
        grid_index = grid_index.reshape(n, 3).to(device=tokens.device, dtype=torch.long)
        grid = _checked_grid(grid_index, grid, n)
        linear = (grid_index[:, 0] * grid[1] + grid_index[:, 1]) * grid[2] + grid_index[:, 2]
        if not bool((torch.bincount(linear, minlength=n) == 1).all()):
            raise ValueError("grid_index must give every token its own (t, h, w) cell")
        if not bool((linear[1:] > linear[:-1]).all()):
            order = torch.argsort(linear)
            tokens, scores, grid_index = tokens[order], scores[order], grid_index[order]
        return cls(tokens=tokens, scores=scores, grid_index=grid_index, grid=grid)


def _checked_grid(
    grid_index: torch.Tensor, grid: tuple[int, int, int] | None, n: int
) -> tuple[int, int, int]:
    if bool((grid_index < 0).any()):
        raise ValueError("grid_index has negative entries")
    observed = tuple(int(v) + 1 for v in grid_index.max(dim=0).values.tolist())
    if grid is None:
        grid = observed  # type: ignore[assignment]
    grid = tuple(int(g) for g in grid)  # type: ignore[assignment]
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes (T, H, W), got {grid}")
    if any(o > g for o, g in zip(observed, grid, strict=True)):
        raise ValueError(f"grid_index reaches {observed}, outside the grid {grid}")
    if math.prod(grid) != n:
        raise ValueError(f"grid {grid} has {math.prod(grid)} cells but there are {n} tokens")
    return grid  # type: ignore[return-value]


@dataclass(frozen=True)
class KeptTokens:
    """The M tokens an outer method keeps, in any order.

    origin: [M] int64, the original token whose (t, h, w) each kept token takes (distinct).
    values: [M, d] the kept tokens, in the input dtype.
    kind: [M] `TokenKind` values; size: [M] how many original tokens each stands for.
    assignment: [N] int64, for each original token the row of this object representing it,
        or -1 when it was dropped.
    """

    origin: torch.Tensor
    values: torch.Tensor
    kind: torch.Tensor
    size: torch.Tensor
    assignment: torch.Tensor


def to_token_set(video: VideoTokens, kept: KeptTokens, config: CompressionConfig) -> TokenSet:
    """Sort the kept tokens into original order and build the `TokenSet`."""
    order = torch.argsort(kept.origin)
    new_row = torch.empty_like(order)
    new_row[order] = torch.arange(order.numel(), device=order.device)
    # -1 (dropped) stays -1: look it up through a trailing -1 entry.
    lookup = torch.cat([new_row, new_row.new_full((1,), -1)])
    assignment = lookup[torch.where(kept.assignment >= 0, kept.assignment, order.numel())]
    members = torch.nonzero(assignment >= 0).flatten()
    scores, _ = mean_by_group(video.scores[members, None], assignment[members], order.numel())
    return TokenSet(
        tokens=kept.values[order],
        index=video.grid_index[kept.origin[order]].to(INDEX_DTYPE),
        kind=kept.kind[order].to(KIND_DTYPE),
        size=kept.size[order].to(SIZE_DTYPE),
        grid=video.grid,
        config=config,
        assignment=assignment.to(INDEX_DTYPE),
        scores=scores.flatten(),
    )


def mean_by_group(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    num_groups: int,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of each group's rows, in float32 then cast to the input dtype; member counts, or
    with `weights` the groups' total weights).

    labels: [R] int64 group of each row of tokens [R, d], every group in 0..num_groups-1
    non-empty. weights: [R] positive integers (the sizes of tokens that stand for several
    originals) for the weighted mean sum(w x) / sum(w); None: the plain mean. With weights, a
    group of one row is that row, bit for bit (in float32, (w x) / w is not always x); with all
    weights 1 the result is the plain mean's, bit for bit (x * 1 and the division are the same
    operations in the same order).
    """
    x = tokens.float()
    counts = torch.bincount(labels, minlength=num_groups)
    totals = counts
    if weights is not None:
        totals = torch.zeros(num_groups, dtype=torch.long, device=tokens.device)
        totals.index_add_(0, labels, weights.long())
    sums = torch.zeros(num_groups, tokens.shape[1], dtype=torch.float32, device=tokens.device)
    sums.index_add_(0, labels, x if weights is None else x * weights.to(x.dtype).unsqueeze(1))
    means = sums / totals.unsqueeze(1).to(torch.float32)
    if weights is not None:
        only = torch.zeros(num_groups, dtype=torch.long, device=tokens.device)
        only.scatter_(0, labels, torch.arange(labels.numel(), device=tokens.device))
        means = torch.where((counts == 1).unsqueeze(1), x[only], means)  # `only`: if one member
    return means.to(tokens.dtype), totals
