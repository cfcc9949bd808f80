"""HoliTom's outer stage as a baseline (Shao et al., NeurIPS 2025, github cokeshao/HoliTom).

Read from `holitom/llava_arch.py` at commit e9b2972 (lines cited as L<n>); the in-LLM merge
(last-token attention at K = 18, keep 50%) is not part of the outer stage and is not here.

The algorithm, per video of F frames of C = H * W tokens:

1. Temporal segmentation (L53-98, L377-384). sim[t, c] = cosine of cell c in frames t and t+1.
   A window [s, e] of frames has static cells = the cells with sim > tau at every step inside
   it; merging them over time removes count(s, e) * (e - s) tokens. Dynamic programming over
   the frames picks the windows (at most `max_window` frames) that remove the most tokens:
   dp[i] = max(dp[i-1], max over window sizes 2..min(i+1, max_window) of dp[j] +
   removed(j+1, i)), the first (smallest) window winning ties, frame i alone by default.
2. Static tokens (L278-311): in a window of w > 1 frames every static cell becomes one token,
   the plain mean of its w frames; every other cell stays dynamic in each frame.
3. Budget (L388-391). HoliTom raises its ratio to r' = r N / R, R = the token count after the
   temporal merge, and keeps round(r' * static count) static tokens per window (L201) and
   ceil(r' * dynamic count) tokens per frame (L154). Decision: the same proportional share
   r' = M / R, apportioned so the total is exactly M: the groups (per window: its static
   tokens, then each frame's dynamic tokens, in time order) get round(cumulative quota)
   differences, i.e. floor or ceil of each group's quota, extras spread evenly in time.
   HoliTom's own rounding keeps a few tokens more than r N (ceil per frame: 32 frames of 196
   dynamic tokens at r = 2% keep 128, not 125). When R < M (a very static video at a high
   ratio) HoliTom's r' is capped at 1 (L389) and it keeps all R tokens: so do we, fewer than M.
4. Dynamic tokens of a frame with budget b (L152-167): the b of highest contribution (kind
   SELECTED); its other dynamic tokens are dropped. HoliTom's D, the share of b it would give
   to DPC-KNN "contextual" tokens instead, is 0 in its code (L353) and in all its scripts, and
   its D > 0 branch fails in its own code (L174 masks the [1, n] positions with a [1, n, 1]
   mask), so it is not offered.
5. Static tokens of a window with budget b (L199-213): DPC-KNN with b centres on the static
   tokens, k = min(K, b).
6. DPC-KNN as HoliTom's `cluster_dpc_knn` (L29-51): distances |x_i - x_j| / sqrt(dim); the k
   nearest neighbours include the token itself; density = exp(-mean squared distance to
   them); delta = distance to the nearest denser token, and for the densest one the largest
   distance between any two tokens of the group; centres = the b largest delta * density.
   Every other token joins its nearest centre (L100-150) and a merged token is
   beta * centre + (1 - beta) * mean(its other members), or the centre alone when it has no
   other member (the weighting HoliTom runs by default: NO_BETA unset, L137).

Published defaults (L348-356): T (tau) = 0.8, BETA = 0.6, K = 7, MAX_WINDOW_SIZE = 1024, D = 0;
RETAIN_RATIO is our retention_ratio. Its scripts (scripts/eval_ov-7b_holitom.sh) use T = 0.65
at 10% retention and 0.80 at 15-25%; HOLITOM_k/HOLITOM_r are the in-LLM stage.

Fitting our framework (decisions):

* Scores: HoliTom ranks dominant tokens by the vision tower's last-layer attention, averaged
  over heads and queries (its siglip_encoder.py); we use the pipeline's contribution scores
  (METHOD.md section 1, the same definition for SigLIP).
* Positions: a dominant token keeps its own (t, h, w); a static token takes its centre's cell
  in the FIRST frame of its window (where HoliTom puts it with the grid newline layout,
  L256-265). No collision is possible: a window's static and dynamic cells are disjoint and
  windows do not overlap. Kind: dominant SELECTED, static CLUSTER; size = the original tokens
  it stands for (a static token: its cells times the window length), and `assignment` maps each
  of them to it.
* Determinism: HoliTom adds uniform noise * 1e-6 to the densities to break ties; we break
  them by index instead (of equal densities the earlier token counts as denser), and every
  other tie by index too (stable sorts; the earlier centre wins a distance tie, as argmin does).
* Numerics: similarities, distances and merges in float32 whatever the token dtype (HoliTom
  computes the temporal similarities and the merges in the model dtype, bf16); the density
  score is ranked as log(delta) + log(density) in float64, which orders tokens exactly as
  delta * density but cannot underflow: exp(-mean squared distance) is 0 in float32 beyond a
  mean of ~87, and below density ~1e-6 HoliTom's noise already outweighs the density, so its
  ranking of sparse tokens is random where ours follows the noise-free score.

`apportion` and `OuterTokens` are shared with the FastVID baseline, whose budget split is built
the same way; both take the density-peak ranking (step 6) from `compression.dpc_knn.peak_order`
(its "peers" convention, the one place that ranking is computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compression.config import CompressionConfig
from compression.dpc_knn import peak_order
from compression.kept_tokens import KeptTokens, VideoTokens
from compression.retention_pool import contribution_order, unit_rows
from compression.token_set import TokenKind


def holitom(video: VideoTokens, budget: int, config: CompressionConfig) -> KeptTokens:
    """HoliTom's outer stage on validated tokens: exactly min(budget, R) kept tokens."""
    frames, height, width = video.grid
    cells = height * width
    x = video.tokens.reshape(frames, cells, -1)
    static_link = consecutive_similarity(x) > config.holitom_tau
    windows = static_windows(static_link, config.holitom_max_window)
    groups = _groups(windows, static_link)
    sizes = [group.cells.numel() for group in groups]
    counts = apportion(sizes, min(budget, sum(sizes)))
    kept = OuterTokens(video)
    for group, count in zip(groups, counts, strict=True):
        if count == 0:
            continue
        if group.static:
            _add_static(kept, video, group, count, config)
        else:
            _add_dynamic(kept, video, group.frames[0] * cells + group.cells, count)
    return kept.result()


def consecutive_similarity(x: torch.Tensor) -> torch.Tensor:
    """[F-1, C] float32 cosine of every cell between frames t and t+1 of x [F, C, d]."""
    frames, cells, dim = x.shape
    unit = unit_rows(x.reshape(frames * cells, dim)).reshape(frames, cells, dim)
    return (unit[:-1] * unit[1:]).sum(dim=-1)


def static_windows(static_link: torch.Tensor, max_window: int) -> list[tuple[int, int]]:
    """HoliTom's windows (first frame, last frame), in time order, covering every frame once.

    static_link [F-1, C] bool: cell c is similar between frames t and t+1.
    """
    frames = static_link.shape[0] + 1
    static_count = torch.zeros(frames, frames, dtype=torch.long, device=static_link.device)
    for start in range(frames - 1):
        # cells static over start..end, for end = start+1 .. F-1
        run = torch.cumprod(static_link[start:].long(), dim=0)
        static_count[start, start + 1 :] = run.sum(dim=1)
    count = static_count.tolist()
    best = [0] * frames
    window_start = [0] * frames
    for i in range(frames):
        best[i], window_start[i] = (best[i - 1] if i else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            first = i - size + 1
            removed = (best[first - 1] if first else 0) + count[first][i] * (size - 1)
            if removed > best[i]:
                best[i], window_start[i] = removed, first
    windows = []
    last = frames - 1
    while last >= 0:
        windows.append((window_start[last], last))
        last = window_start[last] - 1
    return windows[::-1]


def apportion(sizes: list[int], total: int) -> list[int]:
    """Split `total` <= sum(sizes) over groups in proportion to their sizes, exactly.

    Group i gets round(S_i * total / R) - round(S_{i-1} * total / R) (S: cumulative sizes, R:
    their sum, halves rounded up, integer arithmetic), which is the floor or the ceil of its
    quota size_i * total / R and never more than size_i; equal groups' extras spread evenly.
    """
    whole = sum(sizes)
    if not 0 <= total <= whole:
        raise ValueError(f"cannot apportion {total} over groups of {whole} tokens")
    shares, cumulative, previous = [], 0, 0
    for size in sizes:
        cumulative += size
        point = (2 * cumulative * total + whole) // (2 * whole)
        shares.append(point - previous)
        previous = point
    return shares


def squared_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """float32 |x_i - y_j|^2 (y defaults to x, whose diagonal is then exactly 0)."""
    x = x.float()
    other = x if y is None else y.float()
    d2 = x @ other.T
    d2.mul_(-2.0).add_((x * x).sum(dim=1)[:, None]).add_((other * other).sum(dim=1)[None, :])
    d2.clamp_min_(0.0)
    if y is None:
        d2.fill_diagonal_(0.0)
    return d2


def merge_into_centres(
    x: torch.Tensor, centres: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HoliTom's merge: (cluster of every row, merged float32 values, member counts).

    Every row joins its nearest centre (earlier centre on ties; a centre joins itself); a
    merged token is beta * centre + (1 - beta) * mean(other members), or the centre alone.
    """
    x = x.float()
    labels = squared_distances(x, x[centres]).argmin(dim=1)
    labels[centres] = torch.arange(centres.numel(), device=x.device)
    counts = torch.bincount(labels, minlength=centres.numel())
    others = torch.zeros(centres.numel(), x.shape[1], device=x.device).index_add_(0, labels, x)
    others -= x[centres]
    n_others = (counts - 1).unsqueeze(1)
    blended = beta * x[centres] + (1.0 - beta) * others / n_others.clamp_min(1)
    return labels, torch.where(n_others > 0, blended, x[centres]), counts


class OuterTokens:
    """Accumulates an outer method's kept tokens group by group, then gives `KeptTokens`."""

    def __init__(self, video: VideoTokens) -> None:
        self._dtype = video.tokens.dtype
        self._device = video.tokens.device
        self._assignment = torch.full((video.count,), -1, dtype=torch.long, device=self._device)
        self._origin: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._kind: list[torch.Tensor] = []
        self._size: list[torch.Tensor] = []
        self._rows = 0

    def add(
        self,
        origin: torch.Tensor,
        values: torch.Tensor,
        kind: TokenKind,
        members: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        size: torch.Tensor | None = None,
    ) -> None:
        """Add tokens at `origin` (original rows) with float32 `values`.

        members/labels: the original rows each new token stands for (labels[i] is the new token
        of members[i]; default: each token stands for its origin). size: default the number of
        members per token.
        """
        count = origin.numel()
        if members is None or labels is None:
            members, labels = origin, torch.arange(count, device=self._device)
        self._assignment[members] = labels + self._rows
        if size is None:
            size = torch.bincount(labels, minlength=count)
        self._origin.append(origin)
        self._values.append(values.float())
        self._kind.append(torch.full((count,), int(kind), dtype=torch.long, device=self._device))
        self._size.append(size)
        self._rows += count

    def result(self) -> KeptTokens:
        return KeptTokens(
            origin=torch.cat(self._origin),
            values=torch.cat(self._values).to(self._dtype),
            kind=torch.cat(self._kind),
            size=torch.cat(self._size),
            assignment=self._assignment,
        )


@dataclass(frozen=True)
class _Group:
    """Tokens that share one budget: a window's static cells, or one frame's dynamic cells."""

    static: bool
    frames: tuple[int, int]
    cells: torch.Tensor


def _groups(windows: list[tuple[int, int]], static_link: torch.Tensor) -> list[_Group]:
    cells = static_link.shape[1]
    groups = []
    for first, last in windows:
        static = torch.zeros(cells, dtype=torch.bool, device=static_link.device)
        if last > first:
            static = static_link[first:last].all(dim=0)
            groups.append(_Group(True, (first, last), torch.nonzero(static).flatten()))
        dynamic = torch.nonzero(~static).flatten()
        if dynamic.numel():
            groups.extend(_Group(False, (t, t), dynamic) for t in range(first, last + 1))
    return groups


def _add_static(
    kept: OuterTokens, video: VideoTokens, group: _Group, count: int, config: CompressionConfig
) -> None:
    first, last = group.frames
    cells = video.grid[1] * video.grid[2]
    rows = (torch.arange(first, last + 1, device=group.cells.device)[:, None] * cells) + group.cells
    means = video.tokens[rows.flatten()].float().reshape(*rows.shape, -1).mean(dim=0)
    centres = _centres(means, count, config.holitom_k)
    labels, values, counts = merge_into_centres(means, centres, config.holitom_beta)
    kept.add(
        origin=rows[0, centres],
        values=values,
        kind=TokenKind.CLUSTER,
        members=rows.flatten(),
        labels=labels.repeat(rows.shape[0]),
        size=counts * rows.shape[0],
    )


def _add_dynamic(kept: OuterTokens, video: VideoTokens, rows: torch.Tensor, count: int) -> None:
    dominant = rows[torch.sort(contribution_order(video.scores[rows])[:count]).values]
    kept.add(dominant, video.tokens[dominant], TokenKind.SELECTED)


def _centres(x: torch.Tensor, count: int, k_cap: int) -> torch.Tensor:
    """HoliTom's DPC-KNN centres (ascending rows of x): k = min(K, count) (L203)."""
    return torch.sort(peak_order(x.float(), min(k_cap, count))[:count]).values
