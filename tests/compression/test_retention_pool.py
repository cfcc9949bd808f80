"""The global retention pool: exact agreement with the plain-loop reference, its properties,
and no N x N matrix on the way."""

from __future__ import annotations

import pytest
import reference as ref
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from compression.retention_pool import contribution_order, retention_pool


@settings(max_examples=100, deadline=None)
@given(video=ref.integer_video(), capacity_share=st.floats(0.0, 1.0), wanted_tau=st.floats(-1, 1))
def test_matches_reference(video: ref.IntegerVideo, capacity_share: float, wanted_tau: float):
    tau, gap = ref.tau_between_cosines(video.tokens, wanted_tau)
    assume(gap > 1e-4)  # no cosine near tau: float32 and float64 must agree on every test
    capacity = max(1, round(capacity_share * len(video.tokens)))
    expected = ref.retention_pool(video.tokens, video.scores, capacity, tau)
    tokens, scores = torch.tensor(video.tokens), torch.tensor(video.scores)
    for block_size in (None, 1, 3):  # one block, and many
        fast = retention_pool(tokens, scores, capacity, tau, block_size=block_size)
        assert fast.tolist() == expected


def test_members_are_pairwise_dissimilar_and_in_contribution_order():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(500, 6, generator=gen)
    scores = torch.rand(500, generator=gen)
    pool = retention_pool(tokens, scores, capacity=40, tau=0.7)
    assert pool.numel() == 40
    unit = torch.nn.functional.normalize(tokens[pool].double(), dim=1)
    similarity = unit @ unit.T
    assert (similarity.fill_diagonal_(-1.0) < 0.7).all()
    assert (scores[pool][1:] <= scores[pool][:-1]).all()


def test_stops_when_candidates_run_out_beyond_the_exhaustion_check():
    # 70 directions, each repeated 3 times: exactly one token per direction can enter, and the
    # loop outlives more than one 64-step exhaustion check.
    directions = torch.eye(70)
    tokens = directions.repeat(3, 1) * torch.arange(1, 211).unsqueeze(1)
    scores = torch.linspace(1.0, 0.0, 210)
    for block_size in (None, 16):
        pool = retention_pool(tokens, scores, capacity=150, tau=0.5, block_size=block_size)
        assert pool.tolist() == list(range(70))


def test_identical_tokens_and_zero_tokens():
    same = torch.ones(30, 4)
    assert retention_pool(same, torch.zeros(30), 10, 0.7).tolist() == [0]
    # A zero token has cosine 0 with everything: with tau > 0 every zero token is admissible.
    zeros = torch.zeros(5, 4)
    assert retention_pool(zeros, torch.zeros(5), 10, 0.7).tolist() == [0, 1, 2, 3, 4]
    assert retention_pool(zeros, torch.zeros(5), 10, -0.5).tolist() == [0]


def test_low_precision_inputs_give_the_float32_result():
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(300, 8, generator=gen).to(torch.bfloat16)
    scores = torch.rand(300, generator=gen)
    expected = retention_pool(tokens.float(), scores, 30, 0.7)
    assert torch.equal(retention_pool(tokens, scores, 30, 0.7), expected)
    assert torch.equal(retention_pool(tokens.half(), scores, 30, 0.7), expected)


def test_contribution_ties_keep_original_order():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 1.0])
    assert contribution_order(scores).tolist() == [1, 2, 4, 3, 0, 5]


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("tau", [0.7, -0.99])  # the pool fills in the first block / never fills
def test_never_builds_an_n_by_n_matrix(tau: float):
    n, d = 8000, 8
    gen = torch.Generator().manual_seed(2)
    tokens, scores = torch.randn(n, d, generator=gen), torch.rand(n, generator=gen)
    with _LargestOutput() as mode:
        pool = retention_pool(tokens, scores, capacity=80, tau=tau)
    assert pool.numel() == (80 if tau > 0 else 1)
    assert mode.largest <= max(n * d, 512 * 512)  # one 512-token block; N x N is 244x larger
