"""Eq. S3 FLOPs, checked against numbers derived by hand for LLaVA-OV-7B (Qwen2-7B LLM)."""

from __future__ import annotations

import pytest

from compression import CompressionConfig, MergeConfig
from compression.flops import flops_report, layer_token_counts, prefill_decode_flops

LAYERS, D, M = 28, 3584, 18944  # Qwen2-7B
FULL = 32 * 196  # 6,272 visual tokens


def per_layer(n: int, d: int = D, m: int = M, r: int = 100) -> int:
    """One layer of Eq. S3 for n tokens, term by term."""
    return (
        4 * n * d**2
        + 2 * n**2 * d
        + 2 * n * d * m
        + r * (4 * d**2 + 2 * d * m + 2 * d * n + d * (r + 1))
    )


def test_full_model_by_hand():
    # Per layer, n = 6272:
    #   4 n d^2   = 322,256,764,928
    #   2 n^2 d   = 281,974,669,312
    #   2 n d m   = 851,678,593,024
    #   R(4d^2 + 2dm + 2dn + d(R+1)) = 100 * 232,490,496 = 23,249,049,600
    #   total     = 1,479,159,076,864; x 28 layers:
    assert prefill_decode_flops([FULL] * LAYERS, D, M) == 41_416_454_152_192


def test_merge_shows_up_as_shorter_layers():
    # 2%/1%: 125 visual tokens enter, ceil(0.5 * 125) = 63 remain from layer K = 18 on.
    counts = layer_token_counts(LAYERS, 125, 0, MergeConfig())
    assert counts == [125] * 18 + [63] * 10
    assert prefill_decode_flops(counts, D, M) == 18 * per_layer(125) + 10 * per_layer(63)
    with_text = layer_token_counts(LAYERS, 125, 40, MergeConfig())
    assert with_text == [165] * 18 + [103] * 10
    assert layer_token_counts(LAYERS, 125, 40, MergeConfig(method="none")) == [165] * 28
    assert layer_token_counts(LAYERS, 125, 0, MergeConfig(layer=40)) == [125] * 28


def test_schedule_drops_tokens_at_each_step():
    # Fig. S1-style schedule: 125 -> ceil(0.5 * 125) = 63 at layer 8 -> ceil(0.5 * 63) = 32 at 16.
    schedule = MergeConfig.from_schedule([(8, 0.5), (16, 0.5)])
    counts = layer_token_counts(LAYERS, 125, 40, schedule)
    assert counts == [165] * 8 + [103] * 8 + [72] * 12
    expected = 8 * per_layer(125) + 8 * per_layer(63) + 12 * per_layer(32)
    assert prefill_decode_flops(layer_token_counts(LAYERS, 125, 0, schedule), D, M) == expected
    # a step past the last layer does not happen; FastV at its own K = 2
    late = MergeConfig.from_schedule([(8, 0.5), (28, 0.5)])
    assert layer_token_counts(LAYERS, 125, 0, late) == [125] * 8 + [63] * 20
    fastv = layer_token_counts(LAYERS, 6272, 0, MergeConfig(method="fastv", keep_ratio=0.1))
    assert fastv == [6272] * 2 + [628] * 26


def test_abstract_claim_at_two_percent():
    visual = CompressionConfig(retention_ratio=0.02).budget(FULL)
    assert visual == 125
    counts = layer_token_counts(LAYERS, visual, 0, MergeConfig())
    ratio = flops_report(counts, counts, FULL, D, M).ratio_visual_only
    assert ratio == (18 * per_layer(125) + 10 * per_layer(63)) / (28 * per_layer(FULL))
    # The abstract: "reducing FLOPs to roughly 2.6%". The token share alone is 2% (1% after K)
    # and the decode term (100 tokens, independent of n but for 2dn) adds ~0.5 point, so the
    # formula must land between 1.5% and 3.5%; it gives 2.580%.
    assert 0.015 < ratio < 0.035
    assert round(ratio, 4) == 0.0258


def test_report_counts_text_tokens_beside_the_paper_convention():
    visual = layer_token_counts(LAYERS, 125, 0, MergeConfig())
    with_text = layer_token_counts(LAYERS, 125, 40, MergeConfig())
    report = flops_report(with_text, visual, FULL, D, M)
    assert report.flops_visual_only == prefill_decode_flops(visual, D, M)
    assert report.flops_with_text == prefill_decode_flops(with_text, D, M)
    assert report.baseline_flops_with_text == LAYERS * per_layer(FULL + 40)
    assert report.ratio_with_text == report.flops_with_text / report.baseline_flops_with_text
    assert report.ratio_visual_only < report.ratio_with_text < 1


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hidden"):
        prefill_decode_flops([1], 0, M)
    with pytest.raises(ValueError, match="layer_tokens"):
        prefill_decode_flops([-1], D, M)
    with pytest.raises(ValueError, match="num_layers"):
        layer_token_counts(0, 10, 0)
