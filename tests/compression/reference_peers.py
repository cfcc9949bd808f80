"""Slow references for the peer baselines (VisionZip), written from the peers'
published code as read for compression/baselines.py, with the
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

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from reference import cosine

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


def by_score(rows: list[int], scores: list[float]) -> list[int]:
    """Rows by descending score, ties by row."""
    return sorted(rows, key=lambda i: (-scores[i], i))


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
