"""Our own loop over a decoder-only LLM's layers: prefill with the merge steps of a
`MergeConfig` (one at layer K, or a schedule), then one decoding step at a time. Tensors in,
tensors out: choosing tokens, stop strings and streaming are the generation layer's
(`compression.models.generation`).

Shared by every plug-in (LLaVA-OneVision with 1D positions, Qwen2.5-VL with 3D M-RoPE positions).
The plug-in builds one `PromptSequence` per question (input embeddings with the token set's
tokens in place of the video, the position ids, where the visual rows are); the loop does the rest:

* prefill: every sequence of the batch in ONE forward, left-padded. A merge step at layer K
  scores the visual tokens at the input of its scoring layer (`compression.text_merge.
  scoring_layer`: K for text_aware; K - 1 for fastv and holitom, which rank by the attention
  inside layer K - 1): `score_visual_tokens` recomputes that layer's queries and keys of the
  sequence's unpadded rows, and the scoring layer then runs on all tokens as usual. At the
  input of layer K, `compression.text_merge.plan_merge` keeps (and merges) the chosen visual
  rows of each sequence, the batch is re-padded, and layers K.. continue on the shorter
  sequences. A schedule repeats this at each of its layers, each step on what the step before
  left. Each layer runs once, so each layer's KV cache is written once: the layers between two
  merge layers form a group whose caches all hold that group's length (a `DynamicCache` keeps
  per-layer tensors, so lengths differ across groups).
* decoding: one token per sequence per step through the same loop, positions continuing from the
  last prefill position + 1; each group of layers attends with its own key mask.

Rotary embeddings are computed once per forward by the language model's own `rotary_emb` and,
at each merge, gathered at the kept rows (so a kept token keeps its original position, as FastV
and HoliTom also do).

Masks are explicit (NOTES-transformers pitfalls): query i of a sequence may attend to key j when
j is not in the future and j is a real token; a padding query also attends to itself, so no row
is fully masked (a NaN there would reach real tokens through 0 * NaN). When a group of layers
has no padding at all and attention is sdpa, the mask is None: sdpa then runs its causal kernel
in prefill (the cache of the layer is empty, so queries and keys have the same length) and
attends to every cached key in decoding. Supported attention implementations: "sdpa", "eager".

Padding cannot change results: scores and merges are computed per sequence on unpadded rows and
padded keys are masked out (so a batch equals one-by-one runs).

API (all tensors on the model's device):

    parts = LanguageModelParts(language_model=model.model.language_model, lm_head=model.lm_head)
    seq = PromptSequence(embeds [L, d], positions [L] or [3, L], visual=slice(a, b),
                         text_start=int, visual_sizes=[V] int)
    state = prefill(parts, [seq, ...], merge)        # state.logits: [B, vocab] of the next token
    logits = decode_step(parts, state, token_ids)    # one token per sequence
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from compression.config import MergeConfig, kept_share
from compression.text_merge import (
    causal_attention_probs,
    merge_query_rows,
    plan_merge,
    scoring_layer,
    visual_scores,
)

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class LanguageModelParts:
    """The pieces of a Hugging Face decoder the loop drives.

    language_model: the decoder stack (Qwen2Model, Qwen2_5_VLTextModel, ...) with `embed_tokens`,
        `layers`, `norm`, `rotary_emb` and `config`.
    lm_head: the output projection to the vocabulary.
    """

    language_model: nn.Module
    lm_head: nn.Module

    def __post_init__(self) -> None:
        impl = self.config._attn_implementation
        if impl not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"the decoder loop builds explicit masks for {SUPPORTED_ATTENTION}; "
                f"load the model with one of them, not {impl!r}"
            )

    @property
    def config(self):
        return self.language_model.config

    @property
    def layers(self) -> Sequence[nn.Module]:
        return self.language_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.language_model.layers)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """[B, d] un-normed last hidden states -> [B, vocab] float32 logits."""
        return self.lm_head(self.language_model.norm(last_hidden)).float()


@dataclass
class PromptSequence:
    """One question's prompt, ready for the LLM.

    embeds: [L, d] input embeddings (text embeddings with the visual tokens in place of the video).
    positions: [L] (1D RoPE) or [3, L] (M-RoPE) long position ids.
    visual: rows of the visual tokens (the token set's tokens) in `embeds`.
    text_start: first row of the text tokens T the merge scores against (rows text_start..L-1);
        usually visual.stop, later when a model inserts its own separator after the video.
    visual_sizes: [V] original tokens each visual token stands for (weights of the merge).
    prefix_key: what, besides the token set, makes rows 0..text_start-1 what they are (the
        plug-in's prompt ids before the video: template and system prompt); None: never reused
        (`compression.models.prefix_cache`).
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    visual: slice
    text_start: int
    visual_sizes: torch.Tensor
    prefix_key: Hashable | None = None

    def __post_init__(self) -> None:
        length = self.embeds.shape[0]
        if self.embeds.ndim != 2 or length < 1:
            raise ValueError(f"embeds must be [L, d] with L >= 1, got {tuple(self.embeds.shape)}")
        if self.positions.shape[-1] != length or self.positions.ndim not in (1, 2):
            raise ValueError(
                f"positions must be [L] or [3, L] with L={length}, "
                f"got {tuple(self.positions.shape)}"
            )
        if self.positions.ndim == 2 and self.positions.shape[0] != 3:
            raise ValueError("3D positions must have 3 rows (t, h, w)")
        start, stop = self.visual.start or 0, self.visual.stop
        if stop is None or not 0 <= start <= stop <= self.text_start <= length:
            raise ValueError(
                f"need 0 <= visual.start <= visual.stop <= text_start <= L, got visual="
                f"{self.visual}, text_start={self.text_start}, L={length}"
            )
        self.visual = slice(start, stop)
        if tuple(self.visual_sizes.shape) != (stop - start,):
            raise ValueError(
                f"visual_sizes must have one entry per visual row ({stop - start}), "
                f"got {tuple(self.visual_sizes.shape)}"
            )

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def visual_count(self) -> int:
        return self.visual.stop - self.visual.start


@dataclass
class SequenceStats:
    """Per-sequence figures of a prefill, for the `Answer`."""

    prompt_tokens: int
    visual_in: int
    visual_after_merge: int
    layer_tokens: list[int]
    layer_visual_tokens: list[int]
    kept_visual: torch.Tensor | None
    cached_prompt_tokens: int = 0  # prompt rows taken from a `CachedPrefix`


@dataclass
class DecodeState:
    """Everything decoding needs after a prefill.

    cache: per-layer KV cache; the layers of group g hold `valid[g].shape[1]` keys.
    valid: one [B, C_g] bool per group of layers, which cached key positions are real tokens.
        Group 0 is the layers before the first merge, group g the layers from the g-th merge
        layer to the next (one group when no merge ran).
    layer_groups: the group of each layer.
    next_positions: [B] long, the position id of each sequence's next token.
    logits: [B, vocab] float32 logits of the next token.
    """

    cache: DynamicCache
    valid: list[torch.Tensor]
    layer_groups: list[int]
    next_positions: torch.Tensor
    logits: torch.Tensor
    position_rows: int  # 0 for 1D position ids, 3 for M-RoPE
    stats: list[SequenceStats] = field(default_factory=list)
    prefixes: list[CachedPrefix] = field(default_factory=list)  # prefill(capture=True)


# --------------------------------------------------------------------------------------------
# masks and row gathers
# --------------------------------------------------------------------------------------------
def attention_mask(
    key_valid: torch.Tensor,
    query_count: int,
    implementation: str,
    dtype: torch.dtype,
    *,
    explicit: bool = False,
) -> torch.Tensor | None:
    """Mask for `query_count` new queries over `key_valid` [B, C + q] keys (cache + new).

    Query i sits at key position C + i. Returns None where sdpa's own causal handling is exact
    (no padding key at all, and not `explicit`), else [B, 1, q, C + q]: bool for sdpa, additive
    float for eager. `explicit`: always a mask (several queries over a non-empty cache, where
    sdpa's causal kernel would align them top-left).
    """
    if implementation == "sdpa" and not explicit and bool(key_valid.all()):
        return None
    total = key_valid.shape[1]
    device = key_valid.device
    query_pos = torch.arange(total - query_count, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None] & (key_valid[:, None, :] | (key_pos == query_pos)[None])
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick rows along the sequence axis: x [..., B, L, D], index [B, L'] -> [..., B, L', D]."""
    lead = x.shape[:-3]
    idx = index.view(*([1] * len(lead)), *index.shape, 1).expand(*lead, *index.shape, x.shape[-1])
    return torch.gather(x, -2, idx)


def gather_positions(positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """positions [B, L] or [3, B, L], index [B, L'] -> positions of the picked rows."""
    idx = index.expand(*positions.shape[:-2], *index.shape)
    return torch.gather(positions, -1, idx)


def _left_pad_index(rows: Sequence[torch.Tensor], device: torch.device):
    """Rows of each sequence (indices into its padded input) -> [B, L'] index + valid mask.

    Padding slots point at the sequence's first real row (any real row would do: they are masked).
    """
    width = max(len(r) for r in rows)
    index = torch.empty(len(rows), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        pad = width - len(r)
        index[b, :pad] = r[0]
        index[b, pad:] = r
        valid[b, pad:] = True
    return index, valid


# --------------------------------------------------------------------------------------------
# the merge's view of a decoder layer
# --------------------------------------------------------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The RoPE rotation of Qwen2/Llama-style decoders (second half negated, swapped)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [H, n, hd]; cos/sin [n, hd] (already M-RoPE-recomposed for Qwen2.5-VL)."""
    return x * cos.unsqueeze(0) + rotate_half(x) * sin.unsqueeze(0)


def project_queries_keys(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries of `query_rows` and keys of all rows, as the decoder layer computes them.

    layer: a Qwen2-style decoder layer (`input_layernorm`, `self_attn.{q_proj,k_proj,head_dim,
        num_key_value_groups}`); Qwen2 and Qwen2.5-VL text layers both qualify.
    hidden: [L, d] the layer's input hidden states of one unpadded sequence.
    cos, sin: [L, hd] the rotary embedding of each row.
    query_rows: [T] long, rows whose queries are needed.
    Returns q [H, T, hd] and k [H, L, hd] (GQA key heads repeated to the query heads).
    """
    attn = layer.self_attn
    head_dim = attn.head_dim
    normed = layer.input_layernorm(hidden)
    q = attn.q_proj(normed[query_rows]).view(len(query_rows), -1, head_dim).transpose(0, 1)
    k = attn.k_proj(normed).view(hidden.shape[0], -1, head_dim).transpose(0, 1)
    q = apply_rope(q, cos[query_rows], sin[query_rows])
    k = apply_rope(k, cos, sin)
    k = k.repeat_interleave(attn.num_key_value_groups, dim=0)
    return q, k


def score_visual_tokens(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    visual: slice,
    text_start: int,
    config: MergeConfig,
) -> torch.Tensor:
    """`compression.text_merge.visual_scores` of one unpadded sequence at decoder layer `layer`
    (its scoring layer): hidden [L, d] is the layer's input, cos/sin [L, hd] its rotary
    embedding. Returns [V] scores, higher kept first."""
    rows = merge_query_rows(config, hidden.shape[0], text_start).to(hidden.device)
    queries, keys = project_queries_keys(layer, hidden, cos, sin, rows)
    probs = causal_attention_probs(queries, keys, rows, layer.self_attn.scaling)
    return visual_scores(probs, hidden, visual, text_start, config)


# --------------------------------------------------------------------------------------------
# prefill and decoding
# --------------------------------------------------------------------------------------------
def _stack_left_padded(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(embeddings [L, d], positions [..., L]) per sequence -> embeddings [B, W, d], positions
    [..., B, W], valid [B, W]; sequences right-aligned."""
    width = max(embeds.shape[0] for embeds, _ in rows)
    first, first_positions = rows[0]
    embeds = first.new_zeros(len(rows), width, first.shape[1], device=device)
    pos_shape = (*first_positions.shape[:-1], len(rows), width)
    positions = torch.zeros(pos_shape, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for b, (row_embeds, row_positions) in enumerate(rows):
        begin = width - row_embeds.shape[0]
        embeds[b, begin:] = row_embeds.to(device)
        positions[..., b, begin:] = row_positions.to(device)
        valid[b, begin:] = True
    return embeds, positions, valid, width


@dataclass
class _View:
    """One sequence's rows as the current layer sees them: the visual span shrinks with each
    merge step (the rows before it never change), and the counts each layer saw are recorded."""

    seq: PromptSequence
    length: int
    visual_count: int
    sizes: torch.Tensor
    kept: torch.Tensor | None = None  # rows of seq's visual tokens still present, once merged
    layer_tokens: list[int] = field(default_factory=list)
    layer_visual_tokens: list[int] = field(default_factory=list)

    @property
    def visual(self) -> slice:
        return slice(self.seq.visual.start, self.seq.visual.start + self.visual_count)

    @property
    def text_start(self) -> int:
        return self.seq.text_start - (self.seq.visual_count - self.visual_count)

    def record_layer(self) -> None:
        self.layer_tokens.append(self.length)
        self.layer_visual_tokens.append(self.visual_count)

    def stats(self) -> SequenceStats:
        return SequenceStats(
            prompt_tokens=self.seq.length,
            visual_in=self.seq.visual_count,
            visual_after_merge=self.visual_count,
            layer_tokens=self.layer_tokens,
            layer_visual_tokens=self.layer_visual_tokens,
            kept_visual=self.kept.cpu() if self.kept is not None else None,
        )


def _merge_steps(
    parts: LanguageModelParts, sequences: Sequence[PromptSequence], merge: MergeConfig
) -> dict[int, float]:
    """{merge layer: keep ratio} of the steps that happen. A step at K >= num_layers has no layer
    left after its merge point: it (and any later one) does not happen."""
    if not merge.active or all(s.visual_count == 0 for s in sequences):
        return {}
    return {layer: ratio for layer, ratio in merge.schedule if layer < parts.num_layers}


def _score_batch(
    layer: nn.Module,
    views: Sequence[_View],
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    merge: MergeConfig,
) -> list[torch.Tensor | None]:
    """Scores of every sequence's visual tokens at this layer's input (None: no visual token)."""
    cos, sin = cos_sin
    if cos.ndim != 3:
        raise ValueError(f"expected rotary embeddings [B, L, hd], got {tuple(cos.shape)}")
    width = hidden.shape[1]
    scores: list[torch.Tensor | None] = []
    for b, view in enumerate(views):
        if view.visual_count == 0:
            scores.append(None)
            continue
        real = slice(width - view.length, width)
        rows = (hidden[b, real], cos[b, real], sin[b, real])
        scores.append(score_visual_tokens(layer, *rows, view.visual, view.text_start, merge))
    return scores


def _apply_merge(
    views: Sequence[_View],
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    positions: torch.Tensor,
    scores: Sequence[torch.Tensor | None],
    keep_ratio: float,
    merge: MergeConfig,
):
    """Plan one step for every sequence, rebuild the padded batch on the kept rows and move
    each view on to them. Returns hidden, (cos, sin), positions and the new valid mask."""
    device = hidden.device
    width = hidden.shape[1]
    rows, plans = [], []
    for b, view in enumerate(views):
        pad = width - view.length
        if scores[b] is None:
            rows.append(torch.arange(pad, width, device=device))
            plans.append(None)
            continue
        start, stop = pad + view.visual.start, pad + view.visual.stop
        keep = kept_share(keep_ratio, view.visual_count)
        plan = plan_merge(scores[b], hidden[b, start:stop], view.sizes, keep, merge)
        rows.append(
            torch.cat(
                [
                    torch.arange(pad, start, device=device),
                    start + plan.kept,
                    torch.arange(stop, width, device=device),
                ]
            )
        )
        plans.append(plan)
    index, valid = _left_pad_index(rows, device)
    new_hidden = gather_rows(hidden, index)
    new_width = index.shape[1]
    for b, (view, plan) in enumerate(zip(views, plans, strict=True)):
        view.length = len(rows[b])
        if plan is None:
            continue
        begin = new_width - view.length + view.visual.start
        new_hidden[b, begin : begin + len(plan.kept)] = plan.tokens
        view.kept = plan.kept if view.kept is None else view.kept[plan.kept]
        view.visual_count = len(plan.kept)
        view.sizes = plan.sizes
    cos, sin = cos_sin
    new_cos_sin = (gather_rows(cos, index), gather_rows(sin, index))
    return new_hidden, new_cos_sin, gather_positions(positions, index), valid


def resume_layer(num_layers: int, merge: MergeConfig) -> int:
    """The first layer whose input needs every row of the prompt at once: the scoring layer of
    the first merge step (or the step's layer, whichever comes first), or `num_layers` when no
    merge step happens. Below it, each row's states depend on the rows before it only (causal
    attention), so the rows before the question (`CachedPrefix`) are the same for every
    question about a video and can be computed once."""
    steps = [layer for layer, _ in merge.schedule if layer < num_layers] if merge.active else []
    if not steps:
        return num_layers
    return min(scoring_layer(merge, steps[0]), steps[0])


@dataclass
class CachedPrefix:
    """The rows of a prompt before its text T (system prompt, video, its wrapper) as a prefill
    left them: what a later question about the same video reuses instead of computing again.

    rows: P, the prompt rows covered (the sequence's `text_start`).
    keys, values: per layer below `resume`, [kv_heads, P, head_dim] (rotary applied).
    hidden: [P, d] the rows' hidden states at the input of layer `resume`; None when `resume`
        is the number of layers (no merge: the cache is all there is).
    resume: `resume_layer` of the merge this was computed for.
    """

    rows: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hidden: torch.Tensor | None
    resume: int

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys, *self.values] + ([self.hidden] if self.hidden is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def _capture_prefixes(
    cache: DynamicCache,
    hidden: torch.Tensor | None,
    views: Sequence[_View],
    width: int,
    resume: int,
) -> list[CachedPrefix]:
    """Cut each sequence's prefix rows out of a full prefill (before any merge: the layout is
    the stacked input's, sequence b right-aligned in `width` columns)."""
    prefixes = []
    for b, view in enumerate(views):
        begin = width - view.seq.length
        rows = slice(begin, begin + view.seq.text_start)
        layers = cache.layers[:resume]
        prefixes.append(
            CachedPrefix(
                rows=view.seq.text_start,
                keys=[layer.keys[b, :, rows].clone() for layer in layers],
                values=[layer.values[b, :, rows].clone() for layer in layers],
                hidden=hidden[b, rows].clone() if hidden is not None else None,
                resume=resume,
            )
        )
    return prefixes


def _prefill_after_prefix(
    parts: LanguageModelParts,
    sequences: Sequence[PromptSequence],
    prefixes: Sequence[CachedPrefix],
    resume: int,
    cache: DynamicCache,
):
    """Layers below `resume` on the rows after each cached prefix only, attending to the
    prefix's cached keys. The cache of those layers holds [prefix (left-padded) | rest
    (left-padded)] columns. Returns the rest's hidden states [B, S, d] at the input of layer
    `resume`, its positions [..., B, S] and the key mask [B, P + S] of those layers."""
    device = parts.device
    impl = parts.config._attn_implementation
    for seq, prefix in zip(sequences, prefixes, strict=True):
        if prefix.rows != seq.text_start or prefix.resume != resume or prefix.rows >= seq.length:
            raise ValueError("a cached prefix must cover exactly the rows before the text")
    rest = [
        (s.embeds[p.rows :], s.positions[..., p.rows :])
        for s, p in zip(sequences, prefixes, strict=True)
    ]
    hidden, positions, rest_valid, width = _stack_left_padded(rest, device)
    prefix_width = max(p.rows for p in prefixes)
    prefix_valid = torch.zeros(len(prefixes), prefix_width, dtype=torch.bool, device=device)
    for b, prefix in enumerate(prefixes):
        prefix_valid[b, prefix_width - prefix.rows :] = True
    for i in range(resume):
        keys, values = (
            torch.stack(
                [
                    torch.nn.functional.pad(t[i].to(device), (0, 0, prefix_width - p.rows, 0))
                    for t, p in zip(tensors, prefixes, strict=True)
                ]
            )
            for tensors in ([p.keys for p in prefixes], [p.values for p in prefixes])
        )
        cache.update(keys, values, i)
    valid = torch.cat([prefix_valid, rest_valid], dim=1)
    mask = attention_mask(valid, width, impl, hidden.dtype, explicit=True)
    cos_sin = parts.language_model.rotary_emb(hidden, positions)
    for layer in parts.layers[:resume]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=cos_sin,
            past_key_values=cache,
            use_cache=True,
        )
    return hidden, positions, valid


@torch.no_grad()
def prefill(
    parts: LanguageModelParts,
    sequences: Sequence[PromptSequence],
    merge: MergeConfig,
    *,
    prefixes: Sequence[CachedPrefix] | None = None,
    capture: bool = False,
) -> DecodeState:
    """Run all layers once over the left-padded batch, with the merge steps (see module doc).

    prefixes: one `CachedPrefix` per sequence (computed for this merge's `resume_layer`): the
        layers below it then run on the rows after the prefix only, and the full rows are put
        together at its input. Exact: causal attention makes the prefix's states independent of
        what follows it, so logits equal a full prefill's.
    capture: return each sequence's `CachedPrefix` in `state.prefixes` (for a later question).
    """
    if not sequences:
        raise ValueError("prefill needs at least one sequence")
    ranks = {s.positions.ndim for s in sequences}
    if len(ranks) != 1:
        raise ValueError("all sequences of a batch must use the same kind of position ids")
    if prefixes is not None and len(prefixes) != len(sequences):
        raise ValueError("one cached prefix per sequence")
    device = parts.device
    impl = parts.config._attn_implementation
    resume = resume_layer(parts.num_layers, merge)
    views = [_View(s, s.length, s.visual_count, s.visual_sizes.to(device)) for s in sequences]
    steps = _merge_steps(parts, sequences, merge)
    # Layers that score for a merge at the NEXT layer (fastv, holitom: the attention inside
    # layer K - 1); text_aware scores at the merge layer itself, just before merging.
    scored_early = {scoring_layer(merge, k) for k in steps} - set(steps)
    cache = DynamicCache(config=parts.config)
    groups, layer_groups = [], []
    first = 0
    if prefixes is not None:
        hidden, positions, valid = _prefill_after_prefix(parts, sequences, prefixes, resume, cache)
        groups.append(valid)
        layer_groups += [0] * resume
        for view in views:
            for _ in range(resume):
                view.record_layer()
        first = resume
        if resume < parts.num_layers:
            width = hidden.shape[1]
            full = [
                (
                    torch.cat([p.hidden.to(device), hidden[b, width - (s.length - p.rows) :]]),
                    s.positions,
                )
                for b, (s, p) in enumerate(zip(sequences, prefixes, strict=True))
            ]
            hidden, positions, valid, width = _stack_left_padded(full, device)
    else:
        rows = [(s.embeds, s.positions) for s in sequences]
        hidden, positions, valid, width = _stack_left_padded(rows, device)
    captured = None
    if first < parts.num_layers:
        groups.append(valid)
        cos_sin = parts.language_model.rotary_emb(hidden, positions)
        mask = attention_mask(valid, valid.shape[1], impl, hidden.dtype)
    scores = None
    for i in range(first, parts.num_layers):
        layer = parts.layers[i]
        if capture and i == resume:
            captured = hidden
        if i in steps:
            if scores is None:
                scores = _score_batch(layer, views, hidden, cos_sin, merge)
            hidden, cos_sin, positions, valid = _apply_merge(
                views, hidden, cos_sin, positions, scores, steps[i], merge
            )
            scores = None
            groups.append(valid)
            mask = attention_mask(valid, valid.shape[1], impl, hidden.dtype)
        if i in scored_early:
            scores = _score_batch(layer, views, hidden, cos_sin, merge)
        layer_groups.append(len(groups) - 1)
        for view in views:
            view.record_layer()
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=cos_sin,
            past_key_values=cache,
            use_cache=True,
        )
    logits = parts.logits(hidden[:, -1])
    last = positions[..., -1]
    next_positions = (last.amax(dim=0) if last.ndim == 2 else last) + 1
    stats = [view.stats() for view in views]
    for stat, prefix in zip(stats, prefixes or (), strict=False):
        stat.cached_prompt_tokens = prefix.rows
    return DecodeState(
        cache=cache,
        valid=groups,
        layer_groups=layer_groups,
        next_positions=next_positions,
        logits=logits,
        position_rows=3 if positions.ndim == 3 else 0,
        stats=stats,
        prefixes=(
            _capture_prefixes(cache, captured, views, width, resume)
            if capture and prefixes is None
            else []
        ),
    )


@torch.no_grad()
def decode_step(
    parts: LanguageModelParts, state: DecodeState, token_ids: torch.Tensor
) -> torch.Tensor:
    """Feed one token per sequence ([B] long); updates `state` and returns [B, vocab] logits."""
    device = parts.device
    impl = parts.config._attn_implementation
    hidden = parts.language_model.embed_tokens(token_ids.to(device)[:, None])
    positions = state.next_positions[:, None]
    if state.position_rows:
        positions = positions[None].expand(state.position_rows, -1, -1)
    cos_sin = parts.language_model.rotary_emb(hidden, positions)
    new = torch.ones(len(token_ids), 1, dtype=torch.bool, device=device)
    state.valid = [torch.cat([valid, new], dim=1) for valid in state.valid]
    masks = [attention_mask(valid, 1, impl, hidden.dtype) for valid in state.valid]
    for layer, group in zip(parts.layers, state.layer_groups, strict=True):
        hidden = layer(
            hidden,
            attention_mask=masks[group],
            position_embeddings=cos_sin,
            past_key_values=state.cache,
            use_cache=True,
        )
    state.next_positions = state.next_positions + 1
    state.logits = parts.logits(hidden[:, -1])
    return state.logits
