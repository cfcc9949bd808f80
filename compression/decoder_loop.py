"""Our own loop over a decoder-only LLM's layers: prefill with the merge at layer K, then decoding.

Shared by every plug-in (LLaVA-OneVision with 1D positions, Qwen2.5-VL with 3D M-RoPE positions).
The plug-in builds one `PromptSequence` per question (input embeddings with the token set's
tokens in place of the video, the position ids, where the visual rows are); the loop does the rest:

* prefill: every sequence of the batch in ONE forward, left-padded. Layers 0..K-1 see all tokens;
  at the input of layer K the merge (`compression.text_merge.plan_merge`, per sequence on its
  unpadded rows) shortens each sequence, the batch is re-padded and layers K..L-1 continue on the
  shorter sequences. Each layer runs once, so each layer's KV cache is written once: layers < K
  hold the full length, layers >= K the merged length (a `DynamicCache` keeps per-layer tensors).
* decoding: one token per sequence per step through the same loop, positions continuing from the
  last prefill position + 1; greedy or seeded sampling; EOS, stop strings, max_new_tokens.

Rotary embeddings are computed once per forward by the language model's own `rotary_emb` and,
at layer K, gathered at the kept rows (so a kept token keeps its original position).

Masks are explicit (NOTES-transformers pitfalls): query i of a sequence may attend to key j when
j is not in the future and j is a real token; a padding query also attends to itself, so no row
is fully masked (a NaN there would reach real tokens through 0 * NaN). When a group of layers
has no padding at all and attention is sdpa, the mask is None: sdpa then runs its causal kernel
in prefill (the cache of the layer is empty, so queries and keys have the same length) and
attends to every cached key in decoding. Supported attention implementations: "sdpa", "eager".

Padding cannot change results: the merge is planned per sequence on unpadded rows, padded keys are
masked out, and sampling uses one generator per sequence (so a batch equals one-by-one runs).

API (all tensors on the model's device):

    parts = LanguageModelParts(language_model=model.model.language_model, lm_head=model.lm_head)
    seq = PromptSequence(embeds [L, d], positions [L] or [3, L], visual=slice(a, b),
                         text_start=int, visual_sizes=[V] int)
    answers = generate(parts, [seq, ...], MergeConfig(...), GenerationConfig(...),
                       decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                       eos_token_ids={...})                       # -> list[Answer]
    run = GenerationRun(parts, [seq], merge, generation, decode=..., eos_token_ids=...)
    for pieces in run: ...          # per step: the new text piece of each sequence ("" if none)
    run.answers                     # -> list[Answer] once the iteration ended
    state = prefill(parts, [seq, ...], merge); logits = decode_step(parts, state, token_ids)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from compression.config import GenerationConfig, MergeConfig
from compression.text_merge import plan_merge
from compression.video_llm import Answer

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
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    visual: slice
    text_start: int
    visual_sizes: torch.Tensor

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


@dataclass
class DecodeState:
    """Everything decoding needs after a prefill.

    cache: per-layer KV cache; layers < merge_layer hold `valid_before` keys, the others
        `valid_after` keys (the same group when no merge ran).
    valid_before / valid_after: [B, C] bool, which cached key positions are real tokens.
    merge_layer: first layer that saw the merged sequence (num_layers when none did).
    next_positions: [B] long, the position id of each sequence's next token.
    logits: [B, vocab] float32 logits of the next token.
    """

    cache: DynamicCache
    valid_before: torch.Tensor
    valid_after: torch.Tensor
    merge_layer: int
    next_positions: torch.Tensor
    logits: torch.Tensor
    position_rows: int  # 0 for 1D position ids, 3 for M-RoPE
    stats: list[SequenceStats] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# masks and row gathers
# --------------------------------------------------------------------------------------------
def attention_mask(
    key_valid: torch.Tensor, query_count: int, implementation: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """Mask for `query_count` new queries over `key_valid` [B, C + q] keys (cache + new).

    Query i sits at key position C + i. Returns None where sdpa's own causal handling is exact
    (no padding key at all), else [B, 1, q, C + q]: bool for sdpa, additive float for eager.
    """
    if implementation == "sdpa" and bool(key_valid.all()):
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# prefill and decoding
# --------------------------------------------------------------------------------------------
def _stack_left_padded(sequences: Sequence[PromptSequence], device: torch.device):
    """Embeddings [B, W, d], positions [..., B, W], valid [B, W]; sequences right-aligned."""
    width = max(s.length for s in sequences)
    first = sequences[0]
    embeds = first.embeds.new_zeros(len(sequences), width, first.embeds.shape[1], device=device)
    pos_shape = (*first.positions.shape[:-1], len(sequences), width)
    positions = torch.zeros(pos_shape, dtype=torch.long, device=device)
    valid = torch.zeros(len(sequences), width, dtype=torch.bool, device=device)
    for b, s in enumerate(sequences):
        embeds[b, width - s.length :] = s.embeds.to(device)
        positions[..., b, width - s.length :] = s.positions.to(device)
        valid[b, width - s.length :] = True
    return embeds, positions, valid, width


def _merge_layer(
    parts: LanguageModelParts, sequences: Sequence[PromptSequence], merge: MergeConfig
):
    """First layer that runs on the merged sequence; num_layers when nothing is merged.

    K >= num_layers means no layer is left after the merge point: no merge happens.
    """
    if not merge.active or merge.layer >= parts.num_layers:
        return parts.num_layers
    if all(s.visual_count == 0 for s in sequences):
        return parts.num_layers
    return merge.layer


def _apply_merge(
    layer: nn.Module,
    sequences: Sequence[PromptSequence],
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    positions: torch.Tensor,
    width: int,
    merge: MergeConfig,
):
    """Plan the merge of every sequence and rebuild the padded batch on the kept rows."""
    cos, sin = cos_sin
    if cos.ndim != 3:
        raise ValueError(f"expected rotary embeddings [B, L, hd], got {tuple(cos.shape)}")
    device = hidden.device
    rows, plans = [], []
    for b, seq in enumerate(sequences):
        pad = width - seq.length
        if seq.visual_count == 0:
            rows.append(torch.arange(pad, width, device=device))
            plans.append(None)
            continue
        real = slice(pad, width)
        plan = plan_merge(
            layer,
            hidden[b, real],
            cos[b, real],
            sin[b, real],
            seq.visual,
            seq.text_start,
            seq.visual_sizes.to(device),
            merge,
        )
        start, stop = pad + seq.visual.start, pad + seq.visual.stop
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
    for b, (seq, plan) in enumerate(zip(sequences, plans, strict=True)):
        if plan is not None:
            begin = new_width - len(rows[b]) + seq.visual.start
            new_hidden[b, begin : begin + len(plan.kept)] = plan.tokens
    new_cos_sin = (gather_rows(cos, index), gather_rows(sin, index))
    return new_hidden, new_cos_sin, gather_positions(positions, index), valid, rows, plans


@torch.no_grad()
def prefill(
    parts: LanguageModelParts, sequences: Sequence[PromptSequence], merge: MergeConfig
) -> DecodeState:
    """Run all layers once over the left-padded batch, merging at layer K (see module doc)."""
    if not sequences:
        raise ValueError("prefill needs at least one sequence")
    ranks = {s.positions.ndim for s in sequences}
    if len(ranks) != 1:
        raise ValueError("all sequences of a batch must use the same kind of position ids")
    device = parts.device
    impl = parts.config._attn_implementation
    hidden, positions, valid, width = _stack_left_padded(sequences, device)
    merge_layer = _merge_layer(parts, sequences, merge)
    cache = DynamicCache(config=parts.config)
    cos_sin = parts.language_model.rotary_emb(hidden, positions)
    valid_before = valid
    mask = attention_mask(valid, width, impl, hidden.dtype)
    rows, plans = None, [None] * len(sequences)
    for i, layer in enumerate(parts.layers):
        if i == merge_layer:
            hidden, cos_sin, positions, valid, rows, plans = _apply_merge(
                layer, sequences, hidden, cos_sin, positions, width, merge
            )
            mask = attention_mask(valid, valid.shape[1], impl, hidden.dtype)
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
    stats = _sequence_stats(sequences, plans, rows, merge_layer, parts.num_layers)
    return DecodeState(
        cache=cache,
        valid_before=valid_before,
        valid_after=valid,
        merge_layer=merge_layer,
        next_positions=next_positions,
        logits=logits,
        position_rows=3 if positions.ndim == 3 else 0,
        stats=stats,
    )


def _sequence_stats(sequences, plans, rows, merge_layer: int, num_layers: int):
    stats = []
    for b, seq in enumerate(sequences):
        plan = plans[b]
        visual_after = len(plan.kept) if plan is not None else seq.visual_count
        length_after = len(rows[b]) if rows is not None else seq.length
        before, after = merge_layer, num_layers - merge_layer
        stats.append(
            SequenceStats(
                prompt_tokens=seq.length,
                visual_in=seq.visual_count,
                visual_after_merge=visual_after,
                layer_tokens=[seq.length] * before + [length_after] * after,
                layer_visual_tokens=[seq.visual_count] * before + [visual_after] * after,
                kept_visual=plan.kept.cpu() if plan is not None else None,
            )
        )
    return stats


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
    state.valid_before = torch.cat([state.valid_before, new], dim=1)
    state.valid_after = torch.cat([state.valid_after, new], dim=1)
    mask_before = attention_mask(state.valid_before, 1, impl, hidden.dtype)
    mask_after = attention_mask(state.valid_after, 1, impl, hidden.dtype)
    for i, layer in enumerate(parts.layers):
        hidden = layer(
            hidden,
            attention_mask=mask_before if i < state.merge_layer else mask_after,
            position_embeddings=cos_sin,
            past_key_values=state.cache,
            use_cache=True,
        )
    state.next_positions = state.next_positions + 1
    state.logits = parts.logits(hidden[:, -1])
    return state.logits


# --------------------------------------------------------------------------------------------
# token choice and text
# --------------------------------------------------------------------------------------------
def sample_token(
    logits: torch.Tensor, generation: GenerationConfig, generator: torch.Generator | None
) -> int:
    """Next token of one sequence from its [vocab] logits: argmax, or seeded sampling on CPU
    (temperature, then top-k, then top-p) so that a seed gives the same tokens on any device."""
    if generation.greedy:
        return int(logits.argmax())
    scores = logits.detach().float().cpu() / generation.temperature
    if 0 < generation.top_k < scores.shape[0]:
        threshold = torch.topk(scores, generation.top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    probs = scores.softmax(dim=-1)
    if generation.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True, stable=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        before = sorted_probs.cumsum(0) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= generation.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def stop_position(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that may still become a stop string (or an unfinished
    multi-byte character, which decodes to U+FFFD): not streamed yet."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1
    return hold


@dataclass
class _Progress:
    """Decoding progress of one sequence."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    generator: torch.Generator | None = None


class GenerationRun:
    """Prefill + decoding of a batch; iterate for streamed text, then read `answers`.

    Each iteration step yields one text piece per sequence (possibly ""); pieces concatenate to
    the final text. Text that might still turn into a stop string is held back until it cannot.
    The EOS token is not part of `token_ids` or the text; a stop string ends the text just
    before it (the tokens that produced it stay in `token_ids`). `prefill_seconds` (prefill and
    first token) and `decode_seconds` (the remaining steps) are those of the whole batch.
    """

    def __init__(
        self,
        parts: LanguageModelParts,
        sequences: Sequence[PromptSequence],
        merge: MergeConfig,
        generation: GenerationConfig,
        *,
        decode: Callable[[list[int]], str],
        eos_token_ids: Collection[int],
    ) -> None:
        if not sequences:
            raise ValueError("a generation run needs at least one sequence")
        self.parts = parts
        self.sequences = list(sequences)
        self.merge = merge
        self.generation = generation
        self.decode = decode
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.answers: list[Answer] = []

    def _new_progress(self) -> _Progress:
        if self.generation.greedy:
            return _Progress()
        generator = torch.Generator()
        if self.generation.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.generation.seed)
        return _Progress(generator=generator)

    def _choose(
        self, logits: torch.Tensor, progress: list[_Progress], previous: list[int]
    ) -> list[int]:
        """Next token of every live sequence; a finished one repeats its previous token."""
        if self.generation.greedy:
            chosen = logits.argmax(dim=-1).tolist()  # one host sync for the whole batch
        else:
            chosen = [
                sample_token(row, self.generation, p.generator)
                for row, p in zip(logits, progress, strict=True)
            ]
        return [
            c if p.finish_reason is None else prev
            for c, p, prev in zip(chosen, progress, previous, strict=True)
        ]

    def _advance(self, progress: _Progress, token: int) -> str:
        """Record one new token of a live sequence; return the text piece it releases."""
        stops = self.generation.stop
        if token in self.eos_token_ids:
            progress.finish_reason = "stop"
        else:
            progress.token_ids.append(token)
            progress.text = self.decode(progress.token_ids)
            cut = stop_position(progress.text, stops)
            if cut >= 0:
                progress.text = progress.text[:cut]
                progress.finish_reason = "stop"
            elif len(progress.token_ids) >= self.generation.max_new_tokens:
                progress.finish_reason = "length"
        end = len(progress.text)
        if progress.finish_reason is None:
            end -= _held_back(progress.text, stops)
        piece = progress.text[progress.emitted : end] if end > progress.emitted else ""
        progress.emitted = max(progress.emitted, end)
        return piece

    def __iter__(self) -> Iterator[list[str]]:
        device = self.parts.device
        _synchronize(device)
        started = time.perf_counter()
        state = prefill(self.parts, self.sequences, self.merge)
        progress = [self._new_progress() for _ in self.sequences]
        tokens = self._choose(state.logits, progress, previous=[0] * len(progress))
        _synchronize(device)
        prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        while True:
            pieces = []
            for p, token in zip(progress, tokens, strict=True):
                pieces.append(self._advance(p, token) if p.finish_reason is None else "")
            yield pieces
            if all(p.finish_reason is not None for p in progress):
                break
            # Finished sequences keep feeding their last token; their outputs are ignored, and
            # they cannot influence the others (each sequence only attends to itself).
            logits = decode_step(self.parts, state, torch.tensor(tokens, device=device))
            tokens = self._choose(logits, progress, previous=tokens)
        _synchronize(device)
        decode_seconds = time.perf_counter() - started
        self.answers = [
            Answer(
                text=p.text,
                token_ids=p.token_ids,
                finish_reason=p.finish_reason,  # type: ignore[arg-type]
                prompt_tokens=s.prompt_tokens,
                visual_tokens_in=s.visual_in,
                visual_tokens_after_merge=s.visual_after_merge,
                layer_tokens=s.layer_tokens,
                layer_visual_tokens=s.layer_visual_tokens,
                prefill_seconds=prefill_seconds,
                decode_seconds=decode_seconds,
                kept_visual=s.kept_visual,
            )
            for p, s in zip(progress, state.stats, strict=True)
        ]

    def run(self) -> list[Answer]:
        """Run to the end without streaming."""
        for _ in self:
            pass
        return self.answers


def generate(
    parts: LanguageModelParts,
    sequences: Sequence[PromptSequence],
    merge: MergeConfig,
    generation: GenerationConfig,
    *,
    decode: Callable[[list[int]], str],
    eos_token_ids: Collection[int],
) -> list[Answer]:
    """Answers for a batch of prompts (one forward per step for the whole batch)."""
    return GenerationRun(
        parts, sequences, merge, generation, decode=decode, eos_token_ids=eos_token_ids
    ).run()
