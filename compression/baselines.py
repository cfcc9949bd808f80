"""Outer-stage baselines, on the same tokens and the same budget M as the paper's method.

Each takes a validated `VideoTokens`, the config and the budget M, and returns `KeptTokens`
(`compression.compress` dispatches here on `config.method`). The rules, where the baselines'
own papers leave room:

* "full": every token, kind SELECTED, size 1.
* "random": M tokens drawn uniformly without replacement (CPU generator seeded with
  `config.seed`, so the pick is the same on every device), kind SELECTED, size 1, the rest dropped.
* "uniform": the budget is split over frames as evenly as possible (`frame_budgets`); frame t's
  H x W grid is tiled into b_t rectangles (`region_labels`) and each rectangle average-pooled into
  one token, kind CLUSTER, size = its cell count, placed at its central cell.
* "visionzip" (VisionZip, github dvlab-research/VisionZip, per frame, same per-frame split):
  round(visionzip_dominant_ratio * b_t) dominant tokens = the frame's highest scores (kind
  SELECTED); the b_t - n_dom contextual tokens: VisionZip's uniformly spaced targets among the
  remaining tokens in original order (every (remaining // n_ctx)-th one), every other remaining
  token joins the target of highest cosine similarity (the earlier target on ties), and a
  contextual token is computed as VisionZip computes it (visionzip/clip_encoder.py at 3151f6d,
  L67-80): target + mean(its other members), or the target alone when it has none. It is NOT a
  mean: its scale is about twice an original token's. Kind CLUSTER, at the target's (t, h, w),
  size = target + members. Arithmetic in float32 (VisionZip: the model dtype). VisionZip ranks
  by the encoder's CLS attention and compares the attention keys; we use the contribution
  scores and the tokens themselves.
* "holitom", "fastvid": the peers' outer stages, see compression/holitom.py and
  compression/fastvid.py.
* "ours_no_cluster": the retention pool with capacity M (no cluster refill); if candidates run
  out first, the highest-contribution recycled tokens fill the budget; kind SELECTED, size 1.
"""

from __future__ import annotations

import math

import torch

from compression.config import CompressionConfig
from compression.fastvid import fastvid
from compression.holitom import holitom
from compression.kept_tokens import KeptTokens, VideoTokens, mean_by_group
from compression.retention_pool import contribution_order, retention_pool, unit_rows
from compression.token_set import TokenKind


def full(video: VideoTokens) -> KeptTokens:
    rows = torch.arange(video.count, device=video.tokens.device)
    return _picked(video, rows)


def random_pick(video: VideoTokens, budget: int, seed: int) -> KeptTokens:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(video.count, generator=generator)[:budget]
    return _picked(video, torch.sort(rows).values.to(video.tokens.device))


def retention_pool_only(video: VideoTokens, budget: int, tau: float) -> KeptTokens:
    pool = retention_pool(video.tokens, video.scores, budget, tau)
    if pool.numel() < budget:
        in_pool = torch.zeros(video.count, dtype=torch.bool, device=pool.device)
        in_pool[pool] = True
        order = contribution_order(video.scores)
        rest = order[~in_pool[order]][: budget - pool.numel()]
        pool = torch.cat([pool, rest])
    return _picked(video, pool)


def uniform_pooling(video: VideoTokens, budget: int) -> KeptTokens:
    frames, height, width = video.grid
    per_frame = height * width
    labels = torch.empty(video.count, dtype=torch.long)
    centres: list[torch.Tensor] = []
    offset = 0
    for t, regions in enumerate(frame_budgets(budget, frames)):
        frame_rows = slice(t * per_frame, (t + 1) * per_frame)
        if regions == 0:
            labels[frame_rows] = -1
            continue
        frame_labels, frame_centres = region_labels(height, width, regions)
        labels[frame_rows] = frame_labels + offset
        centres.append(frame_centres + t * per_frame)
        offset += regions
    labels = labels.to(video.tokens.device)
    kept = labels >= 0
    means, sizes = mean_by_group(video.tokens[kept], labels[kept], offset)
    return KeptTokens(
        origin=torch.cat(centres).to(video.tokens.device),
        values=means,
        kind=torch.full_like(sizes, TokenKind.CLUSTER),
        size=sizes,
        assignment=labels,
    )


def visionzip(video: VideoTokens, budget: int, dominant_ratio: float) -> KeptTokens:
    frames, height, width = video.grid
    per_frame = height * width
    device = video.tokens.device
    assignment = torch.full((video.count,), -1, dtype=torch.long, device=device)
    origin, values, kind, size = [], [], [], []
    for t, frame_budget in enumerate(frame_budgets(budget, frames)):
        if frame_budget == 0:
            continue
        first = t * per_frame
        rows = torch.arange(first, first + per_frame, device=device)
        n_dominant = min(frame_budget, round(dominant_ratio * frame_budget))
        n_context = frame_budget - n_dominant
        by_score = contribution_order(video.scores[rows])
        dominant = torch.sort(by_score[:n_dominant]).values + first
        remaining = torch.sort(by_score[n_dominant:]).values + first
        base = sum(o.numel() for o in origin)
        assignment[dominant] = torch.arange(base, base + n_dominant, device=device)
        origin.append(dominant)
        values.append(video.tokens[dominant])
        kind.append(torch.full((n_dominant,), int(TokenKind.SELECTED), device=device))
        size.append(torch.ones(n_dominant, dtype=torch.long, device=device))
        if n_context == 0:
            continue
        step = max(1, remaining.numel() // n_context)
        target_at = torch.arange(0, remaining.numel(), step, device=device)[:n_context]
        targets = remaining[target_at]
        unit = unit_rows(video.tokens[remaining])
        nearest = (unit @ unit[target_at].T).argmax(dim=1)
        nearest[target_at] = torch.arange(n_context, device=device)  # a target is its own
        assignment[remaining] = nearest + base + n_dominant
        origin.append(targets)
        values.append(_contextual_tokens(video.tokens[remaining], nearest, target_at))
        sizes = torch.bincount(nearest, minlength=n_context)
        kind.append(torch.full((n_context,), int(TokenKind.CLUSTER), device=device))
        size.append(sizes)
    return KeptTokens(
        origin=torch.cat(origin),
        values=torch.cat(values),
        kind=torch.cat(kind),
        size=torch.cat(size),
        assignment=assignment,
    )


def _contextual_tokens(
    tokens: torch.Tensor, nearest: torch.Tensor, target_at: torch.Tensor
) -> torch.Tensor:
    """VisionZip's contextual tokens: target + mean of the other rows that joined it (or the
    target alone), in float32, cast back to the tokens' dtype."""
    x = tokens.float()
    others = torch.zeros(target_at.numel(), x.shape[1], dtype=torch.float32, device=x.device)
    others.index_add_(0, nearest, x).sub_(x[target_at])
    n_others = torch.bincount(nearest, minlength=target_at.numel()) - 1
    return (x[target_at] + others / n_others.clamp_min(1).unsqueeze(1)).to(tokens.dtype)


def run_baseline(video: VideoTokens, config: CompressionConfig) -> KeptTokens:
    """The kept tokens of the baseline `config.method` (any method but "ours")."""
    budget = config.budget(video.count)
    if config.method == "full":
        return full(video)
    if config.method == "random":
        return random_pick(video, budget, config.seed)
    if config.method == "ours_no_cluster":
        return retention_pool_only(video, budget, config.tau)
    if config.method == "uniform":
        return uniform_pooling(video, budget)
    if config.method == "visionzip":
        return visionzip(video, budget, config.visionzip_dominant_ratio)
    if config.method == "holitom":
        return holitom(video, budget, config)
    if config.method == "fastvid":
        return fastvid(video, budget, config)
    raise ValueError(f"{config.method!r} is not a baseline")


def frame_budgets(total: int, frames: int) -> list[int]:
    """Split `total` over `frames` as evenly as possible: every frame gets total // frames, and
    the total % frames extra tokens go to frames spread evenly over time (floor((j + 1/2) F / e)).
    """
    base, extra = divmod(total, frames)
    budgets = [base] * frames
    for j in range(extra):
        budgets[math.floor((j + 0.5) * frames / extra)] += 1
    return budgets


def region_labels(height: int, width: int, regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile an H x W grid into `regions` rectangles: (region of every cell, raster; central cell
    of every region). Rows are cut into g horizontal bands (g ~ sqrt(regions * H / W), so the
    rectangles are about square, and at least ceil(regions / W) so a band never needs more
    columns than W), band i is cut into an even share of the regions, every cut as even as
    possible (boundaries floor(j * L / parts)).
    """
    if not 1 <= regions <= height * width:
        raise ValueError(f"cannot tile a {height}x{width} grid into {regions} regions")
    bands = round(math.sqrt(regions * height / width))
    bands = max(math.ceil(regions / width), min(height, regions, bands), 1)
    labels = torch.empty(height, width, dtype=torch.long)
    centres: list[int] = []
    label = 0
    for i in range(bands):
        top, bottom = _cut(height, bands, i)
        band_regions = _cut(regions, bands, i)
        columns = band_regions[1] - band_regions[0]
        for j in range(columns):
            left, right = _cut(width, columns, j)
            labels[top:bottom, left:right] = label
            centres.append((top + (bottom - top - 1) // 2) * width + left + (right - left - 1) // 2)
            label += 1
    return labels.flatten(), torch.tensor(centres, dtype=torch.long)


def _cut(length: int, parts: int, i: int) -> tuple[int, int]:
    """Bounds of part i when `length` is cut into `parts` near-equal parts."""
    return (i * length) // parts, ((i + 1) * length) // parts


def _picked(video: VideoTokens, rows: torch.Tensor) -> KeptTokens:
    """Kept tokens that are original tokens themselves (kind SELECTED, size 1; others dropped)."""
    assignment = torch.full((video.count,), -1, dtype=torch.long, device=rows.device)
    assignment[rows] = torch.arange(rows.numel(), device=rows.device)
    return KeptTokens(
        origin=rows,
        values=video.tokens[rows],
        kind=torch.full_like(rows, int(TokenKind.SELECTED)),
        size=torch.ones_like(rows),
        assignment=assignment,
    )
