"""What every Video-LLM plug-in offers: the `VideoLLM` protocol and the types it speaks.

A plug-in (one file per model family: `llava_onevision.py`, `qwen2_5_vl.py`) does two things:

* encode: decoded frames -> projected visual tokens with their (t, h, w) grid index and
  per-token contribution scores (METHOD.md section 1): an `EncodedVideo`, ready for
  `compression.compress_video`; a `VideoEncoder` does only this, with only the vision side of
  the model loaded;
* answer: `Question`s over `TokenSet`s -> `Answer`s, with the text-aware merge (or FastV, or
  nothing) applied inside the LLM at layer K (METHOD.md section 5), decoded with a
  `GenerationConfig`.

jobs/ and serving/ program against this module and `compression.models.registry` only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from compression.config import MergeConfig
from compression.token_set import EncodedVideo, TokenSet

Frames = np.ndarray | torch.Tensor  # uint8 [F, H, W, 3]


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings: greedy when temperature == 0, else sampling (seeded per request)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens!r}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 5.0):
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature!r}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class InvalidQuestion(ValueError):
    """A question the model cannot take as asked: the fault is in its text or turns (e.g. text
    that this model's tokenizer can only read as a control token), not in the model or the
    token set. Callers that serve users report it as the user's error."""


@dataclass(frozen=True)
class Turn:
    """An earlier message of a conversation about the video: a user's question or the
    assistant's answer, as plain text."""

    role: Literal["user", "assistant"]
    text: str


@dataclass
class Question:
    """One question about one video's token set, possibly the next user turn of a conversation.

    history: the earlier turns, oldest first: user, assistant, user, ..., assistant (so the
    question is the next user turn). The video belongs to the first user turn (the first of
    `history`, or the question itself when there is no history). Every token after the video,
    earlier turns included, is text to the text-aware merge (METHOD.md section 5).

    time_span: (start_s, end_s) of the video the token set covers, when the prompt should tell
    the model the times of what it sees (issue 14: questions over a time range, and videos
    indexed in chunks); None keeps the prompt without times (the paper's evaluation protocol).
    See `compression.models.chat.timeline_text`.
    """

    token_set: TokenSet
    text: str
    system: str | None = None
    history: tuple[Turn, ...] = ()
    time_span: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.history = tuple(self.history)
        for i, turn in enumerate(self.history):
            expected = "user" if i % 2 == 0 else "assistant"
            if not isinstance(turn, Turn) or turn.role != expected:
                raise InvalidQuestion(
                    f"history turn {i} must be a {expected} Turn: turns alternate user, "
                    "assistant, ... starting with the user"
                )
        if len(self.history) % 2:
            raise InvalidQuestion(
                "the history must end with an assistant turn (the question is the next user turn)"
            )


@dataclass
class Answer:
    """The answer to one `Question`, with the figures a user wants to see.

    layer_tokens: n_i, the sequence length (visual + text) each decoder layer saw in prefill.
    layer_visual_tokens: the visual part of n_i per layer (the paper's FLOPs convention).
    kept_visual: positions (rows of the token set) of the visual tokens kept after the merge's
        last step (layer K for a one-step merge), or None when no merge ran; lets a viewer show
        which tokens the question kept (Fig. S2).
    prefill_s: prefill and the first token; decode_s: the remaining decoding steps.
    cached_prompt_tokens: prompt rows whose states came from the replica's prefix cache (the
        system prompt and video of an earlier question about the same video) instead of being
        prefilled again for this question; 0 without prefix reuse.
    """

    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    visual_tokens_in: int
    visual_tokens_after_merge: int
    layer_tokens: list[int]
    layer_visual_tokens: list[int]
    prefill_s: float
    decode_s: float
    kept_visual: torch.Tensor | None = None
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class JoinRequest:
    """A question to add to a running `DecodeBatch`; `key` names it in the events."""

    key: Hashable
    question: Question
    merge: MergeConfig
    generation: GenerationConfig


@dataclass
class BatchEvent:
    """What one question got from a join or a step of a `DecodeBatch`: a text piece (possibly
    ""), and once it is finished its `answer`, or its `error` (it then left the batch)."""

    key: Hashable
    piece: str = ""
    answer: Answer | None = None
    error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.answer is not None or self.error is not None


class DecodeBatch(Protocol):
    """A running decode batch that questions join and leave between steps (continuous
    batching; `compression.models.scheduler.ContinuousBatch`). One thread drives it."""

    def __len__(self) -> int: ...

    def join(self, requests: Sequence[JoinRequest]) -> list[BatchEvent]:
        """Prefill the questions, choose their first tokens, keep the unfinished ones."""
        ...

    def step(self) -> list[BatchEvent]:
        """One token for every running question; finished ones leave."""
        ...

    def cancel(self, keys: Collection[Hashable]) -> None:
        """Drop questions whose callers stopped listening."""
        ...

    def prefix_cache_stats(self) -> tuple[int, int]:
        """(lookups, hits) of the per-video prefix cache so far."""
        ...


@runtime_checkable
class VideoEncoder(Protocol):
    """What the indexing job's encode workers program against: frames -> `EncodedVideo`.

    Every `VideoLLM` is one; `load_video_encoder` gives one that holds only the vision side of
    the model (no language model), which is all encoding and contribution scores need.
    """

    model_id: str
    family: str  # "llava_onevision" | "qwen2_5_vl"
    device: torch.device
    dtype: torch.dtype

    def encode(self, frames: Frames, timestamps: Sequence[float] | None = None) -> EncodedVideo: ...

    def encode_batch(
        self, videos: Sequence[Frames], timestamps: Sequence[Sequence[float] | None] | None = None
    ) -> list[EncodedVideo]: ...


@runtime_checkable
class VideoLLM(VideoEncoder, Protocol):
    """The interface jobs/ and serving/ program against to answer (and encode)."""

    @property
    def hidden_size(self) -> int: ...

    @property
    def intermediate_size(self) -> int: ...

    @property
    def num_layers(self) -> int: ...

    def answer(
        self,
        questions: Sequence[Question],
        merge: MergeConfig = MergeConfig(),
        generation: GenerationConfig = GenerationConfig(),
    ) -> list[Answer]: ...

    def answer_stream(
        self,
        question: Question,
        merge: MergeConfig = MergeConfig(),
        generation: GenerationConfig = GenerationConfig(),
    ) -> Iterator[str | Answer]: ...

    def continuous_batch(self, prefix_cache_bytes: int = 0) -> DecodeBatch: ...
