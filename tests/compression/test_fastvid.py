"""FastVID baseline: exact agreement with the slow reference, its segmentation and anchor merge on
hand-made videos, exact budgets, determinism, settings, dispatch."""

from __future__ import annotations

import pytest
import reference_peers as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_holitom import video_like
from test_outer_stage import raster_index

from compression import CompressionConfig, TokenKind, compress
from compression.fastvid import dynamic_segments, fastvid
from compression.kept_tokens import VideoTokens, to_token_set


@settings(max_examples=150, deadline=None)
@given(
    video=ref.video_like(),
    ratio=st.sampled_from([0.01, 0.1, 0.25, 0.5, 0.75, 1.0]),
    segments=st.integers(1, 6),
    tau=st.sampled_from([-0.5, 0.3, 0.9, 0.99]),
    context_ratio=st.sampled_from([0.0, 0.4, 0.75, 1.0]),
    interval=st.integers(1, 4),
    beta=st.sampled_from([0.0, 0.6, 1.0]),
)
def test_matches_reference(video, ratio, segments, tau, context_ratio, interval, beta):
    config = CompressionConfig(
        method="fastvid",
        retention_ratio=ratio,
        fastvid_segments=segments,
        fastvid_tau=tau,
        fastvid_context_ratio=context_ratio,
        fastvid_anchor_interval=interval,
        fastvid_beta=beta,
    )
    budget = config.budget(len(video.tokens))
    try:
        expected = ref.fastvid(video, budget, segments, tau, context_ratio, interval, beta)
    except ref.Ambiguous:
        assume(False)
    tokens, scores, index = video.torch_inputs()
    token_set = compress(tokens, scores, index, config)
    ref.assert_matches(token_set, expected, video.grid)


def _frames_from_features(features: list[list[float]], cells: int = 4) -> torch.Tensor:
    """[F, cells, d] tokens whose frame means are the given features."""
    return torch.tensor(features)[:, None, :].repeat(1, cells, 1)


def test_dynamic_segments_cut_the_least_similar_transitions_and_below_tau():
    a, b, c = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]  # cos(a, c) = 0.71, cos(a, b) = 0
    x = _frames_from_features([a, a, c, c, c, a, b])  # similarities 1, .71, 1, 1, .71, 0
    assert dynamic_segments(x, min_segments=1, tau=0.5) == [(0, 5), (6, 6)]
    assert dynamic_segments(x, min_segments=2, tau=0.5) == [(0, 5), (6, 6)]
    # 2 least similar: the 0 and the first .71 (equal similarities: the earlier transition)
    assert dynamic_segments(x, min_segments=3, tau=0.5) == [(0, 1), (2, 5), (6, 6)]
    assert dynamic_segments(x, min_segments=1, tau=0.9) == [(0, 1), (2, 4), (5, 5), (6, 6)]
    # more segments asked than frames: every frame alone
    assert dynamic_segments(x, min_segments=8, tau=0.0) == [(t, t) for t in range(7)]
    assert dynamic_segments(x[:1], min_segments=8, tau=0.9) == [(0, 0)]


def test_anchor_frames_merge_the_whole_segment():
    # 6 frames of the same 4 tokens (shuffled, tiny noise): one segment (c = 1, no tau cut)
    frames, cells, dim = 6, 4, 3
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(cells, dim, generator=gen)
    tokens = torch.stack([base[torch.randperm(cells, generator=gen)] for _ in range(frames)])
    tokens = (tokens + 0.01 * torch.randn(frames, cells, dim, generator=gen)).reshape(-1, dim)
    scores = torch.arange(frames * cells, dtype=torch.float32)  # the last cell wins each frame
    config = CompressionConfig(
        method="fastvid",
        retention_ratio=12 / 24,
        fastvid_segments=1,
        fastvid_tau=-1.0,
        fastvid_context_ratio=0.5,
    )
    token_set = compress(tokens, scores, raster_index(frames, 2, 2), config)
    # b = 2 per frame: 1 salient (the last cell) + 1 context; the segment's 6 context tokens go
    # 3 and 3 to its anchor frames 5 and 1 (p = 4), all 3 filtered tokens of each
    cluster = token_set.kind == TokenKind.CLUSTER
    assert token_set.index[cluster, 0].tolist() == [1, 1, 1, 5, 5, 5]
    assert token_set.index[~cluster].tolist() == [[t, 1, 1] for t in range(frames)]
    # `assignment` records frames 2-5 under frame 5's anchors, frames 0-1 under frame 1's
    owner = token_set.index[token_set.assignment.long(), 0].view(frames, cells)[:, :3]
    assert owner.tolist() == [[1] * 3] * 2 + [[5] * 3] * 4
    assert int(token_set.size[cluster].sum()) == frames * 3
    # but each of frame 1's anchors aggregates its nearest filtered tokens of ALL 6 frames
    filtered = tokens.view(frames, cells, dim)[:, :3].reshape(-1, dim)
    anchors = tokens.view(frames, cells, dim)[1, :3]
    unit = torch.nn.functional.normalize
    nearest = (unit(filtered, dim=1) @ unit(anchors, dim=1).T).argmax(dim=1)
    for a in range(3):
        members = filtered[nearest == a]
        w = max(1 / (members.shape[0] + 1), 0.6)
        expected = w * anchors[a] + (1 - w) * members.mean(dim=0)
        assert torch.allclose(token_set.tokens[cluster][a], expected, atol=1e-5)
    assert int((nearest < 3).sum()) == 18 and set(nearest.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("frames", [1, 2, 7, 32])
@pytest.mark.parametrize("ratio", [0.005, 0.02, 0.1, 0.5, 0.75, 1.0])
def test_exact_budget_and_well_formed(frames, ratio):
    tokens, scores, index = video_like(frames, side=5)
    config = CompressionConfig(method="fastvid", retention_ratio=ratio)
    token_set = compress(tokens, scores, index, config)
    ref.assert_structure(token_set, tokens, config.budget(tokens.shape[0]))


def test_everything_kept_at_full_retention():
    # r = 1 overflows the anchor frames (FastVID's own code fails there); every token is kept
    tokens, scores, index = video_like(8, side=4, seed=6)
    token_set = compress(
        tokens, scores, index, CompressionConfig(method="fastvid", retention_ratio=1.0)
    )
    assert torch.allclose(token_set.tokens, tokens, atol=1e-6)  # an anchor alone: 0.6 a + 0.4 a
    assert token_set.size.tolist() == [1] * tokens.shape[0]


def test_deterministic_and_bfloat16_computed_in_float32():
    tokens, scores, index = video_like(9, side=4, seed=3)
    config = CompressionConfig(method="fastvid", retention_ratio=0.1)
    first, second = (compress(tokens, scores, index, config) for _ in range(2))
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.assignment, second.assignment)
    # bf16 tokens decide exactly as their float32 values do; only the output is rounded
    half = compress(tokens.bfloat16(), scores, index, config)
    widened = compress(tokens.bfloat16().float(), scores, index, config)
    assert half.tokens.dtype == torch.bfloat16
    for name in ("index", "kind", "size", "assignment"):
        assert torch.equal(getattr(half, name), getattr(widened, name))
    assert torch.equal(half.tokens, widened.tokens.bfloat16())
    ref.assert_structure(half, tokens.bfloat16(), config.budget(tokens.shape[0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    tokens, scores, index = video_like(16, side=14, seed=7)
    config = CompressionConfig(method="fastvid", retention_ratio=0.05)
    on_cpu = compress(tokens, scores, index, config)
    on_gpu = compress(tokens.cuda(), scores.cuda(), index.cuda(), config).to("cpu")
    for name in ("index", "kind", "size", "assignment"):
        assert torch.equal(getattr(on_cpu, name), getattr(on_gpu, name))
    assert torch.allclose(on_cpu.tokens, on_gpu.tokens, atol=1e-4)


def test_compress_dispatches_to_fastvid():
    tokens, scores, index = video_like(6, side=4, seed=4)
    config = CompressionConfig(method="fastvid", retention_ratio=0.2, fastvid_segments=2)
    video = VideoTokens.from_inputs(tokens, scores, index)
    direct = to_token_set(video, fastvid(video, config.budget(video.count), config), config)
    token_set = compress(tokens, scores, index, config)
    assert torch.equal(token_set.tokens, direct.tokens)
    assert torch.equal(token_set.index, direct.index)
    assert torch.equal(token_set.assignment, direct.assignment)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fastvid_tau", -1.5, "fastvid_tau is a cosine"),
        ("fastvid_context_ratio", 1.2, "fastvid_context_ratio must be"),
        ("fastvid_beta", float("inf"), "fastvid_beta must be"),
        ("fastvid_segments", 0, "fastvid_segments must be a positive integer"),
        ("fastvid_anchor_interval", True, "fastvid_anchor_interval must be a positive integer"),
    ],
)
def test_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        CompressionConfig(**{field: value})


def test_settings_default_to_fastvids():
    config = CompressionConfig(method="fastvid")
    assert (config.fastvid_segments, config.fastvid_tau, config.fastvid_context_ratio) == (
        8,
        0.9,
        0.4,
    )
    assert (config.fastvid_anchor_interval, config.fastvid_beta) == (4, 0.6)
