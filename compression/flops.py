"""FLOPs of prefill + decoding, Eq. S3 of the paper's supplement (METHOD.md section 6).

FLOPs = sum over layers i of [ 4 n_i d^2 + 2 n_i^2 d + 2 n_i d m
                               + R ( 4 d^2 + 2 d m + 2 (d n_i + (d / 2)(R + 1)) ) ]

n_i: tokens at layer i, d: hidden size, m: FFN intermediate size, R: generated tokens (100).
Computed per layer from the list of n_i, so the in-LLM merge at layer K shows up as a shorter
n_i from K on, and each step of a layer schedule (Fig. S1) as a further drop from its layer on.
The paper's FLOPs column counts visual tokens only (text_tokens=0); `flops_report` gives that
figure and the one with the text tokens beside it, for one answer against its video's
uncompressed baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compression.config import MergeConfig


def prefill_decode_flops(
    layer_tokens: Sequence[int], hidden: int, ffn: int, generated: int = 100
) -> float:
    """Eq. S3 exactly, for the given tokens per layer (integer arithmetic, then one float)."""
    for name, value in (("hidden", hidden), ("ffn", ffn)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(generated, int) or generated < 0:
        raise ValueError(f"generated must be a non-negative integer, got {generated!r}")
    if any(not isinstance(n, int) or n < 0 for n in layer_tokens):
        raise ValueError("layer_tokens must be non-negative integers")
    d, m, r = hidden, ffn, generated
    total = 0
    for n in layer_tokens:
        prefill = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
        # 2 (d n + (d/2)(R + 1)) = 2 d n + d (R + 1): an integer for every d.
        decode = r * (4 * d * d + 2 * d * m + 2 * d * n + d * (r + 1))
        total += prefill + decode
    return float(total)


def layer_token_counts(
    num_layers: int, visual_tokens: int, text_tokens: int, merge: MergeConfig = MergeConfig()
) -> list[int]:
    """n_i per layer: visual + text tokens before the first merge layer; from each step's layer
    on, the visual tokens that step kept + text.

    The kept counts are `MergeConfig.kept_counts` (each step ceil(R_s n_{s-1}), as inside the
    LLM). With merge.method == "none" every layer sees every token; a step at K >= num_layers
    (and any after it) does not happen, as inside the LLM.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if visual_tokens < 0 or text_tokens < 0:
        raise ValueError("token counts must be non-negative")
    visual_from: dict[int, int] = {}
    if merge.active:
        for (layer, _), kept in zip(merge.schedule, merge.kept_counts(visual_tokens), strict=True):
            visual_from[layer] = kept
    counts, visual = [], visual_tokens
    for i in range(num_layers):
        visual = visual_from.get(i, visual)
        counts.append(visual + text_tokens)
    return counts


@dataclass(frozen=True)
class FlopsReport:
    """Eq. S3 FLOPs of one answer, and of the same question over all N original visual tokens
    with no merge (the baseline), in the paper's convention (visual tokens only) and with the
    text tokens counted too; the ratios are answer / baseline."""

    ratio_visual_only: float
    ratio_with_text: float
    flops_visual_only: float
    flops_with_text: float
    baseline_flops_visual_only: float
    baseline_flops_with_text: float


def flops_report(
    layer_tokens: Sequence[int],
    layer_visual_tokens: Sequence[int],
    original_visual: int,
    hidden: int,
    ffn: int,
    generated: int = 100,
) -> FlopsReport:
    """The FLOPs of an answer whose prefill saw `layer_tokens` tokens per layer, of which
    `layer_visual_tokens` visual, against all `original_visual` tokens of its video, unmerged.

    `generated` is Eq. S3's R (the paper's 100 whatever an answer generated), so answers of
    different lengths compare like with like."""
    if len(layer_tokens) != len(layer_visual_tokens) or not layer_tokens:
        raise ValueError("layer_tokens and layer_visual_tokens need one entry per layer")
    num_layers = len(layer_tokens)
    text_tokens = layer_tokens[0] - layer_visual_tokens[0]
    no_merge = MergeConfig(method="none")

    def cost(counts: Sequence[int]) -> float:
        return prefill_decode_flops(counts, hidden, ffn, generated)

    ours_visual, ours_text = cost(layer_visual_tokens), cost(layer_tokens)
    base_visual = cost(layer_token_counts(num_layers, original_visual, 0, no_merge))
    base_text = cost(layer_token_counts(num_layers, original_visual, text_tokens, no_merge))
    return FlopsReport(
        ratio_visual_only=ours_visual / base_visual,
        ratio_with_text=ours_text / base_text,
        flops_visual_only=ours_visual,
        flops_with_text=ours_text,
        baseline_flops_visual_only=base_visual,
        baseline_flops_with_text=base_text,
    )
