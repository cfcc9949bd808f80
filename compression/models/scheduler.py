"""Continuous (iteration-level) batching of the decoder loop: questions join a running decode
batch between decoding steps and leave it when they finish, each with its own merge and
generation settings.

    batch = ContinuousBatch(parts, prompt_sequence, decode=..., eos_token_ids=..., prefix_cache=...)
    events = batch.join([JoinRequest(key, question, merge, generation), ...])  # prefill + 1st token
    while batch:
        events = batch.step()     # one token for every running question
    # each BatchEvent: key, the text piece it released, and the Answer (or error) once finished

Decisions:

* Padded cache, not ragged: the running batch is one `DecodeState` whose per-layer caches are
  left-padded to a common length, with a key mask per group of layers (`DecodeState.valid`). A
  join prefills the newcomers (one left-padded forward per merge setting, with the merge at
  layer K per sequence as in `decoder_loop.prefill`), then concatenates the two states: each
  layer's cache and mask are padded on the left to the longer of the two (padding keys are
  masked, so nothing attends to them). Sequences with different merges have different layer
  groups; the joined state's groups are the distinct pairs of the two states' groups. A leave
  selects the remaining rows and drops the cache columns that became padding in every row. A
  sequence's answer therefore equals its answer alone (greedy: same tokens), whatever joined or
  left around it (tests/compression/models/test_scheduler.py).
* Failures stay with their question: building the prompt, prefilling (a failed group forward is
  retried in halves, as `serving.engine` does for the static path), choosing tokens and decoding
  text are per question; a question that fails there gets its error event and leaves. Only a
  failing shared decoding step (the model itself, e.g. out of memory) ends every question in it.
* Per-video prefix reuse (`compression.models.prefix_cache`): with a cache, a question whose
  video and system prompt were seen before runs only its text through the layers below the
  merge's resume layer (`decoder_loop.resume_layer`); a first question's prefix is captured
  from its own prefill (no extra work).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compression.config import MergeConfig
from compression.models.decoder_loop import (
    CachedPrefix,
    DecodeState,
    LanguageModelParts,
    PromptSequence,
    SequenceStats,
    decode_step,
    prefill,
    resume_layer,
)
from compression.models.generation import SequenceProgress, answer_of
from compression.models.interface import BatchEvent, JoinRequest, Question
from compression.models.prefix_cache import PrefixCache


# --------------------------------------------------------------------------------------------
# a decode state's rows: join and leave
# --------------------------------------------------------------------------------------------
def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the key axis (-2 for [B, H, C, hd] caches, -1 for [B, C] masks) on the left."""
    missing = width - (x.shape[-1] if x.ndim == 2 else x.shape[-2])
    if missing == 0:
        return x
    return F.pad(x, (missing, 0)) if x.ndim == 2 else F.pad(x, (0, 0, missing, 0))


def concat_states(first: DecodeState, second: DecodeState) -> DecodeState:
    """The rows of `first` then those of `second` in one state (padded cache, see module doc)."""
    if first.position_rows != second.position_rows:
        raise ValueError("states with different kinds of position ids cannot share a batch")
    pairs = list(zip(first.layer_groups, second.layer_groups, strict=True))
    distinct = list(dict.fromkeys(pairs))
    valid = []
    for a, b in distinct:
        width = max(first.valid[a].shape[1], second.valid[b].shape[1])
        valid.append(
            torch.cat([_pad_left(first.valid[a], width), _pad_left(second.valid[b], width)])
        )
    for layer, other, (a, b) in zip(first.cache.layers, second.cache.layers, pairs, strict=True):
        width = max(first.valid[a].shape[1], second.valid[b].shape[1])
        layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(other.keys, width)])
        layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(other.values, width)])
    return DecodeState(
        cache=first.cache,
        valid=valid,
        layer_groups=[distinct.index(pair) for pair in pairs],
        next_positions=torch.cat([first.next_positions, second.next_positions]),
        logits=torch.cat([first.logits, second.logits]),
        position_rows=first.position_rows,
        stats=first.stats + second.stats,
    )


def select_rows(state: DecodeState, rows: Sequence[int]) -> DecodeState:
    """The state of the sequences at `rows` only (in that order); the cache columns that are
    padding in every remaining row are dropped, so a long sequence that left stops costing."""
    index = torch.tensor(list(rows), dtype=torch.long, device=state.next_positions.device)
    valid, starts = [], []
    for group in state.valid:
        kept = group[index]
        real = kept.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else 0
        valid.append(kept[:, start:])
        starts.append(start)
    for layer, group in zip(state.cache.layers, state.layer_groups, strict=True):
        layer.keys = layer.keys[index, :, starts[group] :]
        layer.values = layer.values[index, :, starts[group] :]
    return DecodeState(
        cache=state.cache,
        valid=valid,
        layer_groups=state.layer_groups,
        next_positions=state.next_positions[index],
        logits=state.logits[index],
        position_rows=state.position_rows,
        stats=[state.stats[r] for r in rows],
    )


# --------------------------------------------------------------------------------------------
# the continuous batch
# --------------------------------------------------------------------------------------------
@dataclass
class _Member:
    key: Hashable
    progress: SequenceProgress
    stats: SequenceStats
    prefill_s: float
    first_token_at: float
    token: int = 0


@dataclass
class _Pending:
    request: JoinRequest
    sequence: PromptSequence
    prefix: CachedPrefix | None  # found in the prefix cache
    capture: bool  # keep this question's prefix for later ones


class ContinuousBatch:
    """A running decode batch that questions join and leave between steps (module doc).

    Not thread-safe: one thread drives it (`serving.scheduler` runs it on the replica's
    model thread).
    """

    def __init__(
        self,
        parts: LanguageModelParts,
        prompt_sequence: Callable[[Question], PromptSequence],
        *,
        decode: Callable[[list[int]], str],
        eos_token_ids: Collection[int],
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.parts = parts
        self._prompt_sequence = prompt_sequence
        self._decode = decode
        self._eos = frozenset(int(t) for t in eos_token_ids)
        self.prefix_cache = prefix_cache
        self._state: DecodeState | None = None
        self._members: list[_Member] = []

    def __len__(self) -> int:
        return len(self._members)

    @property
    def keys(self) -> list[Hashable]:
        return [m.key for m in self._members]

    # -- join -------------------------------------------------------------------------------
    def join(self, requests: Sequence[JoinRequest]) -> list[BatchEvent]:
        """Prefill the questions (with the merge at their layer K), choose their first tokens
        and add the unfinished ones to the running batch."""
        events: list[BatchEvent] = []
        groups: dict[tuple[MergeConfig, bool], list[_Pending]] = {}
        for request in requests:
            try:
                pending = self._pending(request)
            except Exception as exc:
                events.append(BatchEvent(request.key, error=exc))
                continue
            groups.setdefault((request.merge, pending.prefix is not None), []).append(pending)
        for (merge, _), members in groups.items():
            events += self._prefill(members, merge)
        return events

    def _pending(self, request: JoinRequest) -> _Pending:
        with torch.no_grad():
            sequence = self._prompt_sequence(request.question)
        cache, key = self.prefix_cache, sequence.prefix_key
        resume = resume_layer(self.parts.num_layers, request.merge)
        if cache is None or key is None or resume == 0 or cache.capacity_bytes == 0:
            return _Pending(request, sequence, prefix=None, capture=False)
        prefix = cache.get(request.question.token_set, key, resume)
        return _Pending(request, sequence, prefix=prefix, capture=prefix is None)

    def _prefill(self, pending: list[_Pending], merge: MergeConfig) -> list[BatchEvent]:
        """One forward for the group; when it fails, halves (so only failing questions fail)."""
        started = time.perf_counter()
        try:
            prefixes = [p.prefix for p in pending]
            state = prefill(
                self.parts,
                [p.sequence for p in pending],
                merge,
                prefixes=prefixes if all(x is not None for x in prefixes) else None,  # type: ignore[arg-type]
                capture=any(p.capture for p in pending),
            )
        except Exception as exc:
            if len(pending) == 1:
                return [BatchEvent(pending[0].request.key, error=exc)]
            half = len(pending) // 2
            return self._prefill(pending[:half], merge) + self._prefill(pending[half:], merge)
        for p, captured in zip(pending, state.prefixes, strict=False):
            if p.capture and self.prefix_cache is not None:
                resume = resume_layer(self.parts.num_layers, merge)
                key = p.sequence.prefix_key
                self.prefix_cache.put(p.request.question.token_set, key, resume, captured)
        state.prefixes = []
        # The first token's time counts as prefill (as in `GenerationRun`): chosen right here.
        first_token_at = time.perf_counter()
        members = [
            _Member(
                p.request.key,
                SequenceProgress(p.request.generation, self._decode, self._eos),
                stats,
                prefill_s=first_token_at - started,
                first_token_at=first_token_at,
            )
            for p, stats in zip(pending, state.stats, strict=True)
        ]
        events = self._advance(members, state.logits)
        live = [i for i, e in enumerate(events) if not e.finished]
        if live:
            state = select_rows(state, live) if len(live) < len(members) else state
            live_members = [members[i] for i in live]
            if self._state is None:
                self._state = state
            else:
                self._state = concat_states(self._state, state)
            self._members += live_members
        return events

    # -- decoding ---------------------------------------------------------------------------
    def step(self) -> list[BatchEvent]:
        """One decoding step for every running question; finished ones leave."""
        if not self._members or self._state is None:
            return []
        tokens = torch.tensor([m.token for m in self._members], device=self.parts.device)
        try:
            logits = decode_step(self.parts, self._state, tokens)
        except Exception as exc:  # the shared forward itself: every running question ends
            events = [BatchEvent(m.key, error=exc) for m in self._members]
            self._state, self._members = None, []
            return events
        events = self._advance(self._members, logits)
        self._leave([i for i, e in enumerate(events) if e.finished])
        return events

    def _advance(self, members: list[_Member], logits: torch.Tensor) -> list[BatchEvent]:
        """Choose and record each member's next token (per member: one failing never fails
        another); finished members get their answer."""
        argmax = logits.argmax(dim=-1).tolist()  # one host sync for the whole batch
        now = time.perf_counter()
        events = []
        for member, row, best in zip(members, logits, argmax, strict=True):
            try:
                member.token = member.progress.choose(row, best)
                piece = member.progress.advance(member.token)
            except Exception as exc:
                events.append(BatchEvent(member.key, error=exc))
                continue
            event = BatchEvent(member.key, piece)
            if member.progress.finished:
                decode_s = max(0.0, now - member.first_token_at)
                event.answer = answer_of(member.progress, member.stats, member.prefill_s, decode_s)
            events.append(event)
        return events

    def prefix_cache_stats(self) -> tuple[int, int]:
        if self.prefix_cache is None:
            return (0, 0)
        stats = self.prefix_cache.stats()
        return (stats.queries, stats.hits)

    def cancel(self, keys: Collection[Hashable]) -> None:
        """Drop questions whose callers stopped listening (between steps)."""
        self._leave([i for i, m in enumerate(self._members) if m.key in keys])

    def _leave(self, rows: Sequence[int]) -> None:
        if not rows:
            return
        gone = set(rows)
        remaining = [i for i in range(len(self._members)) if i not in gone]
        self._members = [self._members[i] for i in remaining]
        if not remaining:
            self._state = None
        elif self._state is not None:
            self._state = select_rows(self._state, remaining)
