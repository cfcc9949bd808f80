"""Outer baselines: same entry point, exact budget, and each one's documented rule."""

from __future__ import annotations

import pytest
import reference_peers as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_outer_stage import assert_well_formed, linear_index, random_video, raster_index

from compression import CompressionConfig, TokenKind, compress
from compression.baselines import frame_budgets, region_labels


@pytest.mark.parametrize("method", ["uniform", "random", "ours_no_cluster"])
@pytest.mark.parametrize("ratio", [0.005, 0.02, 0.1, 0.5, 1.0])
def test_exact_budget_and_well_formed(method: str, ratio: float):
    tokens, scores, index = random_video()
    config = CompressionConfig(retention_ratio=ratio, method=method)
    token_set = compress(tokens, scores, index, config)
    assert_well_formed(token_set, tokens, config.budget(tokens.shape[0]))


@pytest.mark.parametrize("ratio", [0.005, 0.02, 0.1, 0.5, 1.0])
def test_visionzip_exact_budget_and_well_formed(ratio: float):
    # VisionZip's contextual tokens are not means of what they cover: the structural checks
    tokens, scores, index = random_video()
    config = CompressionConfig(retention_ratio=ratio, method="visionzip")
    token_set = compress(tokens, scores, index, config)
    ref.assert_structure(token_set, tokens, config.budget(tokens.shape[0]))


@settings(max_examples=150, deadline=None)
@given(
    video=ref.video_like(),
    ratio=st.sampled_from([0.01, 0.1, 0.25, 0.5, 0.75, 1.0]),
    dominant_ratio=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
)
def test_visionzip_matches_reference(video, ratio, dominant_ratio):
    config = CompressionConfig(
        retention_ratio=ratio, method="visionzip", visionzip_dominant_ratio=dominant_ratio
    )
    try:
        expected = ref.visionzip(video, config.budget(len(video.tokens)), dominant_ratio)
    except ref.Ambiguous:
        assume(False)
    tokens, scores, index = video.torch_inputs()
    ref.assert_matches(compress(tokens, scores, index, config), expected, video.grid)


def test_full_keeps_every_token():
    tokens, scores, index = random_video(frames=2, side=3)
    token_set = compress(tokens, scores, index, CompressionConfig(method="full"))
    assert torch.equal(token_set.tokens, tokens)
    assert token_set.kind.tolist() == [TokenKind.SELECTED] * 18
    assert token_set.size.tolist() == [1] * 18
    assert token_set.assignment.tolist() == list(range(18))


def test_frame_budgets():
    assert frame_budgets(20, 16) == [1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1]
    assert frame_budgets(3, 8) == [0, 1, 0, 0, 1, 0, 1, 0]  # floor(4/3), floor(4), floor(20/3)
    assert frame_budgets(64, 32) == [2] * 32
    for total in range(0, 50):
        budgets = frame_budgets(total, 7)
        assert sum(budgets) == total and max(budgets) - min(budgets) <= 1


def test_region_labels_tile_the_frame():
    labels, centres = region_labels(14, 14, 4)
    expected = torch.tensor([[0] * 7 + [1] * 7] * 7 + [[2] * 7 + [3] * 7] * 7).flatten()
    assert torch.equal(labels, expected)
    assert centres.tolist() == [3 * 14 + 3, 3 * 14 + 10, 10 * 14 + 3, 10 * 14 + 10]
    for height, width in ((14, 14), (3, 7), (1, 5), (6, 2)):
        for regions in range(1, height * width + 1):
            labels, centres = region_labels(height, width, regions)
            assert torch.equal(labels.unique(), torch.arange(regions))
            assert torch.equal(labels[centres], torch.arange(regions))
    with pytest.raises(ValueError, match="cannot tile"):
        region_labels(2, 2, 5)


def test_uniform_pools_regions_of_each_frame():
    tokens, scores, index = random_video(frames=2, side=14)
    config = CompressionConfig(retention_ratio=8 / 392, method="uniform")
    token_set = compress(tokens, scores, index, config)
    assert token_set.kept_count == 8 and token_set.size.tolist() == [49] * 8
    quadrant = tokens.view(2, 14, 14, -1)[1, 7:, :7].reshape(49, -1)
    assert torch.allclose(token_set.tokens[6], quadrant.mean(dim=0), atol=1e-6)
    assert token_set.index[6].tolist() == [1, 10, 3]
    assert (token_set.kind == TokenKind.CLUSTER).all()


def test_random_is_seeded():
    tokens, scores, index = random_video()
    picks = [
        linear_index(compress(tokens, scores, index, CompressionConfig(method="random", seed=s)))
        for s in (0, 0, 1)
    ]
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_visionzip_dominant_and_contextual_tokens():
    frames, side = 3, 6
    tokens, scores, index = random_video(frames=frames, side=side)
    config = CompressionConfig(retention_ratio=15 / 108, method="visionzip")
    token_set = compress(tokens, scores, index, config)
    per_frame = side * side
    for t in range(frames):
        rows = token_set.index[:, 0] == t
        dominant = token_set.kind[rows] == TokenKind.SELECTED
        assert int(dominant.sum()) == 4 and int((~dominant).sum()) == 1  # round(0.8 * 5) = 4
        frame_scores = scores[t * per_frame : (t + 1) * per_frame]
        top = set((torch.sort(frame_scores, descending=True, stable=True).indices[:4]).tolist())
        picked = token_set.index[rows][dominant]
        assert {int(p[1]) * side + int(p[2]) for p in picked} == top
        # the contextual token stands for every other token of the frame, and is VisionZip's
        # target + mean of the others (not their mean): the first remaining token is the target
        assert int(token_set.size[rows][~dominant]) == per_frame - 4
        frame = tokens[t * per_frame : (t + 1) * per_frame]
        remaining = sorted(set(range(per_frame)) - top)
        target, others = frame[remaining[0]], frame[remaining[1:]]
        assert token_set.index[rows][~dominant].tolist() == [[t, *divmod(remaining[0], side)]]
        assert torch.allclose(token_set.tokens[rows][~dominant][0], target + others.mean(dim=0))


def test_ours_no_cluster_fills_with_highest_scores_when_candidates_run_out():
    index = raster_index(2, 3, 3)
    tokens = torch.ones(18, 4)  # all identical: only one token can enter the pool
    scores = torch.arange(18.0)
    config = CompressionConfig(retention_ratio=4 / 18, method="ours_no_cluster")
    token_set = compress(tokens, scores, index, config)
    assert linear_index(token_set) == [14, 15, 16, 17]
    assert (token_set.kind == TokenKind.SELECTED).all()
    assert int((token_set.assignment >= 0).sum()) == 4


def test_ours_no_cluster_is_the_pool_when_it_fills():
    tokens, scores, index = random_video()
    pool_only = compress(tokens, scores, index, CompressionConfig(method="ours_no_cluster"))
    ours = compress(tokens, scores, index, CompressionConfig(cluster_ratio=0.0))
    assert torch.equal(pool_only.tokens, ours.tokens)
