"""The generation layer over the decoder loop: choosing tokens (greedy, or seeded sampling),
EOS and stop strings, streaming text pieces, and the `Answer` with its figures.

`compression.models.decoder_loop` runs the tensors (prefill with the merge at layer K, decode
steps); this module decides what to feed it and when a sequence is done:

    run = GenerationRun(parts, [seq, ...], merge, generation,
                        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        eos_token_ids={...})
    for pieces in run: ...          # per step: the new text piece of each sequence ("" if none)
    run.answers                     # -> list[Answer] once the iteration ended
    answers = run.run()             # or: to the end without streaming

Sampling uses one generator per sequence, so a batch equals one-by-one runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence

import torch

from compression.config import MergeConfig
from compression.models.decoder_loop import (
    LanguageModelParts,
    PromptSequence,
    SequenceStats,
    decode_step,
    prefill,
)
from compression.models.interface import Answer, GenerationConfig


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_token(
    logits: torch.Tensor, generation: GenerationConfig, generator: torch.Generator | None
) -> int:
    """Next token of one sequence from its [vocab] logits: argmax, or seeded sampling on CPU
    (temperature, then top-k, then top-p) so that a seed gives the same tokens on any device.

    Numerically safe for every valid setting (issue 12: temperature 1e-45 or top_p 1e-300 made an
    invalid distribution): in float64, the logits are shifted so that the best is 0 before the
    temperature divides them (tiny temperatures then give -inf, never inf - inf), and the most
    likely token always survives top-p, so the distribution is never empty.
    """
    if generation.greedy:
        return int(logits.argmax())
    scores = logits.detach().to(device="cpu", dtype=torch.float64)
    scores = (scores - scores.max()) / generation.temperature
    if 0 < generation.top_k < scores.shape[0]:
        threshold = torch.topk(scores, generation.top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    probs = scores.softmax(dim=-1)
    if generation.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True, stable=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(0) - sorted_probs >= generation.top_p
        drop[0] = False
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(drop, 0.0))
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


class SequenceProgress:
    """Decoding progress of one sequence under its own settings: its tokens, its text, what was
    streamed, why it finished, its sampling generator (one per sequence, so a batch equals
    one-by-one runs). Shared by `GenerationRun` and the continuous batch
    (`compression.models.scheduler`)."""

    def __init__(
        self,
        generation: GenerationConfig,
        decode: Callable[[list[int]], str],
        eos_token_ids: frozenset[int],
    ) -> None:
        self.generation = generation
        self._decode = decode
        self._eos = eos_token_ids
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None
        if not generation.greedy:
            self.generator = torch.Generator()
            if generation.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(generation.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def choose(self, logits: torch.Tensor, argmax: int) -> int:
        """The next token from this sequence's [vocab] logits; `argmax` is their argmax (the
        caller takes it for the whole batch in one host sync)."""
        if self.generation.greedy:
            return argmax
        return sample_token(logits, self.generation, self.generator)

    def advance(self, token: int) -> str:
        """Record one new token of a live sequence; return the text piece it releases."""
        stops = self.generation.stop
        if token in self._eos:
            self.finish_reason = "stop"
        else:
            self.token_ids.append(token)
            self.text = self._decode(self.token_ids)
            cut = stop_position(self.text, stops)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
            elif len(self.token_ids) >= self.generation.max_new_tokens:
                self.finish_reason = "length"
        end = len(self.text)
        if self.finish_reason is None:
            end -= _held_back(self.text, stops)
        piece = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


def answer_of(
    progress: SequenceProgress, stats: SequenceStats, prefill_s: float, decode_s: float
) -> Answer:
    """The `Answer` of a finished sequence."""
    return Answer(
        text=progress.text,
        token_ids=progress.token_ids,
        finish_reason=progress.finish_reason,  # type: ignore[arg-type]
        prompt_tokens=stats.prompt_tokens,
        visual_tokens_in=stats.visual_in,
        visual_tokens_after_merge=stats.visual_after_merge,
        layer_tokens=stats.layer_tokens,
        layer_visual_tokens=stats.layer_visual_tokens,
        prefill_s=prefill_s,
        decode_s=decode_s,
        kept_visual=stats.kept_visual,
        cached_prompt_tokens=stats.cached_prompt_tokens,
    )


class GenerationRun:
    """Prefill + decoding of a batch; iterate for streamed text, then read `answers`.

    Each iteration step yields one text piece per sequence (possibly ""); pieces concatenate to
    the final text. Text that might still turn into a stop string is held back until it cannot.
    The EOS token is not part of `token_ids` or the text; a stop string ends the text just
    before it (the tokens that produced it stay in `token_ids`). `prefill_s` (prefill and first
    token) and `decode_s` (the remaining steps) are those of the whole batch.
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

    def _choose(
        self, logits: torch.Tensor, progress: list[SequenceProgress], previous: list[int]
    ) -> list[int]:
        """Next token of every live sequence; a finished one repeats its previous token."""
        argmax = logits.argmax(dim=-1).tolist()  # one host sync for the whole batch
        return [
            prev if p.finished else p.choose(row, best)
            for row, best, p, prev in zip(logits, argmax, progress, previous, strict=True)
        ]

    def __iter__(self) -> Iterator[list[str]]:
        device = self.parts.device
        _synchronize(device)
        started = time.perf_counter()
        state = prefill(self.parts, self.sequences, self.merge)
        progress = [
            SequenceProgress(self.generation, self.decode, self.eos_token_ids)
            for _ in self.sequences
        ]
        tokens = self._choose(state.logits, progress, previous=[0] * len(progress))
        _synchronize(device)
        prefill_s = time.perf_counter() - started
        started = time.perf_counter()
        while True:
            pieces = []
            for p, token in zip(progress, tokens, strict=True):
                pieces.append("" if p.finished else p.advance(token))
            yield pieces
            if all(p.finished for p in progress):
                break
            # Finished sequences keep feeding their last token; their outputs are ignored, and
            # they cannot influence the others (each sequence only attends to itself).
            logits = decode_step(self.parts, state, torch.tensor(tokens, device=device))
            tokens = self._choose(logits, progress, previous=tokens)
        _synchronize(device)
        decode_s = time.perf_counter() - started
        self.answers = [
            answer_of(p, s, prefill_s, decode_s) for p, s in zip(progress, state.stats, strict=True)
        ]

    def run(self) -> list[Answer]:
        """Run to the end without streaming."""
        for _ in self:
            pass
        return self.answers
