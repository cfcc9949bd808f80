"""DPC-KNN on the recycle pool: exact agreement with the plain-loop reference (ties included),
chunked == whole-matrix, and bounded memory."""

from __future__ import annotations

import pytest
import reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_retention_pool import _LargestOutput

from compression.dpc_knn import dpc_knn


@settings(max_examples=80, deadline=None)
@given(video=ref.integer_video(), cluster_share=st.floats(0.0, 1.0), k=st.integers(1, 9))
def test_matches_reference(video: ref.IntegerVideo, cluster_share: float, k: int):
    r = len(video.tokens)
    num_clusters = max(1, round(cluster_share * r))
    centres, labels = ref.dpc_knn(video.tokens, num_clusters, k)
    tokens = torch.tensor(video.tokens)
    for chunk_bytes in (None, 4 * r * 3):  # whole matrix, and chunks of 3 rows
        clusters = dpc_knn(tokens, num_clusters, k, chunk_bytes=chunk_bytes)
        assert clusters.centres.tolist() == centres
        assert clusters.labels.tolist() == labels
        count = len(centres)
        members = [[video.tokens[i] for i in range(r) if labels[i] == c] for c in range(count)]
        assert clusters.sizes.tolist() == [len(m) for m in members]
        expected = torch.tensor([ref.mean(m) for m in members], dtype=torch.float64).float()
        assert torch.equal(clusters.means, expected)


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
    single = dpc_knn(tokens[:1], 5, k=7)
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
    # pair (2, 3) still wins.
    tokens = torch.tensor([[0.0], [3000.0], [7000.0], [7500.0]])
    clusters = dpc_knn(tokens, 2, k=1)
    assert clusters.centres.tolist() == [2, 3]


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
