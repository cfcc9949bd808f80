"""text_merge against slow plain-loop references (METHOD.md sections 5 and 8): the text-aware
merge, and the FastV / HoliTom inner steps as their published code computes them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from compression.config import MergeConfig
from compression.text_merge import (
    causal_attention_probs,
    holitom_merge,
    importance,
    last_token_attention,
    merge_into_kept,
    merge_query_rows,
    min_max,
    plan_merge,
    scoring_layer,
    select_kept,
    text_visual_attention,
    text_visual_similarity,
    visual_scores,
)

SMALL = settings(max_examples=40, deadline=None)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


# -- plain references -------------------------------------------------------------------------
def ref_cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def ref_attention(q, k, rows, scaling):
    """probs[h][t][j] with a per-element softmax over keys j <= rows[t]."""
    out = []
    for h in range(len(q)):
        per_head = []
        for t, row in enumerate(rows):
            logits = [
                sum(a * b for a, b in zip(q[h][t], k[h][j], strict=True)) * scaling
                for j in range(row + 1)
            ]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            total = sum(exps)
            per_head.append([e / total for e in exps] + [0.0] * (len(k[h]) - row - 1))
        out.append(per_head)
    return out


def ref_kept(scores: list[float], keep: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:keep])


def ref_merge(tokens, sizes, kept):
    groups = {j: [j] for j in kept}
    for i in range(len(tokens)):
        if i in groups:
            continue
        sims = [ref_cos(tokens[i], tokens[j]) for j in kept]
        groups[kept[sims.index(max(sims))]].append(i)
    merged, merged_sizes = [], []
    for j in kept:
        weight = sum(sizes[i] for i in groups[j])
        merged.append(
            [
                sum(sizes[i] * tokens[i][c] for i in groups[j]) / weight
                for c in range(len(tokens[0]))
            ]
        )
        merged_sizes.append(weight)
    return merged, merged_sizes


def ref_holitom_merge(tokens, kept):
    """HoliTom's loop (holitom/modeling_qwen2.py): targets fixed first, then each dropped token
    in ascending order sets its target to (target + dropped) / 2, in place."""
    rows = [list(t) for t in tokens]
    targets = {}
    for i in range(len(tokens)):
        if i not in kept:
            sims = [ref_cos(tokens[i], tokens[j]) for j in kept]
            targets[i] = kept[sims.index(max(sims))]
    for i, j in sorted(targets.items()):
        rows[j] = [(a + b) / 2 for a, b in zip(rows[j], tokens[i], strict=True)]
    return [rows[j] for j in kept], targets


def ints(shape: tuple[int, ...], low: int = -4, high: int = 4):
    """Small-integer float tensors: sums of products are exact, cosines well separated."""
    count = math.prod(shape)
    return st.lists(st.integers(low, high), min_size=count, max_size=count).map(
        lambda v: torch.tensor(v, dtype=torch.float32).view(shape)
    )


# -- pure functions ---------------------------------------------------------------------------
@SMALL
@given(data=st.data(), heads=st.integers(1, 3), length=st.integers(2, 7), dim=st.integers(1, 4))
def test_causal_attention_and_text_scores_match_loops(data, heads, length, dim):
    q_count = data.draw(st.integers(1, length))
    rows = sorted(
        data.draw(st.lists(st.integers(0, length - 1), min_size=q_count, max_size=q_count))
    )
    q = data.draw(ints((heads, q_count, dim)))
    k = data.draw(ints((heads, length, dim)))
    probs = causal_attention_probs(q, k, torch.tensor(rows), 0.5)
    expected = torch.tensor(ref_attention(q.tolist(), k.tolist(), rows, 0.5))
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-5)

    start = data.draw(st.integers(0, length - 1))
    stop = data.draw(st.integers(start + 1, length))
    visual = slice(start, stop)
    a_m = [
        max(sum(expected[h, t, v].item() for h in range(heads)) / heads for t in range(q_count))
        for v in range(start, stop)
    ]
    torch.testing.assert_close(text_visual_attention(probs, visual), torch.tensor(a_m))
    last = [
        sum(expected[h, -1, v].item() for h in range(heads)) / heads for v in range(start, stop)
    ]
    torch.testing.assert_close(last_token_attention(probs[:, -1:], visual), torch.tensor(last))


@SMALL
@given(data=st.data(), v=st.integers(1, 6), t=st.integers(1, 5), dim=st.integers(1, 4))
def test_similarity_min_max_and_importance_match_loops(data, v, t, dim):
    visual = data.draw(ints((v, dim)))
    text = data.draw(ints((t, dim)))
    s_m = [max(ref_cos(a, b) for b in text.tolist()) for a in visual.tolist()]
    torch.testing.assert_close(text_visual_similarity(visual, text), torch.tensor(s_m))

    attention = data.draw(ints((v,), 0, 9))
    lam = data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))

    def norm(x: list[float]) -> list[float]:
        low, high = min(x), max(x)
        return [0.0] * len(x) if high == low else [(e - low) / (high - low) for e in x]

    # Normalise the float32 similarities the function sees: equal cosines (e.g. two exact
    # matches) may differ in the last float32 bit, and min-max would magnify that difference.
    s_m = text_visual_similarity(visual, text).tolist()
    a_n, s_n = norm(attention.tolist()), norm(s_m)
    expected = [(1 - lam) * a + lam * s for a, s in zip(a_n, s_n, strict=True)]
    torch.testing.assert_close(
        importance(attention, torch.tensor(s_m), lam), torch.tensor(expected)
    )
    torch.testing.assert_close(min_max(attention), torch.tensor(a_n))


@SMALL
@given(scores=st.lists(st.integers(0, 5), min_size=1, max_size=12), data=st.data())
def test_select_kept_is_top_k_in_original_order(scores, data):
    keep = data.draw(st.integers(1, len(scores)))
    kept = select_kept(torch.tensor(scores, dtype=torch.float32), keep)
    assert kept.tolist() == ref_kept(scores, keep)


def test_select_kept_rejects_bad_counts():
    with pytest.raises(ValueError):
        select_kept(torch.ones(3), 0)
    with pytest.raises(ValueError):
        select_kept(torch.ones(3), 4)


@SMALL
@given(data=st.data(), v=st.integers(1, 8), dim=st.integers(1, 4))
def test_size_weighted_merge_matches_loop(data, v, dim):
    tokens = data.draw(ints((v, dim), -3, 3))
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=v, max_size=v))
    keep = data.draw(st.integers(1, v))
    kept = sorted(data.draw(st.permutations(range(v)))[:keep])
    rows = tokens.tolist()
    # Near-ties between kept targets would make float32 and float64 pick differently.
    for i in set(range(v)) - set(kept):
        sims = sorted((ref_cos(rows[i], rows[j]) for j in kept), reverse=True)
        assume(len(sims) == 1 or sims[0] - sims[1] > 1e-4 or sims[0] == sims[1])
    merged = merge_into_kept(tokens, torch.tensor(sizes, dtype=torch.int32), torch.tensor(kept))
    expected, expected_sizes = ref_merge(rows, sizes, kept)
    torch.testing.assert_close(merged.tokens, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert merged.sizes.tolist() == expected_sizes
    assert sum(merged.sizes.tolist()) == sum(sizes)
    assert merged.target[torch.tensor(kept)].tolist() == list(range(keep))


def test_merge_is_one_weighted_mean_not_sequential_averages():
    """Three tokens into one kept token: the mean weights each by its size once."""
    tokens = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 1.0]])
    sizes = torch.tensor([1, 2, 1], dtype=torch.int32)
    merged = merge_into_kept(tokens, sizes, torch.tensor([0]))
    torch.testing.assert_close(merged.tokens, torch.tensor([[(1 + 6 + 5) / 4, 0.25]]))
    assert merged.sizes.tolist() == [4]


@SMALL
@given(data=st.data(), v=st.integers(1, 9), dim=st.integers(1, 4))
def test_holitom_merge_is_its_running_pairwise_average(data, v, dim):
    tokens = data.draw(ints((v, dim), -3, 3))
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=v, max_size=v))
    keep = data.draw(st.integers(1, v))
    kept = sorted(data.draw(st.permutations(range(v)))[:keep])
    rows = tokens.tolist()
    for i in set(range(v)) - set(kept):
        sims = sorted((ref_cos(rows[i], rows[j]) for j in kept), reverse=True)
        # A tie is well-defined only for a zero row (every similarity exactly 0 in any
        # arithmetic: the first kept token wins); a tie in exact arithmetic between non-zero
        # rows can break either way in float32 (found by Hypothesis: dot -5 against two kept
        # rows of equal norm).
        assume(len(sims) == 1 or sims[0] - sims[1] > 1e-4 or not any(rows[i]))
    merged = holitom_merge(tokens, torch.tensor(sizes, dtype=torch.int32), torch.tensor(kept))
    expected, targets = ref_holitom_merge(rows, kept)
    torch.testing.assert_close(merged.tokens, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    members = {j: [j] + [i for i, t in targets.items() if t == j] for j in kept}
    assert merged.sizes.tolist() == [sum(sizes[i] for i in members[j]) for j in kept]


def test_holitom_weighs_later_tokens_more_and_ignores_sizes():
    """Three dropped tokens into one kept token: ((((k + a)/2 + b)/2 + c)/2, not the mean."""
    tokens = torch.tensor([[8.0, 1.0], [4.0, 1.0], [2.0, 1.0], [16.0, 1.0]])
    sizes = torch.tensor([5, 1, 1, 1], dtype=torch.int32)
    merged = holitom_merge(tokens, sizes, torch.tensor([0]))
    expected = ((((8 + 4) / 2 + 2) / 2 + 16) / 2, 1.0)
    torch.testing.assert_close(merged.tokens, torch.tensor([expected]))
    assert merged.sizes.tolist() == [8]


def test_scores_and_query_rows_by_method():
    assert [
        scoring_layer(MergeConfig(method=m), 5) for m in ("text_aware", "fastv", "holitom")
    ] == [
        5,
        4,
        4,
    ]
    assert merge_query_rows(MergeConfig(method="fastv"), 9, 6).tolist() == [8]
    assert merge_query_rows(MergeConfig(method="holitom"), 9, 6).tolist() == [8]
    assert merge_query_rows(MergeConfig(), 9, 6).tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="none"):
        merge_query_rows(MergeConfig(method="none"), 9, 6)

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 4, generator=generator)
    rows = torch.arange(6, 9)
    q, k = torch.randn(2, 3, 4, generator=generator), torch.randn(2, 9, 4, generator=generator)
    probs = causal_attention_probs(q, k, rows, 0.5)
    visual = slice(1, 5)
    for method in ("fastv", "holitom"):  # the last row only, mean over heads
        scores = visual_scores(probs[:, -1:], hidden, visual, 6, MergeConfig(method=method))
        torch.testing.assert_close(scores, probs[:, -1, 1:5].mean(dim=0))
    expected = importance(
        text_visual_attention(probs, visual),
        text_visual_similarity(hidden[visual], hidden[6:]),
        0.25,
    )
    torch.testing.assert_close(
        visual_scores(probs, hidden, visual, 6, MergeConfig(lam=0.25)), expected
    )
    with pytest.raises(ValueError, match="follow"):
        visual_scores(probs, hidden, visual, 4, MergeConfig())


def test_plan_merge_by_method():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(6, 3, generator=generator)
    sizes = torch.tensor([1, 2, 1, 3, 1, 1], dtype=torch.int32)
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    kept = [1, 3, 5]
    fastv = plan_merge(scores, tokens, sizes, 3, MergeConfig(method="fastv"))
    assert fastv.kept.tolist() == kept
    assert torch.equal(fastv.tokens, tokens[kept]) and fastv.sizes.tolist() == [2, 3, 1]
    ours = plan_merge(scores, tokens, sizes, 3, MergeConfig())
    expected = merge_into_kept(tokens, sizes, torch.tensor(kept))
    assert torch.equal(ours.tokens, expected.tokens) and ours.sizes.tolist() == [*expected.sizes]
    holitom = plan_merge(scores, tokens, sizes, 3, MergeConfig(method="holitom"))
    assert torch.equal(holitom.tokens, holitom_merge(tokens, sizes, torch.tensor(kept)).tokens)
    assert int(holitom.sizes.sum()) == int(sizes.sum())
    with pytest.raises(ValueError, match="one score"):
        plan_merge(scores[:5], tokens, sizes, 3, MergeConfig())
    with pytest.raises(ValueError, match="active"):
        plan_merge(scores, tokens, sizes, 3, MergeConfig(method="none"))
