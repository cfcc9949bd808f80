"""Slow references for the outer stage, written straight from METHOD.md sections 2-3.

Plain Python loops over lists of floats (float64), no torch: an independent check of the fast
vectorised code. The tie rules are the ones the fast code documents:
contribution ties -> lower index first; density ties -> lower index is denser; gamma ties ->
lower index first; equally near centres -> lower centre index; a centre joins itself; the k
nearest neighbours include the token itself by default (the peers' convention; `dpc_knn` also
has the "exclude_self" one); DPC-KNN distances are Euclidean scaled by 1/sqrt(dim); cosine with
a zero vector is 0.

Exact comparison with the float32 fast code: tests feed small-integer tokens (sums, squared
distances and their sums are then exact in float32, and a mean of integers rounds the same way
from float32 or float64) and put tau in the middle of a gap between the inputs' pairwise
cosines (`tau_between_cosines`), so no cosine is near the threshold.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from hypothesis import strategies as st

Vector = list[float]


def dot(a: Vector, b: Vector) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def cosine(a: Vector, b: Vector) -> float:
    na, nb = math.sqrt(dot(a, a)), math.sqrt(dot(b, b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot(a, b) / (na * nb)


def squared_distance(a: Vector, b: Vector) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def tau_between_cosines(tokens: list[Vector], wanted: float) -> tuple[float, float]:
    """(tau, gap): the midpoint of the gap between the pairwise cosines (and -1, 1) that holds
    `wanted`, and that gap's width."""
    values = {-1.0, 1.0}
    for i in range(len(tokens)):
        for j in range(i + 1, len(tokens)):
            values.add(round(cosine(tokens[i], tokens[j]), 12))
    ordered = sorted(values)
    for low, high in itertools.pairwise(ordered):
        if low <= wanted <= high:
            return (low + high) / 2, high - low
    return 0.0, 0.0


def retention_pool(
    tokens: list[Vector], scores: list[float], capacity: int, tau: float
) -> list[int]:
    """Pool members in admission order: visit tokens by descending score, admit a token whose
    max cosine to the pool is below tau, stop when the pool holds `capacity` tokens."""
    order = sorted(range(len(tokens)), key=lambda i: (-scores[i], i))
    pool: list[int] = []
    for i in order:
        if len(pool) == capacity:
            break
        similarity = max((cosine(tokens[i], tokens[p]) for p in pool), default=-math.inf)
        if similarity < tau:
            pool.append(i)
    return pool


def dpc_knn(
    tokens: list[Vector], num_clusters: int, k: int, convention: str = "peers"
) -> tuple[list[int], list[int]]:
    """(centres ascending, cluster of every token as a position in centres).

    "peers" is written from TCFormer's published description of DPC-KNN (Zeng et al., CVPR 2022,
    Sec. 3.2, and its `cluster_dpc_knn`): rho_i = exp(-mean of d(i, j)^2 over the k nearest
    neighbours j of i, the token itself among them at distance 0); delta_i = min over all j of
    (d(i, j) if rho_j > rho_i else d_max), d_max the largest distance between any two tokens;
    centres = the largest rho * delta; every other token joins its nearest centre. Where TCFormer
    adds noise to rho to break ties, the lower index counts as denser. "exclude_self": the k
    nearest OTHER tokens, and the densest token's delta is its own largest distance."""
    r = len(tokens)
    dim = len(tokens[0])
    # d(i, j)^2 = |x_i - x_j|^2 / dim. sq holds the integer |x_i - x_j|^2 (the tokens are
    # integers) and the division by dim happens once per sum, so equal neighbourhood sums stay
    # exactly equal and every "nearest" comparison is exact.
    sq = [[int(squared_distance(a, b)) for b in tokens] for a in tokens]
    if convention == "peers":
        neighbours = [sorted(sq[i])[: min(k, r)] for i in range(r)]  # self's 0 included
    else:
        neighbours = [sorted(sq[i][j] for j in range(r) if j != i)[:k] for i in range(r)]
    crowding = [sum(n) for n in neighbours]  # the same count for every token: compare sums
    rho = [math.exp(-sum(n) / (len(n) * dim)) if n else 1.0 for n in neighbours]

    def denser(j: int, i: int) -> bool:
        return (crowding[j], j) < (crowding[i], i)

    d_max = max(max(row) for row in sq)
    delta = []
    for i in range(r):
        if convention == "peers":
            candidates = [sq[i][j] if denser(j, i) else d_max for j in range(r)]
            delta.append(math.sqrt(min(candidates) / dim))
        else:
            nearer = [sq[i][j] for j in range(r) if denser(j, i)]
            farthest = max((sq[i][j] for j in range(r) if j != i), default=0)
            delta.append(math.sqrt((min(nearer) if nearer else farthest) / dim))
    gamma = [rho[i] * delta[i] for i in range(r)]
    centres = sorted(sorted(range(r), key=lambda i: (-gamma[i], i))[:num_clusters])
    labels = []
    for i in range(r):
        if i in centres:
            labels.append(centres.index(i))
        else:
            labels.append(min(range(len(centres)), key=lambda c: (sq[i][centres[c]], c)))
    return centres, labels


def mean(rows: list[Vector]) -> Vector:
    return [sum(column) / len(rows) for column in zip(*rows, strict=True)]


def compress_ours(
    tokens: list[Vector],
    scores: list[float],
    budget: int,
    capacity: int,
    tau: float,
    k: int,
) -> dict[str, list]:
    """The paper's outer stage on tokens in original order: per kept token (in original order)
    its origin, kind (0 selected, 1 cluster), size, value and score (its members' mean score);
    and every token's assignment."""
    pool = retention_pool(tokens, scores, capacity, tau)
    recycled = [i for i in range(len(tokens)) if i not in pool]
    kept: list[tuple[int, int, int, Vector, list[int]]] = [(i, 0, 1, tokens[i], [i]) for i in pool]
    n_clusters = budget - len(pool)
    if n_clusters:
        centres, labels = dpc_knn([tokens[i] for i in recycled], n_clusters, k)
        for c, centre in enumerate(centres):
            members = [recycled[j] for j in range(len(recycled)) if labels[j] == c]
            kept.append(
                (recycled[centre], 1, len(members), mean([tokens[m] for m in members]), members)
            )
    kept.sort()
    assignment = [-1] * len(tokens)
    for row, (_, _, _, _, members) in enumerate(kept):
        for m in members:
            assignment[m] = row
    return {
        "origin": [k_[0] for k_ in kept],
        "kind": [k_[1] for k_ in kept],
        "size": [k_[2] for k_ in kept],
        "tokens": [k_[3] for k_ in kept],
        "scores": [sum(scores[m] for m in k_[4]) / len(k_[4]) for k_ in kept],
        "assignment": assignment,
    }


# -- inputs for exact comparisons ----------------------------------------------------------------
@st.composite
def integer_video(draw: st.DrawFn, max_side: int = 4, max_dim: int = 5) -> IntegerVideo:
    """A small video of small-integer tokens on a (T, H, W) grid, with deliberate ties: some rows
    are copies of others and scores repeat (drawn from 0..4)."""
    grid = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    n = grid[0] * grid[1] * grid[2]
    dim = draw(st.integers(1, max_dim))
    flat = draw(st.lists(st.integers(-2, 2), min_size=n * dim, max_size=n * dim))
    rows = [[float(v) for v in flat[i * dim : (i + 1) * dim]] for i in range(n)]
    for target, source in draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n // 2)
    ):
        rows[target] = list(rows[source])
    scores = [float(s) for s in draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))]
    return IntegerVideo(grid=grid, tokens=rows, scores=scores)


@dataclass(frozen=True)
class IntegerVideo:
    grid: tuple[int, int, int]
    tokens: list[Vector]
    scores: list[float]

    def grid_index(self) -> list[tuple[int, int, int]]:
        t, h, w = self.grid
        return [(a, b, c) for a in range(t) for b in range(h) for c in range(w)]
