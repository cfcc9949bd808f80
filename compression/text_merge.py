"""The in-LLM stage on plain tensors: text-aware merging (METHOD.md section 5, Eq. 9), and the
FastV and HoliTom inner baselines (METHOD.md section 8).

Small functions over plain tensors of ONE sequence (no batch dimension, no padding), so that a
batch can never change a result. Like ToMe's `merge.py`, this module never touches a model: the
model side (`compression.models.decoder_loop`) reads the layer `scoring_layer` names, computes
the queries of the rows `merge_query_rows` names and the keys of all rows, gets the scores from
`visual_scores`, and calls `plan_merge` once per sequence and step at the input of layer K.

One merge step at layer K, with h the hidden states of the sequence ([L, d]):

1. (model side) at the input of the scoring layer, the layer's own queries of the query rows
   and keys of all rows, with RoPE and GQA heads repeated: what the layer itself will compute;
   recomputing q/k is cheaper than asking the layer for attention maps, and no layer runs twice.
2. `causal_attention_probs`: softmax of each query row over all keys up to its own position.
3. `visual_scores`, by method:
   * text_aware (scored at the input of layer K): `text_visual_attention` (A_m: visual
     columns, mean over heads, max over text rows) and `text_visual_similarity` (S_m: max cosine
     to any text token), then `importance`: min-max normalise both, I = (1 - lambda) A_m +
     lambda S_m.
   * fastv, holitom (scored inside layer K - 1, i.e. from the input of layer K - 1, whose
     attention FastV reads with output_attentions): `last_token_attention`, the last row's
     attention on each visual column, mean over heads.
4. `plan_merge` at the input of layer K: `select_kept` keeps the top ceil(R |V|) by score, in
   original order; then text_aware: `merge_into_kept` (each dropped token joins the kept token of
   highest cosine similarity; size-weighted mean, one scatter_add); fastv: the dropped tokens are
   discarded; holitom: `holitom_merge`, HoliTom's running pairwise average.

Agreement with the published code (read at pkunlp-icler/FastV, src/FastV/llava-hf/.../
modeling_llama.py `fastv_forward` and lmms-eval/fastv_kvcache.py; cokeshao/HoliTom,
holitom/modeling_qwen2.py `Qwen2Model_holitom.forward`):

* Same: the ranking is the attention of the LAST token inside layer K - 1, mean over heads,
  restricted to the visual columns (FastV `last_layer_attention.mean(dim=1)[0][-1][visual]`;
  HoliTom the same lines); the kept tokens stay in original order and keep their original
  position ids (both pass `position_ids = keep_indexs`); the tokens are shortened at the input
  of layer K, whose KV cache and those after it hold the shorter sequence. HoliTom's merge: the
  target of each dropped token is the kept token of highest cosine similarity of the hidden
  states at the input of layer K, all targets computed before any update, and each dropped
  token, in ascending position order, updates its target as (target + dropped) / 2.
  `holitom_merge` is that loop in closed form (a target with dropped members d_1 < ... < d_n
  ends as 2^-n x_j + sum_k 2^-(n-k+1) x_{d_k}). Defaults as HoliTom's LLaVA-OV-7B scripts run
  it: K = 18 (HOLITOM_k=18), half the visual tokens kept (HOLITOM_r=0.5); FastV: K = 2.
* Differs, on purpose: (a) the kept count is ceil(R |V|) for every method (one rule, so the
  rows of a table compare like with like); FastV and HoliTom keep round(|V| (1 - r)) with r the
  pruned share, one token fewer when R |V| ends in .5 and Python rounds half to even (125
  visual tokens at R = 0.5: 63 here, 62 there). (b) Ties in the ranking go to the earlier token
  (stable sort); `torch.topk` leaves them unspecified. (c) Scores and merges are computed in
  float32 per sequence; the published code reads batch row 0 only (batch size 1) and HoliTom
  averages in the model dtype (bf16) in place. (d) We score from layer K - 1's input with the
  layer's own q/k and run layer K - 1 once; FastV's lmms-eval variant runs layer K - 1 twice
  (once for the attention map), which appends its KV cache twice (the duplicate-KV bug). (e)
  The visual span is the token set's tokens; in LLaVA-OV the published code's image span also
  covers the trailing image-newline token, which here stays as prompt text. (f) `sizes` of a
  holitom plan count the original tokens a merged token stands for (bookkeeping only; HoliTom's
  average does not weigh by them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compression.config import SCORED_BEFORE_K, MergeConfig


def causal_attention_probs(
    queries: torch.Tensor, keys: torch.Tensor, query_rows: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Softmax attention of each query row over keys 0..row (causal), in float32.

    queries [H, T, hd], keys [H, L, hd], query_rows [T] (row index of each query in the sequence).
    Returns [H, T, L] probabilities (zero on future keys).
    """
    scores = torch.matmul(queries.float(), keys.float().transpose(1, 2)) * scaling
    key_rows = torch.arange(keys.shape[1], device=keys.device)
    future = key_rows[None, :] > query_rows[:, None]
    scores = scores.masked_fill(future[None], float("-inf"))
    return scores.softmax(dim=-1)


def text_visual_attention(probs: torch.Tensor, visual: slice) -> torch.Tensor:
    """A_m(v): attention of the text rows on each visual column, mean over heads, max over rows.

    probs [H, T, L] from `causal_attention_probs` with the text rows as queries. Returns [V].
    """
    return probs[:, :, visual].mean(dim=0).amax(dim=0)


def text_visual_similarity(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """S_m(v) = max over text tokens t of cos(h_v, h_t). visual [V, d], text [T, d] -> [V]."""
    return cosine_matrix(visual, text).amax(dim=1)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity [len(a), len(b)] in float32."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def min_max(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] over all entries; a constant vector maps to zeros (it ranks nothing)."""
    low, high = x.min(), x.max()
    span = high - low
    if span <= 0:
        return torch.zeros_like(x)
    return (x - low) / span


def importance(attention: torch.Tensor, similarity: torch.Tensor, lam: float) -> torch.Tensor:
    """I(v) = (1 - lambda) * A_m^norm + lambda * S_m^norm (Eq. 9)."""
    return (1.0 - lam) * min_max(attention.float()) + lam * min_max(similarity.float())


def select_kept(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in ascending (original) order.

    Ties go to the earlier token (stable sort), so the choice is deterministic.
    """
    if not 1 <= keep <= scores.shape[0]:
        raise ValueError(f"keep must be in [1, {scores.shape[0]}], got {keep}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:keep].sort().values


@dataclass
class MergedTokens:
    """Result of `merge_into_kept`.

    tokens [k, d]: the kept tokens after absorbing their dropped neighbours (input dtype).
    sizes [k]: original tokens each merged token stands for.
    target [V]: for every input token, the row of `tokens` it ended in.
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    target: torch.Tensor


def nearest_kept(tokens: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [V], dropped [V - k]): the row of `kept` each token ends in (a kept token its own;
    a dropped token the kept token of highest cosine similarity, the first one on ties), and the
    dropped indices in ascending order."""
    n = tokens.shape[0]
    target = torch.empty(n, dtype=torch.long, device=tokens.device)
    target[kept] = torch.arange(len(kept), device=tokens.device)
    dropped_mask = torch.ones(n, dtype=torch.bool, device=tokens.device)
    dropped_mask[kept] = False
    dropped = dropped_mask.nonzero().squeeze(1)
    if len(dropped):
        target[dropped] = cosine_matrix(tokens[dropped], tokens[kept]).argmax(dim=1)
    return target, dropped


def _merged(
    tokens: torch.Tensor,
    kept: torch.Tensor,
    target: torch.Tensor,
    dropped: torch.Tensor,
    weights: torch.Tensor,
    sizes: torch.Tensor,
) -> MergedTokens:
    """sum_{i -> j} weight_i x_i / sum_{i -> j} weight_i per kept token j (float32, one
    scatter_add), and the member sizes summed; a kept token that absorbed nothing stays
    bit-identical (w x / w may round)."""
    dim = tokens.shape[1]
    summed = torch.zeros(len(kept), dim, dtype=torch.float32, device=tokens.device)
    summed.scatter_add_(0, target[:, None].expand(-1, dim), tokens.float() * weights[:, None])
    total = torch.zeros(len(kept), dtype=torch.float32, device=tokens.device)
    total.scatter_add_(0, target, weights)
    merged = (summed / total[:, None]).to(tokens.dtype)
    absorbed = torch.zeros(len(kept), dtype=torch.bool, device=tokens.device)
    absorbed[target[dropped]] = True
    merged = torch.where(absorbed[:, None], merged, tokens[kept])
    member_sizes = torch.zeros(len(kept), dtype=sizes.dtype, device=tokens.device)
    member_sizes.scatter_add_(0, target, sizes.to(tokens.device))
    return MergedTokens(tokens=merged, sizes=member_sizes, target=target)


def merge_into_kept(tokens: torch.Tensor, sizes: torch.Tensor, kept: torch.Tensor) -> MergedTokens:
    """Merge every dropped token into its most similar kept token (cosine), size-weighted.

    tokens [V, d]; sizes [V] (positive, how many original tokens each stands for); kept [k]
    ascending indices. merged_j = sum_{i -> j} size_i * x_i / sum_{i -> j} size_i, where the
    members of j are j itself and the dropped tokens whose most similar kept token is j
    (first such j on ties). Computed in float32 with one scatter_add.
    """
    target, dropped = nearest_kept(tokens, kept)
    weights = sizes.to(device=tokens.device, dtype=torch.float32)
    return _merged(tokens, kept, target, dropped, weights, sizes)


def holitom_merge(tokens: torch.Tensor, sizes: torch.Tensor, kept: torch.Tensor) -> MergedTokens:
    """HoliTom's in-LLM merge: each dropped token, in ascending order, replaces its most similar
    kept token x_j (cosine, targets fixed before any update) by (x_j + x_i) / 2.

    In closed form, for a kept token with dropped members d_1 < ... < d_n: 2^-n x_j + sum_k
    2^-(n-k+1) x_{d_k}, i.e. a weighted mean whose weights are powers of two (they sum to 1).
    Vectorised: n per target by scatter_add, each member's rank within its target from a stable
    sort. `sizes` only sum into the merged tokens' sizes (HoliTom does not weigh by them).
    """
    target, dropped = nearest_kept(tokens, kept)
    weights = torch.ones(tokens.shape[0], dtype=torch.float32, device=tokens.device)
    if len(dropped):
        joined = target[dropped]  # ascending dropped order
        members = torch.zeros(len(kept), dtype=torch.long, device=tokens.device)
        members.scatter_add_(0, joined, torch.ones_like(joined))
        order = torch.sort(joined, stable=True).indices
        grouped = joined[order]
        rank = torch.empty_like(joined)
        rank[order] = torch.arange(len(joined), device=tokens.device) - torch.searchsorted(
            grouped, grouped
        )
        # the k-th member (rank k - 1) of a target with n members weighs 2^-(n - k + 1)
        weights[dropped] = torch.exp2(-(members[joined] - rank).float())
        weights[kept] = torch.exp2(-members.float())
    return _merged(tokens, kept, target, dropped, weights, sizes)


def last_token_attention(probs_last: torch.Tensor, visual: slice) -> torch.Tensor:
    """FastV's (and HoliTom's) ranking: attention of the last token on each visual column, mean
    over heads. probs_last [H, 1, L] from `causal_attention_probs` with the last row as the only
    query."""
    return probs_last[:, 0, visual].mean(dim=0)


@dataclass
class MergePlan:
    """What happens to one sequence's visual tokens at one merge step.

    kept: [k] ascending indices into the step's visual tokens that stay.
    tokens: [k, d] the hidden states that replace them (merged for text_aware and holitom;
        unchanged for fastv).
    sizes: [k] original tokens each kept token stands for after the step (fastv: the kept
        tokens' own sizes; the pruned ones are gone).
    """

    kept: torch.Tensor
    tokens: torch.Tensor
    sizes: torch.Tensor


def scoring_layer(config: MergeConfig, merge_layer: int) -> int:
    """The layer at whose input a step merging at `merge_layer` computes its scores: K for
    text_aware (METHOD.md section 5), K - 1 for fastv and holitom (FastV ranks with the
    attention inside layer K - 1, and prunes from layer K on)."""
    return merge_layer - 1 if config.method in SCORED_BEFORE_K else merge_layer


def merge_query_rows(config: MergeConfig, length: int, text_start: int) -> torch.Tensor:
    """Rows whose queries score the visual tokens: the text rows T (text_aware), or the last row
    (fastv, holitom). `length` is the sequence's length, `text_start` its first text row."""
    if config.method in SCORED_BEFORE_K:
        return torch.tensor([length - 1])
    if config.method == "text_aware":
        return torch.arange(text_start, length)
    raise ValueError(f"no merge query rows for merge method {config.method!r}")


def visual_scores(
    probs: torch.Tensor,
    hidden: torch.Tensor,
    visual: slice,
    text_start: int,
    config: MergeConfig,
) -> torch.Tensor:
    """The score of each visual token of one unpadded sequence at its scoring layer; higher
    is kept first.

    probs [H, T, L]: `causal_attention_probs` of the `merge_query_rows` at the scoring layer;
    hidden [L, d]: the scoring layer's input; visual: rows of the visual tokens; text_start: first
    row of the text tokens T (rows text_start..L-1; they follow the video, so the causal mask
    lets them see it). text_aware: Eq. 9 importance; fastv, holitom: last-token attention.
    """
    if visual.stop - visual.start < 1:
        raise ValueError("scoring needs at least one visual token")
    if not visual.stop <= text_start < hidden.shape[0]:
        raise ValueError(
            f"text rows must follow the visual rows: visual={visual}, text_start={text_start}, "
            f"length={hidden.shape[0]}"
        )
    if config.method in SCORED_BEFORE_K:
        return last_token_attention(probs[:, -1:], visual)
    if config.method != "text_aware":
        raise ValueError(f"no scores for merge method {config.method!r}")
    return importance(
        text_visual_attention(probs, visual),
        text_visual_similarity(hidden[visual], hidden[text_start:]),
        config.lam,
    )


def plan_merge(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    sizes: torch.Tensor,
    keep: int,
    config: MergeConfig,
) -> MergePlan:
    """One step on one sequence's visual tokens at the input of layer K: keep the `keep`
    highest `scores` ([V], from `visual_scores`) in original order, and merge (text_aware:
    size-weighted; holitom: HoliTom's running average) or drop (fastv) the rest.

    tokens [V, d]: the visual tokens' hidden states at the input of layer K; sizes [V].
    """
    if not scores.shape[0] == tokens.shape[0] == sizes.shape[0]:
        raise ValueError(
            f"need one score and one size per visual token: scores {tuple(scores.shape)}, "
            f"tokens {tuple(tokens.shape)}, sizes {tuple(sizes.shape)}"
        )
    kept = select_kept(scores, keep)
    if config.method == "fastv":
        return MergePlan(kept=kept, tokens=tokens[kept], sizes=sizes[kept])
    if config.method == "text_aware":
        merged = merge_into_kept(tokens, sizes, kept)
    elif config.method == "holitom":
        merged = holitom_merge(tokens, sizes, kept)
    else:
        raise ValueError(f"plan_merge needs an active merge method, got {config.method!r}")
    return MergePlan(kept=kept, tokens=merged.tokens, sizes=merged.sizes)
