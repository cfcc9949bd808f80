"""`compression.compress` with the paper's method: exact agreement with the plain-loop reference,
the properties every token set must have, input validation, and the point of the paper."""

from __future__ import annotations

import pytest
import reference as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from compression import (
    CompressionConfig,
    TokenKind,
    TokenSet,
    compress,
    compress_batch,
    compress_video,
)
from compression.baselines import frame_budgets
from compression.config import OUTER_METHODS
from compression.token_set import EncodedVideo


def raster_index(frames: int, height: int, width: int) -> torch.Tensor:
    """(t, h, w) of every token of a frames x height x width grid, in original order."""
    axes = torch.meshgrid(
        torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij"
    )
    return torch.stack(axes, dim=-1).reshape(-1, 3).to(torch.int32)


def linear_index(token_set: TokenSet) -> list[int]:
    _, h, w = token_set.grid
    t_, h_, w_ = token_set.index.long().unbind(dim=1)
    return ((t_ * h + h_) * w + w_).tolist()


def random_video(frames=6, side=7, dim=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n = frames * side * side
    tokens = torch.randn(n, dim, generator=gen).to(dtype)
    return tokens, torch.rand(n, generator=gen), raster_index(frames, side, side)


def assert_well_formed(token_set: TokenSet, tokens: torch.Tensor, budget: int) -> None:
    """Exact budget, original order, sizes sum to N, each token is the mean of what it covers."""
    assert token_set.kept_count == budget
    order = linear_index(token_set)
    assert order == sorted(order) and len(set(order)) == len(order)
    covered = torch.bincount(
        token_set.assignment[token_set.assignment >= 0].long(), minlength=budget
    )
    assert torch.equal(covered, token_set.size.long())
    for row in range(budget):
        members = tokens[token_set.assignment == row].float()
        if token_set.kind[row] == TokenKind.SELECTED:
            assert members.shape[0] == 1 and torch.equal(token_set.tokens[row], tokens[order[row]])
        else:
            mean = members.mean(dim=0).to(tokens.dtype).float()
            assert torch.allclose(token_set.tokens[row].float(), mean, atol=1e-2, rtol=1e-2)


@settings(max_examples=80, deadline=None)
@given(
    video=ref.integer_video(),
    ratio=st.floats(0.01, 1.0),
    cluster_ratio=st.floats(0.0, 1.0),
    k=st.integers(1, 8),
    wanted_tau=st.floats(-1.0, 1.0),
)
def test_matches_reference(
    video: ref.IntegerVideo, ratio: float, cluster_ratio: float, k: int, wanted_tau: float
):
    tau, gap = ref.tau_between_cosines(video.tokens, wanted_tau)
    assume(gap > 1e-4)  # no cosine near tau (see reference.py)
    config = CompressionConfig(retention_ratio=ratio, tau=tau, cluster_ratio=cluster_ratio, knn_k=k)
    n = len(video.tokens)
    capacity, _ = config.split_budget(n)
    expected = ref.compress_ours(video.tokens, video.scores, config.budget(n), capacity, tau, k)
    token_set = compress(
        torch.tensor(video.tokens), torch.tensor(video.scores), raster_index(*video.grid), config
    )
    assert linear_index(token_set) == expected["origin"]
    assert token_set.kind.tolist() == expected["kind"]
    assert token_set.size.tolist() == expected["size"]
    assert token_set.assignment.tolist() == expected["assignment"]
    assert torch.equal(
        token_set.tokens, torch.tensor(expected["tokens"], dtype=torch.float64).float()
    )
    assert torch.equal(
        token_set.scores, torch.tensor(expected["scores"], dtype=torch.float64).float()
    )


@pytest.mark.parametrize("ratio", [0.005, 0.02, 0.1, 0.3, 0.999])
def test_properties(ratio: float):
    tokens, scores, index = random_video()
    config = CompressionConfig(retention_ratio=ratio)
    token_set = compress(tokens, scores, index, config)
    assert_well_formed(token_set, tokens, config.budget(tokens.shape[0]))
    has_clusters = bool((token_set.kind == TokenKind.CLUSTER).any())
    # Recycled tokens join clusters; only without any cluster (M_c = 0, pool full) are they dropped.
    assert bool((token_set.assignment >= 0).all()) == has_clusters
    selected = torch.nn.functional.normalize(
        token_set.tokens[token_set.kind == TokenKind.SELECTED].double(), dim=1
    )
    assert ((selected @ selected.T).fill_diagonal_(-1.0) < config.tau).all()
    n_clusters = int((token_set.kind == TokenKind.CLUSTER).sum())
    assert n_clusters >= config.split_budget(tokens.shape[0])[1]
    assert token_set.config == config and token_set.grid == (6, 7, 7)


@pytest.mark.parametrize("method", OUTER_METHODS)
def test_scores_are_the_mean_score_of_what_each_token_stands_for(method: str):
    """Issue 14: every method stores a contribution score per kept token: a token standing for
    one original keeps that original's score exactly, any other the mean of its members'."""
    tokens, scores, index = random_video()
    token_set = compress(
        tokens, scores, index, CompressionConfig(retention_ratio=0.1, method=method)
    )
    assert token_set.scores.dtype == torch.float32 and token_set.scores.shape == (
        token_set.kept_count,
    )
    for row in range(token_set.kept_count):
        members = scores[token_set.assignment == row]
        if members.numel() == 1:
            assert token_set.scores[row] == members[0]
        else:
            assert torch.isclose(token_set.scores[row], members.double().mean().float())
    if method == "ours":  # a cluster of recycled tokens ranks below the pool, as the pool saw it
        selected = token_set.kind == TokenKind.SELECTED
        assert token_set.scores[~selected].mean() < token_set.scores[selected].mean()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tokens(dtype: torch.dtype):
    tokens, scores, index = random_video(dtype=dtype)
    token_set = compress(tokens, scores, index, CompressionConfig(retention_ratio=0.05))
    assert token_set.tokens.dtype == dtype
    assert_well_formed(token_set, tokens, 15)


def test_deterministic_bitwise():
    tokens, scores, index = random_video(seed=3)
    scores = (scores * 4).round()  # many ties
    first = compress(tokens, scores, index, CompressionConfig(retention_ratio=0.05))
    second = compress(tokens.clone(), scores.clone(), index.clone(), first.config)
    for name in ("tokens", "index", "kind", "size", "assignment", "scores"):
        assert torch.equal(getattr(first, name), getattr(second, name))


def test_input_order_and_shape_do_not_matter():
    tokens, scores, index = random_video(frames=4, side=5)
    config = CompressionConfig(retention_ratio=0.1)
    expected = compress(tokens, scores, index, config)
    shuffle = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(1))
    shuffled = compress(tokens[shuffle], scores[shuffle], index[shuffle], config)
    stacked = compress(tokens.view(4, 25, -1), scores.view(4, 25), index.view(4, 25, 3), config)
    for other in (shuffled, stacked):
        for name in ("tokens", "index", "kind", "size", "assignment"):
            assert torch.equal(getattr(expected, name), getattr(other, name))


def test_small_inputs_keep_everything():
    tokens, scores, index = random_video(frames=1, side=3)
    token_set = compress(tokens, scores, index, CompressionConfig(retention_ratio=1.0))
    assert token_set.kept_count == 9 and token_set.size.tolist() == [1] * 9
    assert token_set.assignment.tolist() == list(range(9))
    one = compress(tokens[:1], scores[:1], torch.zeros(1, 3, dtype=torch.long))
    assert one.kept_count == 1 and torch.equal(one.tokens, tokens[:1]) and one.grid == (1, 1, 1)


def test_degenerate_tokens():
    index = raster_index(5, 4, 4)
    for tokens in (torch.ones(80, 8), torch.zeros(80, 8)):
        token_set = compress(tokens, torch.zeros(80), index, CompressionConfig(retention_ratio=0.1))
        assert_well_formed(token_set, tokens, 8)


def test_explicit_grid():
    tokens, scores, index = random_video(frames=2, side=3)
    token_set = compress(tokens, scores, index, CompressionConfig(), grid=(2, 3, 3))
    assert token_set.grid == (2, 3, 3)


def _bad(tokens=None, scores=None, index=None, grid=None):
    good_tokens, good_scores, good_index = random_video(frames=2, side=3)
    return (
        good_tokens if tokens is None else tokens,
        good_scores if scores is None else scores,
        good_index if index is None else index,
        grid,
    )


_NAN_TOKENS = torch.randn(18, 16).index_fill_(0, torch.tensor([4]), float("nan"))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (_bad(tokens=_NAN_TOKENS), "NaN or infinite"),
        (_bad(tokens=torch.full((18, 16), float("inf"))), "NaN or infinite"),
        (_bad(scores=torch.tensor([float("nan")] * 18)), "scores contain NaN"),
        (_bad(scores=torch.rand(17)), "scores must have shape"),
        (_bad(tokens=torch.randn(18)), "tokens must be"),
        (_bad(tokens=torch.randn(0, 16)), "tokens must be"),
        (_bad(tokens=torch.ones(18, 16, dtype=torch.int64)), "dtype"),
        (_bad(index=torch.zeros(18, 2, dtype=torch.long)), "grid_index must have shape"),
        (_bad(index=raster_index(2, 3, 3).float()), "signed integer"),
        (_bad(index=raster_index(2, 3, 3) - 1), "negative"),
        (_bad(index=raster_index(2, 3, 3).flip(0).contiguous()[[0] * 18]), "its own"),
        (_bad(grid=(2, 3, 4)), "cells"),
        (_bad(grid=(1, 3, 3)), "outside the grid"),
        (_bad(scores=[0.0] * 18), "torch.Tensor"),
    ],
)
def test_rejects_malformed_inputs(inputs, message: str):
    tokens, scores, index, grid = inputs
    with pytest.raises(ValueError, match=message):
        compress(tokens, scores, index, CompressionConfig(), grid=grid)


def test_unified_pool_spends_budget_on_the_distinct_frames():
    """The paper's point: near-duplicate frames (one static scene made of 3 kinds of content)
    and two distinct frames. At 2% a per-frame allocation gives every frame the same share;
    the global pool admits each repeated content once and spends the rest on the distinct
    frames, even though the repeated frames score higher."""
    frames, side, dim = 16, 8, 64
    distinct_frames = (5, 12)
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(3, dim, generator=gen)
    region = torch.arange(side).repeat_interleave(side) * 3 // side  # 3 bands of rows
    tokens = torch.empty(frames, side * side, dim)
    scores = torch.empty(frames, side * side)
    for t in range(frames):
        if t in distinct_frames:
            tokens[t] = torch.randn(side * side, dim, generator=gen)
            scores[t] = torch.rand(side * side, generator=gen)
        else:
            noise = 0.01 * torch.randn(side * side, dim, generator=gen)
            tokens[t] = prototypes[region] + noise
            scores[t] = 1 + torch.rand(side * side, generator=gen)
    index = raster_index(frames, side, side)
    config = CompressionConfig(retention_ratio=0.02)
    capacity, _ = config.split_budget(frames * side * side)  # 14 of M = 20

    ours = compress(tokens, scores, index, config)
    selected_frames = ours.index[ours.kind == TokenKind.SELECTED, 0].tolist()
    per_frame = [selected_frames.count(t) for t in range(frames)]
    assert sum(per_frame) == capacity
    assert sum(per_frame[t] for t in range(frames) if t not in distinct_frames) == 3
    assert sum(per_frame[t] for t in distinct_frames) == capacity - 3

    budgets = frame_budgets(config.budget(frames * side * side), frames)
    for method in ("uniform", "visionzip"):
        baseline = compress(
            tokens, scores, index, CompressionConfig(retention_ratio=0.02, method=method)
        )
        counts = torch.bincount(baseline.index[:, 0].long(), minlength=frames).tolist()
        assert counts == budgets  # 1 or 2 per frame, the distinct frames included
    assert sum(budgets[t] for t in distinct_frames) < (capacity - 3) / 2


def _encoded(frames: int, seed: int) -> EncodedVideo:
    tokens, scores, index = random_video(frames=frames, side=4, seed=seed)
    return EncodedVideo(
        tokens=tokens,
        index=index,
        scores=scores,
        grid=(frames, 4, 4),
        frame_timestamps=tuple(0.5 * t for t in range(frames)),
        extras={"seconds_per_grid_step": 0.5},
    )


def test_compress_video_and_batch():
    config = CompressionConfig(retention_ratio=0.1)
    videos = [_encoded(3, seed=0), _encoded(8, seed=1)]
    batch = compress_batch(videos, config)
    assert [s.kept_count for s in batch] == [5, 13]
    for video, token_set in zip(videos, batch, strict=True):
        single = compress_video(video, config)
        assert torch.equal(single.tokens, token_set.tokens)
        assert token_set.frame_timestamps == video.frame_timestamps
        assert token_set.extras == {"seconds_per_grid_step": 0.5}
        direct = compress(video.tokens, video.scores, video.index, config)
        assert torch.equal(direct.assignment, token_set.assignment)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    tokens, scores, index = random_video(frames=8, side=14, dim=64)
    config = CompressionConfig(retention_ratio=0.05)
    on_cpu = compress(tokens, scores, index, config)
    on_gpu = compress(tokens.cuda(), scores.cuda(), index.cuda(), config).to("cpu")
    for name in ("index", "kind", "size", "assignment"):
        assert torch.equal(getattr(on_cpu, name), getattr(on_gpu, name))
    assert torch.allclose(on_cpu.tokens, on_gpu.tokens, atol=1e-5)


def test_token_set_rejects_out_of_range_assignment():
    tokens, scores, index = random_video(frames=1, side=3)
    token_set = compress(tokens, scores, index, CompressionConfig(retention_ratio=0.3))
    bad = token_set.assignment.clone()
    bad[0] = token_set.kept_count
    with pytest.raises(ValueError, match="assignment entries"):
        TokenSet(**{**token_set.__dict__, "assignment": bad})


@pytest.mark.parametrize("value", ["0.1", True, float("nan"), 0.0, 1.5])
def test_config_rejects_non_ratios(value):
    with pytest.raises(ValueError, match="retention_ratio"):
        CompressionConfig(retention_ratio=value)
