"""Text-aware merging inside the LLM (METHOD.md section 5, Eq. 9), and the FastV baseline score.

Small functions over plain tensors of ONE sequence (no batch dimension, no padding), so that a
batch can never change a result. Like ToMe's `merge.py`, this module never touches a model: the
model side (`compression.models.decoder_loop`) reads the layer, computes the queries and keys
of the rows `merge_query_rows` names, and calls `plan_merge` once per sequence at layer K.

Flow at layer K, with h the hidden states at the INPUT of layer K ([L, d]):

1. (model side) the layer's own queries of the query rows and keys of all rows, with RoPE and
   GQA heads repeated: what the layer itself will compute; recomputing q/k is cheaper than
   asking the layer for attention maps, and no layer runs twice.
2. `causal_attention_probs`: softmax of each query row over all keys up to its own position.
3. `text_visual_attention` (A_m: visual columns, mean over heads, max over text rows) and
   `text_visual_similarity` (S_m: max cosine to any text token).
4. `importance`: min-max normalise both, I = (1 - lambda) A_m + lambda S_m.
5. `select_kept`: the top ceil(R |V|) by I, returned in original order.
6. `merge_into_kept`: each dropped token joins the kept token of highest cosine similarity; the
   merged token is the size-weighted mean of its members (one scatter_add, not pairwise averages).

FastV (`fastv_scores`): the attention of the LAST token of the sequence at layer K, mean over
heads; FastV drops the low-score tokens (no merge), see `plan_merge`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compression.config import MergeConfig


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


def merge_into_kept(tokens: torch.Tensor, sizes: torch.Tensor, kept: torch.Tensor) -> MergedTokens:
    """Merge every dropped token into its most similar kept token (cosine), size-weighted.

    tokens [V, d]; sizes [V] (positive, how many original tokens each stands for); kept [k]
    ascending indices. merged_j = sum_{i -> j} size_i * x_i / sum_{i -> j} size_i, where the
    members of j are j itself and the dropped tokens whose most similar kept token is j
    (first such j on ties). Computed in float32 with one scatter_add.
    """
    n = tokens.shape[0]
    target = torch.empty(n, dtype=torch.long, device=tokens.device)
    target[kept] = torch.arange(len(kept), device=tokens.device)
    dropped_mask = torch.ones(n, dtype=torch.bool, device=tokens.device)
    dropped_mask[kept] = False
    dropped = dropped_mask.nonzero().squeeze(1)
    if len(dropped):
        target[dropped] = cosine_matrix(tokens[dropped], tokens[kept]).argmax(dim=1)
    weights = sizes.to(device=tokens.device, dtype=torch.float32)
    summed = torch.zeros(len(kept), tokens.shape[1], dtype=torch.float32, device=tokens.device)
    summed.scatter_add_(
        0, target[:, None].expand(-1, tokens.shape[1]), tokens.float() * weights[:, None]
    )
    total = torch.zeros(len(kept), dtype=torch.float32, device=tokens.device)
    total.scatter_add_(0, target, weights)
    merged = (summed / total[:, None]).to(tokens.dtype)
    # A kept token that absorbed nothing stays bit-identical (size * x / size may round).
    absorbed = torch.zeros(len(kept), dtype=torch.bool, device=tokens.device)
    absorbed[target[dropped]] = True
    merged = torch.where(absorbed[:, None], merged, tokens[kept])
    return MergedTokens(tokens=merged, sizes=total.round().to(sizes.dtype), target=target)


def fastv_scores(probs_last: torch.Tensor, visual: slice) -> torch.Tensor:
    """FastV: attention of the last token on each visual column, mean over heads.

    probs_last [H, 1, L] from `causal_attention_probs` with the last row as the only query.
    """
    return probs_last[:, 0, visual].mean(dim=0)


@dataclass
class MergePlan:
    """What happens to one sequence's visual tokens at layer K.

    kept: [k] ascending indices into the sequence's visual tokens that stay.
    tokens: [k, d] the hidden states that replace them (merged for text_aware; unchanged for fastv).
    sizes: [k] original tokens each kept token stands for after the merge.
    """

    kept: torch.Tensor
    tokens: torch.Tensor
    sizes: torch.Tensor


def merge_query_rows(config: MergeConfig, length: int, text_start: int) -> torch.Tensor:
    """Rows whose queries score the visual tokens: the text rows T (text_aware), or the last row
    (fastv). `length` is the sequence's length, `text_start` its first text row."""
    if config.method == "fastv":
        return torch.tensor([length - 1])
    if config.method == "text_aware":
        return torch.arange(text_start, length)
    raise ValueError(f"no merge query rows for merge method {config.method!r}")


def plan_merge(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_rows: torch.Tensor,
    scaling: float,
    hidden: torch.Tensor,
    visual: slice,
    text_start: int,
    sizes: torch.Tensor,
    config: MergeConfig,
) -> MergePlan:
    """Decide the kept visual tokens of one unpadded sequence at the input of layer K.

    queries [H, T, hd] of `query_rows` (from `merge_query_rows`) and keys [H, L, hd] of all rows,
    as the layer computes them (RoPE applied, GQA heads repeated); scaling: the layer's attention
    scale; hidden [L, d] input of layer K; visual = rows of the visual tokens; text_start: first
    row of the text tokens T (rows text_start..L-1; they follow the video, so the causal mask
    lets them see it); sizes [V] of the visual tokens.
    text_aware: Eq. 9 importance, size-weighted merge of the dropped tokens.
    fastv: last-token attention, dropped tokens are discarded (FastV prunes; it does not merge).
    """
    n_visual = visual.stop - visual.start
    if n_visual < 1:
        raise ValueError("plan_merge needs at least one visual token")
    if not visual.stop <= text_start < hidden.shape[0]:
        raise ValueError(
            f"text rows must follow the visual rows: visual={visual}, text_start={text_start}, "
            f"length={hidden.shape[0]}"
        )
    if config.method not in ("text_aware", "fastv"):
        raise ValueError(f"plan_merge needs an active merge method, got {config.method!r}")
    keep = config.kept_count(n_visual)
    visual_hidden = hidden[visual]
    probs = causal_attention_probs(queries, keys, query_rows.to(hidden.device), scaling)
    if config.method == "fastv":
        kept = select_kept(fastv_scores(probs, visual), keep)
        return MergePlan(kept=kept, tokens=visual_hidden[kept], sizes=sizes[kept])
    scores = importance(
        text_visual_attention(probs, visual),
        text_visual_similarity(visual_hidden, hidden[text_start:]),
        config.lam,
    )
    kept = select_kept(scores, keep)
    merged = merge_into_kept(visual_hidden, sizes, kept)
    return MergePlan(kept=kept, tokens=merged.tokens, sizes=merged.sizes)
