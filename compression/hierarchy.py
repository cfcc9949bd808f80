"""The hierarchical global pool (issue 14): token sets of consecutive time windows -> one token set.

`pool_token_sets` is the paper's outer stage one level up. Its inputs are token sets (chunk sets
from the outer stage, or earlier results of this function); its output is one `TokenSet` over
their union. One function serves the three uses:

* the video-level set of a long video: the sets of all its chunks;
* an incremental update of a live video: the previous video-level set plus the new chunk sets
  (old chunks are never reprocessed: the previous set already stands for them);
* a question over a time range: the chunk sets that overlap the range (the caller picks them).

The method, on the union U of the inputs' kept tokens:

1. the rows of all inputs in time order, each row's t re-based to its grid step's position in
   the union (T = the inputs' grid steps together; frames in time order);
2. the global retention pool (METHOD.md section 2) over U, ordered by the stored contribution
   scores, at the budget of the ORIGINAL tokens the union stands for:
   M = config.budget(sum of the inputs' N), (M_s, M_c) = config.split_budget(the same);
3. DPC-KNN refill (section 3) of the recycled rows up to M, exactly as the flat stage runs it
   (`compression.outer_stage.pool_and_clusters`, the same code path), except that a cluster's
   token, size and score are SIZE-WEIGHTED over its members (below).

Decisions (recorded for the issue):

* Weighted means. A row may stand for many originals (its `size`). A cluster token is
  sum(size_i x_i) / sum(size_i), its size sum(size_i), its score the same weighted mean of the
  members' scores (so a score stays "the mean contribution of the originals a row stands for" at
  every level, see `compression.kept_tokens`). A cluster of one member IS that member, bit for
  bit. With all sizes 1 the weighted mean is the flat stage's plain mean bit for bit, so pooling a
  "full" token set (every token, size 1) gives exactly `compress` on the same tokens.
* Density and centres ignore sizes: DPC-KNN sees each row once, whatever it stands for (the
  paper defines the clustering on tokens, and `dpc_knn` is called as the flat stage calls it).
* Kinds: a row that stands for exactly one input row (a pool member, or a one-member cluster)
  keeps that row's kind; a cluster of several rows is CLUSTER. So SELECTED still means "an
  original token as it was". (The flat stage labels a one-member refill cluster CLUSTER; pooling
  a "full" set therefore differs from `compress` in exactly those rows' kind, nothing else.)
  A cluster sits at its centre's (t, h, w), as in the flat stage.
* Budget cap: the output has min(M, |U|) rows. The union can hold fewer tokens than M (chunk
  budgets rounded down: 8 chunks of 1,568 tokens at 2% keep 8 x 31 = 248 < 251 = M); nothing is
  made up.
* No-op when the union fits: if |U| <= M, the pool and the refill keep every row as it is
  (n_clusters = |U| - |P| = the number of recycled rows, so each recycled row is a centre and
  its own one-member cluster). Hence ONE INPUT THAT IS AN OUTER-STAGE RESULT COMES BACK BIT FOR
  BIT: its M rows are exactly the budget of its N. This is not a special case in the code: the
  pool and the refill run, and reproduce it.
* Consequence to know: chunks compressed at the video's own ratio r hold together about M
  tokens, so the video-level pool only trims rounding; it does not undo redundancy ACROSS
  chunks (a static scene keeps one token per chunk, where the flat pool keeps one in all). To
  let the video level choose, chunks must be compressed at a higher ratio than the video's (a
  job setting, not a method one): bench/bench_hierarchy.py measures the agreement with the
  flat pool both ways.
* Inputs: at least one; all with scores (sets made before `TokenSet.scores` cannot be pooled:
  re-index them), with frame timestamps (len = a whole number g of frames per grid step: 1 for
  LLaVA-OneVision, 2 for Qwen2.5-VL, the same g for all), the same model id, hidden size,
  H x W grid, token dtype and device, and time spans that do not overlap (each input's first
  timestamp after the previous one's last): an input already inside a previous video-level set
  would be counted twice. They may come in any order; ValueError otherwise.
* The config is the video's (`config.method` must be "ours": the baselines have no
  hierarchical form here). The inputs' own configs are not compared: a chunk may have been
  compressed at another ratio.
* Metadata: video_id, source_uri and content_hash are kept when all inputs agree, else empty
  (fill them with `with_metadata`); extras are the earliest input's: they are model-specific
  and the method cannot merge them (Qwen2.5-VL's seconds_per_grid_t is per input; a plug-in
  whose chunks differ must recompute it from the union's timestamps).
* `assignment` maps every original token of every input (chained through the input's own
  assignment) to its output row or -1; None when any input has none.

Cost: the pool over |U| ~ M rows, and DPC-KNN over the recycled rows, quadratic in their number
(~ the video's budget so far): an incremental update grows with the video's length, far below a
flat pass over all N tokens (quadratic in N). Memory holds token sets only, never frames.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import torch

from compression.config import CompressionConfig
from compression.kept_tokens import VideoTokens, mean_by_group
from compression.outer_stage import pool_and_clusters
from compression.token_set import (
    INDEX_DTYPE,
    KIND_DTYPE,
    SIZE_DTYPE,
    TokenKind,
    TokenSet,
)


def pool_token_sets(token_sets: Sequence[TokenSet], config: CompressionConfig) -> TokenSet:
    """One token set over the union of `token_sets` (see the module docstring), pooled to the
    budget of the original tokens they stand for under `config` (the video's)."""
    ordered = _checked_in_time_order(token_sets, config)
    union = _Union(ordered)
    rows = torch.arange(union.count, device=union.tokens.device)
    video = VideoTokens.from_inputs(
        union.tokens,
        union.scores,
        torch.stack([rows, torch.zeros_like(rows), torch.zeros_like(rows)], dim=1),
        grid=(union.count, 1, 1),
    )
    kept = pool_and_clusters(video, config, represented=union.represented)

    groups = kept.origin.numel()
    members = torch.nonzero(kept.assignment >= 0).flatten()
    labels = kept.assignment[members]
    weights = union.size[members]
    values, sizes = mean_by_group(union.tokens[members], labels, groups, weights)
    scores, _ = mean_by_group(union.scores[members, None], labels, groups, weights)
    alone = torch.bincount(labels, minlength=groups) == 1
    kind = torch.where(alone, union.kind[kept.origin], int(TokenKind.CLUSTER))

    order = torch.argsort(kept.origin)  # union rows are in time order
    new_row = torch.empty_like(order)
    new_row[order] = torch.arange(groups, device=order.device)
    return TokenSet(
        tokens=values[order],
        index=union.index[kept.origin[order]].to(INDEX_DTYPE),
        kind=kind[order].to(KIND_DTYPE),
        size=sizes[order].to(SIZE_DTYPE),
        scores=scores[order].flatten(),
        grid=union.grid,
        config=config,
        assignment=union.chained_assignment(kept.assignment, new_row),
        model_id=ordered[0].model_id,
        video_id=_common(ts.video_id for ts in ordered),
        source_uri=_common(ts.source_uri for ts in ordered),
        content_hash=_common(ts.content_hash for ts in ordered),
        frame_timestamps=tuple(t for ts in ordered for t in ts.frame_timestamps),
        extras=dict(ordered[0].extras),
    )


class _Union:
    """The rows of token sets in time order, with t re-based to the union's grid steps.

    tokens [U, d], scores [U] float32, size / kind [U] int64, index [U, 3] int64 (t, h, w) in
    the union grid; `union_row[p]`: the union row of row p of the inputs concatenated (row j of
    input i is p = row_offsets[i] + j); `grid` = (sum T, H, W); `represented` = the original
    tokens the inputs stand for.
    """

    def __init__(self, ordered: list[TokenSet]) -> None:
        self.inputs = ordered
        _, height, width = ordered[0].grid
        steps = [ts.grid[0] for ts in ordered]
        self.grid = (sum(steps), height, width)
        self.represented = sum(ts.original_count for ts in ordered)
        device = ordered[0].tokens.device
        step_offsets = torch.tensor([0, *steps[:-1]], device=device).cumsum(0)
        self.row_offsets = [0, *torch.tensor([ts.kept_count for ts in ordered]).cumsum(0).tolist()]
        index = torch.cat(
            [
                ts.index.long() + torch.stack([offset, offset.new_zeros(()), offset.new_zeros(())])
                for ts, offset in zip(ordered, step_offsets, strict=True)
            ]
        )
        linear = (index[:, 0] * height + index[:, 1]) * width + index[:, 2]
        position = torch.sort(linear, stable=True).indices  # already sorted for outer-stage sets
        if bool((linear[position][1:] == linear[position][:-1]).any()):
            raise ValueError("two rows of one token set share a (t, h, w) index")
        self.count = position.numel()
        self.union_row = torch.empty_like(position)
        self.union_row[position] = torch.arange(self.count, device=device)
        self.index = index[position]
        self.tokens = torch.cat([ts.tokens for ts in ordered])[position]
        self.scores = torch.cat([ts.scores for ts in ordered])[position]  # type: ignore[misc]
        self.size = torch.cat([ts.size for ts in ordered]).long()[position]
        self.kind = torch.cat([ts.kind for ts in ordered]).long()[position]

    def chained_assignment(
        self, union_assignment: torch.Tensor, new_row: torch.Tensor
    ) -> torch.Tensor | None:
        """Output row (or -1) of every original token of every input, in the union's original
        order, through each input's own assignment; None when an input has none.

        union_assignment: [U] the kept row of each union row (-1: dropped); new_row: the output
        row of each kept row."""
        if any(ts.assignment is None for ts in self.inputs):
            return None
        lookup = torch.cat([new_row, new_row.new_full((1,), -1)])
        out_row = lookup[torch.where(union_assignment >= 0, union_assignment, new_row.numel())]
        parts = []
        for ts, offset in zip(self.inputs, self.row_offsets[:-1], strict=True):
            own = ts.assignment.long()  # type: ignore[union-attr]
            union_rows = self.union_row[torch.where(own >= 0, own + offset, 0)]
            parts.append(torch.where(own >= 0, out_row[union_rows], -1))
        return torch.cat(parts).to(INDEX_DTYPE)


def _checked_in_time_order(
    token_sets: Sequence[TokenSet], config: CompressionConfig
) -> list[TokenSet]:
    """The inputs sorted by time; ValueError on anything `pool_token_sets` cannot pool."""
    if not isinstance(config, CompressionConfig):
        raise ValueError(f"config must be a CompressionConfig, got {type(config).__name__}")
    if config.method != "ours":
        raise ValueError(
            f"the hierarchical pool is the paper's method one level up; method "
            f"{config.method!r} has no hierarchical form"
        )
    token_sets = list(token_sets)
    if not token_sets:
        raise ValueError("pool_token_sets needs at least one token set")
    for ts in token_sets:
        if not isinstance(ts, TokenSet):
            raise ValueError(f"pool_token_sets takes TokenSets, got {type(ts).__name__}")
        if ts.scores is None:
            raise ValueError(
                "a token set without scores (made before they were kept) cannot be pooled "
                "again: compress its video anew"
            )
        steps = ts.grid[0]
        if not ts.frame_timestamps or len(ts.frame_timestamps) % steps:
            raise ValueError(
                f"every token set needs its frame timestamps, a whole number per grid step; "
                f"got {len(ts.frame_timestamps)} for {steps} steps"
            )
    shared = {
        "model_id": lambda ts: ts.model_id,
        "hidden size": lambda ts: ts.hidden_size,
        "H x W grid": lambda ts: ts.grid[1:],
        "token dtype": lambda ts: ts.tokens.dtype,
        "device": lambda ts: ts.tokens.device,
        "frames per grid step": lambda ts: ts.frame_count // ts.grid[0],
    }
    for name, of in shared.items():
        values = {of(ts) for ts in token_sets}
        if len(values) > 1:
            raise ValueError(
                f"token sets to pool must share their {name}; got {sorted(map(str, values))}"
            )
    if not all(math.isfinite(t) for ts in token_sets for t in ts.frame_timestamps):
        raise ValueError("frame timestamps must be finite")
    ordered = sorted(token_sets, key=lambda ts: min(ts.frame_timestamps))
    for earlier, later in itertools.pairwise(ordered):
        if min(later.frame_timestamps) <= max(earlier.frame_timestamps):
            raise ValueError(
                f"token sets to pool must not overlap in time: one spans "
                f"{min(earlier.frame_timestamps)}-{max(earlier.frame_timestamps)} s, another "
                f"starts at {min(later.frame_timestamps)} s"
            )
    return ordered


def _common(values: Iterable[str]) -> str:
    """The value all inputs share, or "" when they differ."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else ""


def agreement(first: TokenSet, second: TokenSet) -> dict[str, float]:
    """How alike two token sets of the same tokens are (e.g. flat vs hierarchical), as Jaccard
    indices |A & B| / |A | B| in [0, 1]:

    positions: of the original (t, h, w) positions the rows sit at (a cluster: its centre's);
    selected: of the positions of the SELECTED rows (original tokens kept as they were);
    sources: of the rows as the sets of original tokens they stand for (a row counts as shared
        only when both sets have a row standing for exactly the same originals; needs both
        assignments).
    """
    if first.grid != second.grid:
        raise ValueError(f"agreement needs the same grid, got {first.grid} and {second.grid}")
    if first.assignment is None or second.assignment is None:
        raise ValueError("agreement needs both token sets' assignment")

    def jaccard(a: set, b: set) -> float:
        return len(a & b) / len(a | b) if a | b else 1.0

    def positions(ts: TokenSet, rows: torch.Tensor | None = None) -> set[int]:
        _, height, width = ts.grid
        index = ts.index.long() if rows is None else ts.index[rows].long()
        return set(((index[:, 0] * height + index[:, 1]) * width + index[:, 2]).tolist())

    def sources(ts: TokenSet) -> set[tuple[int, ...]]:
        assignment = ts.assignment.long().cpu()  # type: ignore[union-attr]
        originals = torch.argsort(assignment, stable=True)
        counts = torch.bincount(assignment[assignment >= 0], minlength=ts.kept_count)
        kept = originals[int((assignment < 0).sum()) :]
        return {tuple(group.tolist()) for group in kept.split(counts.tolist())}

    def selected(ts: TokenSet) -> set[int]:
        return positions(ts, ts.kind == int(TokenKind.SELECTED))

    return {
        "positions": jaccard(positions(first), positions(second)),
        "selected": jaccard(selected(first), selected(second)),
        "sources": jaccard(sources(first), sources(second)),
    }
