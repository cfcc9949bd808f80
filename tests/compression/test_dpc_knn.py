"""DPC-KNN on the recycle pool: exact agreement with the plain-loop reference written from
TCFormer's description (both conventions, ties and duplicates included), chunked == whole-matrix,
one pass over the distances, bounded memory, and the distance matmul's dtypes."""

from __future__ import annotations

import pytest
import reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_retention_pool import _LargestOutput
from torch.utils._python_dispatch import TorchDispatchMode

from compression import dpc_knn as dpc_module
from compression.dpc_knn import dpc_knn, gram


@settings(max_examples=60, deadline=None)
@given(
    video=ref.integer_video(),
    cluster_share=st.floats(0.0, 1.0),
    k=st.integers(1, 9),
    convention=st.sampled_from(["peers", "exclude_self"]),
    kept=st.sampled_from([1, 2, 32]),
)
def test_matches_reference(
    video: ref.IntegerVideo, cluster_share: float, k: int, convention: str, kept: int
):
    """kept < 32 keeps fewer nearest neighbours per row than the default, so that many rows have
    no denser token among them and take the re-scan path."""
    r = len(video.tokens)
    num_clusters = max(1, round(cluster_share * r))
    centres, labels = ref.dpc_knn(video.tokens, num_clusters, k, convention)
    tokens = torch.tensor(video.tokens)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dpc_module, "_KEPT_NEIGHBOURS", max(kept, k))
        for chunk_bytes in (None, 4 * r * 3):  # whole matrix, and chunks of 3 rows
            clusters = dpc_knn(
                tokens, num_clusters, k, convention=convention, chunk_bytes=chunk_bytes
            )
            assert clusters.centres.tolist() == centres
            assert clusters.labels.tolist() == labels
    count = len(centres)
    members = [[video.tokens[i] for i in range(r) if labels[i] == c] for c in range(count)]
    assert clusters.sizes.tolist() == [len(m) for m in members]
    expected = torch.tensor([ref.mean(m) for m in members], dtype=torch.float64).float()
    assert torch.equal(clusters.means, expected)


def test_conventions_differ_as_documented():
    """The same neighbours, counted with and without self: "peers" with k = 2 (self + the
    nearest other) and "exclude_self" with k = 1 (the nearest other) rank densities alike, but
    the peers' mean includes self's 0, halving every -log(rho) against log(delta). Nearest-other
    distances: 1, 1, 6, 2, 2; the densest is 7 (the earlier of 7 and 8), delta 18 both ways.
    gamma: peers 18 e^-0.5 = 10.9, 23 -> 15 e^-2 = 2.0, 8 -> 1 e^-0.5 = 0.61;
    exclude_self 18 e^-1 = 6.6, 8 -> e^-1 = 0.37, 23 -> 15 e^-4 = 0.27."""
    tokens = torch.tensor([[7.0], [8.0], [14.0], [23.0], [25.0]])
    assert dpc_knn(tokens, 2, 2, convention="peers").centres.tolist() == [0, 3]
    assert dpc_knn(tokens, 2, 1, convention="exclude_self").centres.tolist() == [0, 1]


def test_equal_densities_lower_index_wins():
    """Ties are broken by index, not noise: of two tokens with exactly equal density the earlier
    one is denser (so it gets the large delta and becomes the centre), whatever order the same
    points come in."""
    for tokens in ([[-1.0], [1.0]], [[1.0], [-1.0]], [[0.0, 2.0], [0.0, -2.0]]):
        for convention in ("peers", "exclude_self"):
            clusters = dpc_knn(torch.tensor(tokens), 1, 7, convention=convention)
            assert clusters.centres.tolist() == [0]
            assert clusters.labels.tolist() == [0, 0]
    # four symmetric tokens, all equally dense: the two centres are the first two in input order
    square = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert dpc_knn(square, 2, 2).centres.tolist() == [0, 1]


def test_float_copies_are_never_two_centres():
    """Exact copies of 3584-d float tokens: their distances and densities carry float32
    rounding (a copy's delta is ~0 but not necessarily 0, and either copy may be the denser),
    yet one of each pair has delta ~0 and never becomes a centre while distinct tokens remain."""
    gen = torch.Generator().manual_seed(5)
    distinct = torch.randn(12, 3584, generator=gen) * torch.rand(12, 1, generator=gen)
    tokens = torch.cat([distinct, distinct[torch.randperm(12, generator=gen)]])
    for convention in ("peers", "exclude_self"):
        clusters = dpc_knn(tokens, 12, 7, convention=convention)
        assert len({tuple(tokens[c].tolist()) for c in clusters.centres}) == 12, convention
        assert clusters.sizes.tolist() == [2] * 12, convention


class _MatmulWork(TorchDispatchMode):
    """Counts the multiply-adds of every matrix product (mm, addmm, bmm ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.work = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "matmul"):
            a = args[1] if func.__name__.startswith("addmm") else args[0]
            self.work += out.numel() * a.shape[-1]
        return out


def test_one_pass_over_the_distances_when_chunked():
    """The R x R products are computed once (plus the local density peaks' rows and the R x C
    assignment), also when the matrix does not fit one chunk; the earlier code computed it twice
    in that case."""
    r, d, c = 600, 16, 24
    tokens = torch.randn(r, d, generator=torch.Generator().manual_seed(6))
    with _MatmulWork() as whole:
        expected = dpc_knn(tokens, c, 7)
    with _MatmulWork() as chunked:
        clusters = dpc_knn(tokens, c, 7, chunk_bytes=4 * r * 50)
    assert torch.equal(clusters.labels, expected.labels)
    assert chunked.work <= 1.25 * r * r * d
    assert chunked.work == whole.work


def test_distance_matmul_dtypes():
    """bf16/fp16 tokens on CUDA enter the distance matmul as they are, with a float32 result
    (`gram` asks for float32 output, which CUDA accumulates in float32); elsewhere in float32.
    Here (CPU only) the CUDA kernel's dtype contract is checked on meta tensors, and the CPU path
    on real ones."""
    for dtype in (torch.bfloat16, torch.float16):
        a = torch.empty(5, 8, dtype=dtype, device="meta")
        assert gram(a, a).dtype == torch.float32 and gram(a, a).shape == (5, 5)
        cpu = torch.randn(6, 8, generator=torch.Generator().manual_seed(7)).to(dtype)
        operand = dpc_module.matmul_operand(cpu)
        assert operand.dtype == torch.float32
        assert torch.equal(gram(operand, operand), cpu.float() @ cpu.float().T)
        clusters = dpc_knn(cpu, 3, 2)
        assert torch.equal(clusters.centres, dpc_knn(cpu.float(), 3, 2).centres)


def test_duplicates_are_never_two_centres_while_distinct_tokens_remain():
    base = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    tokens = base.repeat_interleave(4, dim=0)  # 3 groups of 4 identical tokens
    clusters = dpc_knn(tokens, 3, k=3)
    assert clusters.centres.tolist() == [0, 4, 8]
    assert clusters.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(clusters.means, base)


def test_few_tokens_and_one_token():
    tokens = torch.tensor([[0.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    clusters = dpc_knn(tokens, 2, k=7)  # |R| <= k: all other tokens are the neighbours
    assert clusters.sizes.sum() == 3 and clusters.centres.numel() == 2
    for convention in ("peers", "exclude_self"):
        single = dpc_knn(tokens[:1], 5, k=7, convention=convention)
        assert single.centres.tolist() == [0] and single.labels.tolist() == [0]
        assert torch.equal(single.means, tokens[:1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_means_computed_in_float32(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(200, 16, generator=gen).to(dtype)
    clusters = dpc_knn(tokens, 12, k=7)
    assert clusters.means.dtype == dtype
    for c in range(12):
        members = tokens[clusters.labels == c].float()
        assert torch.equal(clusters.means[c], members.mean(dim=0).to(dtype))
    assert int(clusters.sizes.sum()) == 200


def test_each_separated_group_gets_a_centre():
    # Two groups of 64-d tokens far apart: the densest token of each group has a large delta, so
    # each group gets one of the two centres. With unscaled distances rho would span ~e^20 inside
    # a group, drown delta, and put both centres in one group.
    gen = torch.Generator().manual_seed(3)
    group_a = torch.randn(20, 64, generator=gen)
    group_b = torch.randn(20, 64, generator=gen) + 10
    clusters = dpc_knn(torch.cat([group_a, group_b]), 2, k=7)
    assert (clusters.centres < 20).sum() == 1
    assert clusters.sizes.tolist() == [20, 20]


def test_far_apart_tokens_do_not_underflow_the_density():
    # rho = exp(-mean d^2) is 0 even in float64 for every token here, which would leave all
    # gamma at 0 and the centres to the tie rule ([0, 1]). Ranked in log space, the densest
    # pair (2, 3) still wins. k = 2 is the token itself and its nearest other token.
    tokens = torch.tensor([[0.0], [3000.0], [7000.0], [7500.0]])
    assert dpc_knn(tokens, 2, k=2).centres.tolist() == [2, 3]
    assert dpc_knn(tokens, 2, k=1, convention="exclude_self").centres.tolist() == [2, 3]


def test_memory_stays_in_row_chunks():
    r, d, rows = 1500, 4, 100
    tokens = torch.randn(r, d, generator=torch.Generator().manual_seed(4))
    with _LargestOutput() as mode:
        dpc_knn(tokens, 30, k=7, chunk_bytes=4 * r * rows)
    assert mode.largest <= rows * r  # never the R x R matrix (15x larger)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one token"):
        dpc_knn(torch.zeros(0, 3), 1, 7)
    with pytest.raises(ValueError, match="positive integer"):
        dpc_knn(torch.zeros(4, 3), 1, 0)
    with pytest.raises(ValueError, match="convention"):
        dpc_knn(torch.zeros(4, 3), 1, 7, convention="self")  # type: ignore[arg-type]
