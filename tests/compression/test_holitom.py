"""HoliTom baseline: exact agreement with the slow reference, its temporal segmentation and
static merge on hand-made videos, exact budgets, determinism, settings, dispatch."""

from __future__ import annotations

import pytest
import reference_peers as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_outer_stage import raster_index

from compression import CompressionConfig, TokenKind, compress
from compression.holitom import apportion, holitom, static_windows
from compression.kept_tokens import VideoTokens, to_token_set


def video_like(frames: int, side: int, dim: int = 64, seed: int = 0):
    """Float tokens in scenes of 3 frames: a scene's frames are its first one plus noise, except
    the left column, which does not change within a scene (the only static cells)."""
    gen = torch.Generator().manual_seed(seed)
    cells = side * side
    tokens = torch.empty(frames, cells, dim)
    for t in range(frames):
        if t % 3 == 0:
            scene = torch.randn(cells, dim, generator=gen)
        tokens[t] = scene + 1.5 * torch.randn(cells, dim, generator=gen)
        if t % 3:
            tokens[t, ::side] = tokens[t - 1, ::side]
    scores = torch.rand(frames * cells, generator=gen)
    return tokens.reshape(-1, dim), scores, raster_index(frames, side, side)


@settings(max_examples=150, deadline=None)
@given(
    video=ref.video_like(),
    ratio=st.sampled_from([0.01, 0.1, 0.25, 0.5, 0.75, 1.0]),
    tau=st.sampled_from([-0.5, 0.3, 0.65, 0.8, 0.99]),
    beta=st.sampled_from([0.0, 0.6, 1.0]),
    k=st.integers(1, 8),
    max_window=st.integers(1, 5),
)
def test_matches_reference(video, ratio, tau, beta, k, max_window):
    config = CompressionConfig(
        method="holitom",
        retention_ratio=ratio,
        holitom_tau=tau,
        holitom_beta=beta,
        holitom_k=k,
        holitom_max_window=max_window,
    )
    budget = config.budget(len(video.tokens))
    try:
        expected = ref.holitom(video, budget, tau, beta, k, max_window)
    except ref.Ambiguous:
        assume(False)
    tokens, scores, index = video.torch_inputs()
    token_set = compress(tokens, scores, index, config)
    ref.assert_matches(token_set, expected, video.grid)


def test_static_frames_merge_over_time_at_the_first_frame():
    # frames 0-2 identical, frame 3 new: one static window [0, 2], then frame 3 alone
    frames, side, dim = 4, 3, 8
    gen = torch.Generator().manual_seed(1)
    still = torch.randn(side * side, dim, generator=gen)
    tokens = torch.cat([still, still, still, torch.randn(side * side, dim, generator=gen)])
    scores = torch.rand(frames * side * side, generator=gen)
    index = raster_index(frames, side, side)
    # R = 9 static + 9 dynamic tokens; M = 18 keeps every one of them
    config = CompressionConfig(method="holitom", retention_ratio=18 / 36)
    token_set = compress(tokens, scores, index, config)
    static = token_set.index[:, 0] == 0
    assert token_set.index[:, 0].tolist() == [0] * 9 + [3] * 9  # none left in frames 1-2
    assert token_set.size[static].tolist() == [3] * 9  # each cell stands for its 3 frames
    assert (token_set.kind[static] == TokenKind.CLUSTER).all()
    assert torch.allclose(token_set.tokens[static], still)
    assert token_set.assignment.view(frames, -1)[:3].tolist() == [list(range(9))] * 3
    # M = 9 is shared 5 (static: DPC-KNN centres, still covering all 27) + 4 (frame 3's best)
    half = compress(
        tokens, scores, index, CompressionConfig(method="holitom", retention_ratio=9 / 36)
    )
    static = half.index[:, 0] == 0
    assert half.kept_count == 9 and int(static.sum()) == 5 and int(half.size[static].sum()) == 27
    frame_3 = torch.sort(scores[27:], descending=True).indices[:4]
    assert (half.index[~static, 1] * side + half.index[~static, 2]).tolist() == sorted(
        frame_3.tolist()
    )


def test_static_windows_dynamic_programming():
    # 5 frames, 3 cells: all static over frames 0-2, only cell 0 static over 0-4
    link = torch.tensor([[True] * 3, [True] * 3, [True, False, False], [True, False, False]])
    # [0,4] merges 1 cell over 5 frames (removes 4); [0,2] + [3,4] remove 3 * 2 + 1 = 7
    assert static_windows(link, max_window=1024) == [(0, 2), (3, 4)]
    assert static_windows(link, max_window=1) == [(t, t) for t in range(5)]
    assert static_windows(torch.zeros(0, 3, dtype=torch.bool), max_window=4) == [(0, 0)]


def test_static_windows_match_holitoms_dynamic_programming_exhaustively():
    frames, cells = 5, 2
    for pattern in range(2 ** ((frames - 1) * cells)):
        bits = [bool(pattern >> b & 1) for b in range((frames - 1) * cells)]
        link = torch.tensor(bits).view(frames - 1, cells)
        for max_window in (1, 2, 3, 5):
            expected = ref.holitom_windows(link.tolist(), frames, max_window)
            assert static_windows(link, max_window) == expected


def test_apportion():
    assert apportion([10] * 4, 6) == [2, 1, 2, 1]  # round-half-up(1.5, 3, 4.5, 6) = 2, 3, 5, 6
    shares = apportion([196] * 32, 125)
    assert sum(shares) == 125 and set(shares) == {3, 4}
    assert apportion([10, 0, 30], 4) == [1, 0, 3]
    assert apportion([1, 1, 1], 3) == [1, 1, 1] and apportion([5], 0) == [0]
    for sizes in ([3, 7, 1, 9], [1] * 10, [50, 2]):
        for total in range(sum(sizes) + 1):
            shares = apportion(sizes, total)
            assert sum(shares) == total
            assert all(0 <= s <= n for s, n in zip(shares, sizes, strict=True))
    with pytest.raises(ValueError, match="cannot apportion"):
        apportion([2, 2], 5)


@pytest.mark.parametrize("frames", [1, 2, 7, 32])
@pytest.mark.parametrize("ratio", [0.005, 0.02, 0.1, 0.5, 1.0])
def test_exact_budget_and_well_formed(frames, ratio):
    side = 5
    tokens, scores, index = video_like(frames, side)
    config = CompressionConfig(method="holitom", retention_ratio=ratio)
    token_set = compress(tokens, scores, index, config)
    # the left column merges over each scene of 3 frames: R tokens remain after the merge
    scene_lengths = [min(3, frames - start) for start in range(0, frames, 3)]
    remaining = tokens.shape[0] - side * sum(length - 1 for length in scene_lengths)
    budget = min(config.budget(tokens.shape[0]), remaining)
    assert budget == config.budget(tokens.shape[0]) or ratio == 1.0
    ref.assert_structure(token_set, tokens, budget)


def test_fewer_than_the_budget_only_when_the_temporal_merge_leaves_fewer():
    frames, side = 8, 3
    gen = torch.Generator().manual_seed(2)
    still = torch.randn(side * side, 4, generator=gen)
    tokens, scores = still.repeat(frames, 1), torch.rand(frames * side * side, generator=gen)
    index = raster_index(frames, side, side)
    # one window of all 8 frames: R = 9 tokens after the temporal merge
    for ratio, kept in ((0.05, 4), (1 / 8, 9), (0.5, 9), (1.0, 9)):
        config = CompressionConfig(method="holitom", retention_ratio=ratio)
        token_set = compress(tokens, scores, index, config)
        assert token_set.kept_count == kept and int(token_set.size.sum()) == 72
    edge = compress(
        tokens, scores, index, CompressionConfig(method="holitom", retention_ratio=1e-3)
    )
    assert edge.kept_count == 1 and int(edge.size.sum()) == 72  # M = 1: one token stands for all


def test_deterministic_and_bfloat16_computed_in_float32():
    tokens, scores, index = video_like(9, side=4, seed=3)
    config = CompressionConfig(method="holitom", retention_ratio=0.1)
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
    config = CompressionConfig(method="holitom", retention_ratio=0.05)
    on_cpu = compress(tokens, scores, index, config)
    on_gpu = compress(tokens.cuda(), scores.cuda(), index.cuda(), config).to("cpu")
    for name in ("index", "kind", "size", "assignment"):
        assert torch.equal(getattr(on_cpu, name), getattr(on_gpu, name))
    assert torch.allclose(on_cpu.tokens, on_gpu.tokens, atol=1e-4)


def test_compress_dispatches_to_holitom():
    tokens, scores, index = video_like(6, side=4, seed=4)
    config = CompressionConfig(method="holitom", retention_ratio=0.2, holitom_tau=0.5)
    video = VideoTokens.from_inputs(tokens, scores, index)
    direct = to_token_set(video, holitom(video, config.budget(video.count), config), config)
    token_set = compress(tokens, scores, index, config)
    assert torch.equal(token_set.tokens, direct.tokens)
    assert torch.equal(token_set.index, direct.index)
    assert torch.equal(token_set.assignment, direct.assignment)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("holitom_tau", 1.5, "holitom_tau is a cosine"),
        ("holitom_tau", float("nan"), "holitom_tau is a cosine"),
        ("holitom_beta", -0.1, "holitom_beta must be"),
        ("holitom_k", 0, "holitom_k must be a positive integer"),
        ("holitom_max_window", 1.5, "holitom_max_window must be a positive integer"),
    ],
)
def test_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        CompressionConfig(**{field: value})


def test_settings_default_to_holitoms_and_join_the_hash():
    config = CompressionConfig(method="holitom")
    assert (config.holitom_tau, config.holitom_beta, config.holitom_k) == (0.8, 0.6, 7)
    assert config.holitom_max_window == 1024
    assert (
        config.stable_hash() != CompressionConfig(method="holitom", holitom_tau=0.65).stable_hash()
    )
