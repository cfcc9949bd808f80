"""Slow references for the peer baselines (VisionZip, HoliTom, FastVID), written from the peers'
published code as read for compression/baselines.py, holitom.py and fastvid.py, with the
decisions those modules document (exact budgets, positions, tie rules). Plain Python loops over
lists of floats (float64), no torch: an independent check of the vectorised code.

Exact comparison with the float32 fast code: the tests feed integer tokens that are multiples
of 60, so that the mean of a window of up to 5 frames is an integer and every squared distance
and neighbour sum is an exact integer in float32 too. The cosines cannot be made exact: where
the result hangs on comparing two cosines of different vectors (or a cosine with a threshold)
that are within 1e-6 of each other, the reference raises `Ambiguous` and the test discards the
input. Merged values are compared with a tolerance.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from hypothesis import strategies as st
from reference import cosine, squared_distance

from compression import TokenKind, TokenSet

Vector = list[float]
NEAR = 1e-6
SCALE = 60  # lcm(1..5): window means of up to 5 frames of multiples of 60 are integers


class Ambiguous(Exception):
    """The float32 fast code could decide this input differently from float64 arithmetic."""


@dataclass(frozen=True)
class Video:
    grid: tuple[int, int, int]
    tokens: list[Vector]
    scores: list[float]

    @property
    def cells(self) -> int:
        return self.grid[1] * self.grid[2]

    def torch_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, h, w = self.grid
        index = [(a, b, c) for a in range(t) for b in range(h) for c in range(w)]
        return torch.tensor(self.tokens), torch.tensor(self.scores), torch.tensor(index)


@st.composite
def video_like(draw: st.DrawFn, max_frames: int = 5, max_side: int = 3) -> Video:
    """Integer tokens (multiples of SCALE) where each frame repeats the previous one except for
    some cells (some frames are fresh: scene cuts, some are exact copies: static frames), some
    cells copy others within the frame, and scores repeat (0..4): every tie rule is exercised."""
    frames = draw(st.integers(1, max_frames))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    dim = draw(st.integers(1, 4))
    cells = height * width

    def fresh() -> list[Vector]:
        values = draw(st.lists(st.integers(-2, 2), min_size=cells * dim, max_size=cells * dim))
        return [[float(SCALE * v) for v in values[c * dim : (c + 1) * dim]] for c in range(cells)]

    video = [fresh()]
    for _ in range(frames - 1):
        frame = [list(v) for v in video[-1]]
        kind = draw(st.sampled_from(["copy", "partial", "fresh"]))
        if kind == "fresh":
            frame = fresh()
        elif kind == "partial":
            replacement = fresh()
            for c in draw(st.sets(st.integers(0, cells - 1))):
                frame[c] = replacement[c]
        video.append(frame)
    for t, target, source in draw(
        st.lists(
            st.tuples(
                st.integers(0, frames - 1), st.integers(0, cells - 1), st.integers(0, cells - 1)
            ),
            max_size=3,
        )
    ):
        video[t][target] = list(video[t][source])
    n = frames * cells
    scores = [float(s) for s in draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))]
    return Video((frames, height, width), [v for frame in video for v in frame], scores)


# -- shared pieces -------------------------------------------------------------------------------
class Kept:
    """Kept tokens as (origin, kind, size, value, members) in any order."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, Vector, list[int]]] = []

    def add(self, origin: int, kind: TokenKind, value: Vector, members: list[int], size: int = 0):
        self.rows.append((origin, int(kind), size or len(members), value, members))

    def result(self, n: int) -> dict[str, list]:
        rows = sorted(self.rows)
        assignment = [-1] * n
        for row, (*_, members) in enumerate(rows):
            for m in members:
                assert assignment[m] == -1, "a token is assigned twice"
                assignment[m] = row
        return {
            "origin": [r[0] for r in rows],
            "kind": [r[1] for r in rows],
            "size": [r[2] for r in rows],
            "tokens": [r[3] for r in rows],
            "assignment": assignment,
        }


def apportion(sizes: list[int], total: int) -> list[int]:
    """Group i gets round-half-up(S_i total / R) - round-half-up(S_{i-1} total / R)."""
    whole, cumulative, previous, shares = sum(sizes), 0, 0, []
    for size in sizes:
        cumulative += size
        point = math.floor(Fraction(cumulative * total, whole) + Fraction(1, 2))
        shares.append(point - previous)
        previous = point
    return shares


def by_score(rows: list[int], scores: list[float]) -> list[int]:
    """Rows by descending score, ties by row."""
    return sorted(rows, key=lambda i: (-scores[i], i))


def density_peaks(points: list[Vector], k: int) -> list[int]:
    """Positions in `points` by descending delta * density, as HoliTom's cluster_dpc_knn and
    FastVID's DTM compute them (self among the k nearest; densest: the largest distance of the
    whole group); density ties: the earlier point is denser; score ties: the earlier first.

    The product is compared through its logarithm, log(delta) - mean squared distance, as
    compression/holitom.py decides: exp(-mean squared distance) underflows to 0 for these
    integer tokens (and in the peers' float32 for distant real ones)."""
    n, dim = len(points), len(points[0])
    sq = [[squared_distance(a, b) for b in points] for a in points]
    crowding = [sum(sorted(sq[i])[:k]) / k / dim for i in range(n)]  # -log(density)
    largest = max(max(row) for row in sq)
    log_score = []
    for i in range(n):
        denser = [j for j in range(n) if (crowding[j], j) < (crowding[i], i)]
        nearest = min((sq[i][j] for j in denser), default=largest)
        log_delta = math.log(math.sqrt(nearest / dim)) if nearest else -math.inf
        log_score.append(log_delta - crowding[i])
    finite = sorted(v for v in log_score if math.isfinite(v))
    if any(0 < b - a < 1e-9 * max(1.0, abs(a)) for a, b in itertools.pairwise(finite)):
        raise Ambiguous("two density-peak scores within rounding")
    return sorted(range(n), key=lambda i: (-log_score[i], i))


def most_similar(x: Vector, candidates: list[Vector]) -> int:
    """Position of the candidate of highest cosine with x (the first on ties)."""
    sims = [cosine(x, c) for c in candidates]
    best = max(range(len(sims)), key=lambda c: (sims[c], -c))
    for c, value in enumerate(sims):
        if c != best and abs(value - sims[best]) < NEAR and candidates[c] != candidates[best]:
            raise Ambiguous(f"cosines {value} and {sims[best]}")
    return best


def mean(rows: list[Vector]) -> Vector:
    return [sum(column) / len(rows) for column in zip(*rows, strict=True)]


def blend(a: Vector, wa: float, b: Vector, wb: float) -> Vector:
    return [wa * x + wb * y for x, y in zip(a, b, strict=True)]


def threshold(value: float, tau: float) -> bool:
    if abs(value - tau) < NEAR:
        raise Ambiguous(f"cosine {value} at the threshold {tau}")
    return value > tau


# -- VisionZip -----------------------------------------------------------------------------------
def frame_budgets(total: int, frames: int) -> list[int]:
    base, extra = divmod(total, frames)
    budgets = [base] * frames
    for j in range(extra):
        budgets[math.floor((j + 0.5) * frames / extra)] += 1
    return budgets


def visionzip(video: Video, budget: int, dominant_ratio: float) -> dict[str, list]:
    """Per frame: dominant = top scores; contextual = VisionZip's spaced targets, each the
    target + the mean of the other tokens most similar to it (or the target alone)."""
    kept, cells = Kept(), video.cells
    for t, b in enumerate(frame_budgets(budget, video.grid[0])):
        rows = list(range(t * cells, (t + 1) * cells))
        n_dominant = min(b, round(dominant_ratio * b))
        ranked = by_score(rows, video.scores)
        for i in ranked[:n_dominant]:
            kept.add(i, TokenKind.SELECTED, video.tokens[i], [i])
        n_context = b - n_dominant
        if not n_context:
            continue
        remaining = sorted(ranked[n_dominant:])
        targets = remaining[:: max(1, len(remaining) // n_context)][:n_context]
        members: dict[int, list[int]] = {target: [] for target in targets}
        for i in remaining:
            if i not in members:
                best = most_similar(video.tokens[i], [video.tokens[c] for c in targets])
                members[targets[best]].append(i)
        for target, others in members.items():
            value = video.tokens[target]
            if others:
                value = blend(value, 1.0, mean([video.tokens[i] for i in others]), 1.0)
            kept.add(target, TokenKind.CLUSTER, value, [target, *others])
    return kept.result(len(video.tokens))


# -- HoliTom -------------------------------------------------------------------------------------
def holitom_windows(link: list[list[bool]], frames: int, max_window: int) -> list[tuple[int, int]]:
    """HoliTom's select_static_windows: static counts, dynamic programming, backtracking."""
    cells = len(link[0]) if link else 0

    def removed(first: int, last: int) -> int:
        static = sum(all(link[t][c] for t in range(first, last)) for c in range(cells))
        return static * (last - first)

    dp, start = [0] * frames, [0] * frames
    for i in range(frames):
        best, best_start = (dp[i - 1] if i > 0 else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0) + removed(j + 1, i)
            if value > best:
                best, best_start = value, j + 1
        dp[i], start[i] = best, best_start
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((start[i], i))
        i = start[i] - 1
    return windows[::-1]


def _dpc_merge(
    kept: Kept,
    points: list[Vector],
    origins: list[int],
    members: list[list[int]],
    count: int,
    k: int,
    beta: float,
    weight: int = 1,
) -> None:
    """HoliTom's DPC-KNN (count centres, k = min(K, count)) and merge onto the centres."""
    centres = sorted(density_peaks(points, min(k, count))[:count])
    groups: dict[int, list[int]] = {c: [] for c in centres}
    for i in range(len(points)):
        if i not in groups:
            nearest = min(centres, key=lambda c: (squared_distance(points[i], points[c]), c))
            groups[nearest].append(i)
    for c, others in groups.items():
        value = points[c]
        if others:
            value = blend(value, beta, mean([points[i] for i in others]), 1.0 - beta)
        covered = [m for i in [c, *others] for m in members[i]]
        kept.add(origins[c], TokenKind.CLUSTER, value, covered, weight * (1 + len(others)))


def holitom(
    video: Video,
    budget: int,
    tau: float,
    beta: float,
    k: int,
    max_window: int,
) -> dict[str, list]:
    """Cell similarities to the next frame, HoliTom's windows, groups (a window's static cells,
    each frame's dynamic cells) sharing min(M, R) exactly, static DPC-KNN merge, dynamic top."""
    frames, cells = video.grid[0], video.cells
    tok = video.tokens
    link = [
        [threshold(cosine(tok[t * cells + c], tok[(t + 1) * cells + c]), tau) for c in range(cells)]
        for t in range(frames - 1)
    ]
    groups: list[tuple[str, int, int, list[int]]] = []
    for first, last in holitom_windows(link, frames, max_window):
        static = [
            c for c in range(cells) if last > first and all(link[t][c] for t in range(first, last))
        ]
        dynamic = [c for c in range(cells) if c not in static]
        if static:
            groups.append(("static", first, last, static))
        if dynamic:
            groups.extend(("dynamic", t, t, dynamic) for t in range(first, last + 1))
    sizes = [len(g[3]) for g in groups]
    kept = Kept()
    for (kind, first, last, cell_list), count in zip(
        groups, apportion(sizes, min(budget, sum(sizes))), strict=True
    ):
        if count == 0:
            continue
        if kind == "static":
            frames_in = range(first, last + 1)
            points = [mean([tok[t * cells + c] for t in frames_in]) for c in cell_list]
            members = [[t * cells + c for t in frames_in] for c in cell_list]
            origins = [first * cells + c for c in cell_list]
            _dpc_merge(kept, points, origins, members, count, k, beta, weight=len(frames_in))
            continue
        for i in by_score([first * cells + c for c in cell_list], video.scores)[:count]:
            kept.add(i, TokenKind.SELECTED, tok[i], [i])
    return kept.result(len(tok))


# -- FastVID -------------------------------------------------------------------------------------
def fastvid_segments(video: Video, min_segments: int, tau: float) -> list[tuple[int, int]]:
    frames, cells = video.grid[0], video.cells
    feature = [mean(video.tokens[t * cells : (t + 1) * cells]) for t in range(frames)]
    sims = [cosine(feature[t], feature[t + 1]) for t in range(frames - 1)]
    pairs = [sorted([feature[t], feature[t + 1]]) for t in range(frames - 1)]
    for t in range(frames - 1):
        threshold(sims[t], tau)
        for u in range(t):
            if abs(sims[t] - sims[u]) < NEAR and pairs[t] != pairs[u]:
                raise Ambiguous("two transitions of near-equal similarity")
    lowest = sorted(range(frames - 1), key=lambda t: (sims[t], t))[: min(min_segments, frames) - 1]
    cuts = sorted(set(lowest) | {t for t in range(frames - 1) if sims[t] < tau})
    segments, first = [], 0
    for end in cuts:
        segments.append((first, end))
        first = end + 1
    return [*segments, (first, frames - 1)]


def fastvid(
    video: Video,
    budget: int,
    min_segments: int,
    tau: float,
    context_ratio: float,
    interval: int,
    beta: float,
) -> dict[str, list]:
    """Exact per-frame budgets, FastVID's salient/context split, anchor shares (extras to the
    latest anchor frames, overflow to salient tokens), ATS, DTM with the whole segment merged
    into each anchor frame's anchors; members recorded under the anchor frame of their block."""
    frames, cells, tok = video.grid[0], video.cells, video.tokens
    per_frame = apportion([cells] * frames, budget)
    salient = [b - int(b * context_ratio) for b in per_frame]
    context = [b - s for b, s in zip(per_frame, salient, strict=True)]
    kept = Kept()
    for first, last in fastvid_segments(video, min_segments, tau):
        anchor_frames = list(range(last, first - 1, -interval))
        share, extra = divmod(sum(context[first : last + 1]), len(anchor_frames))
        wanted = [share + (j < extra) for j in range(len(anchor_frames))]
        anchors = [min(w, cells - salient[f]) for w, f in zip(wanted, anchor_frames, strict=True)]
        excess = sum(wanted) - sum(anchors)
        for t in range(first, last + 1):
            at = anchors[anchor_frames.index(t)] if t in anchor_frames else 0
            add = min(excess, cells - salient[t] - at)
            salient[t], excess = salient[t] + add, excess - add
        filtered: dict[int, list[int]] = {}
        for t in range(first, last + 1):
            ranked = by_score(list(range(t * cells, (t + 1) * cells)), video.scores)
            for i in ranked[: salient[t]]:
                kept.add(i, TokenKind.SELECTED, tok[i], [i])
            filtered[t] = sorted(ranked[salient[t] :])
        pool = [i for t in range(first, last + 1) for i in filtered[t]]
        having = [j for j, a in enumerate(anchors) if a]
        if not pool or not having:
            continue
        for j, (frame, count) in enumerate(zip(anchor_frames, anchors, strict=True)):
            if count == 0:
                continue
            local = filtered[frame]
            order = density_peaks([tok[i] for i in local], min(4, len(local)))[:count]
            targets = [local[o] for o in order]
            joined: dict[int, list[int]] = {a: [a] for a in targets}
            for i in pool:
                if i not in joined:
                    best = most_similar(tok[i], [tok[a] for a in targets])
                    joined[targets[best]].append(i)
            for a, members in joined.items():
                w = max(1.0 / (len(members) + 1), beta)
                value = blend(tok[a], w, mean([tok[i] for i in members]), 1.0 - w)
                recorded = [
                    i for i in members if _recorder(last, i // cells, interval, having) == j
                ]
                kept.add(a, TokenKind.CLUSTER, value, recorded)
    return kept.result(len(tok))


def _recorder(last: int, t: int, interval: int, having: list[int]) -> int:
    """Anchor frame whose tokens record frame t's members: the one closing t's block if it has
    anchors, else the nearest later one that has, else the nearest earlier one."""
    block = (last - t) // interval
    later = [j for j in having if j <= block]
    return max(later) if later else min(having)


# -- checks on a token set -----------------------------------------------------------------------
def assert_matches(token_set: TokenSet, expected: dict[str, list], grid: tuple[int, int, int]):
    _, h, w = grid
    t_, h_, w_ = token_set.index.long().unbind(dim=1)
    assert ((t_ * h + h_) * w + w_).tolist() == expected["origin"]
    assert token_set.kind.tolist() == expected["kind"]
    assert token_set.size.tolist() == expected["size"]
    assert token_set.assignment.tolist() == expected["assignment"]
    values = torch.tensor(expected["tokens"], dtype=torch.float32)
    assert torch.allclose(token_set.tokens.float(), values, rtol=1e-5, atol=1e-3)


def assert_structure(token_set: TokenSet, tokens: torch.Tensor, budget: int) -> None:
    """The well-formedness every peer token set has (their merged values are not plain means):
    exact budget, original order, distinct origins, sizes = members, a selected token is its
    original, a merged token's origin is one of its members."""
    assert token_set.kept_count == budget
    _, h, w = token_set.grid
    t_, h_, w_ = token_set.index.long().unbind(dim=1)
    origin = (t_ * h + h_) * w + w_
    assert torch.equal(origin, torch.sort(origin).values) and origin.unique().numel() == budget
    assigned = token_set.assignment.long()
    covered = torch.bincount(assigned[assigned >= 0], minlength=budget)
    assert torch.equal(covered, token_set.size.long())
    assert torch.equal(assigned[origin], torch.arange(budget))
    selected = token_set.kind == TokenKind.SELECTED
    assert torch.equal(token_set.tokens[selected], tokens[origin[selected]])
    assert (token_set.size[selected] == 1).all()
