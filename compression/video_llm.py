"""What every Video-LLM plug-in offers, and how to load one by name.

A plug-in (one small file per model family: `llava_onevision.py`, `qwen2_5_vl.py`) does two things:

* encode: decoded frames -> projected visual tokens with their (t, h, w) grid index and
  per-token contribution scores (METHOD.md section 1), ready for `compression.compress`;
* answer: questions over `TokenSet`s -> answers, with the text-aware merge (or FastV, or nothing)
  applied inside the LLM at layer K (METHOD.md section 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from compression.config import GenerationConfig, MergeConfig
from compression.token_set import TokenSet

if TYPE_CHECKING:  # the plug-ins' base imports this module
    from compression.chat_video_llm import ChatVideoLLM


@dataclass
class EncodedVideo:
    """All N visual tokens of one video, before the outer stage.

    tokens: [N, d] projected tokens (what the LLM would see), original order.
    index: [N, 3] int32 (t, h, w) grid index of each token.
    scores: [N] float32 contribution score of each token (METHOD.md section 1).
    grid: (T, H, W) with T * H * W == N.
    frame_timestamps: seconds of the sampled frames.
    extras: model-specific scalars to keep with the token set (see `TokenSet.extras`).
    encode_seconds / score_seconds: measured wall time of the vision tower (+ projector) and of
        the contribution scores (a share of it), for the benchmarks and the job summary.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    scores: torch.Tensor
    grid: tuple[int, int, int]
    frame_timestamps: tuple[float, ...] = ()
    extras: dict[str, str | int | float] = field(default_factory=dict)
    encode_seconds: float = 0.0
    score_seconds: float = 0.0


@dataclass
class Question:
    """One question about one video's token set."""

    token_set: TokenSet
    text: str
    system: str | None = None


@dataclass
class Answer:
    """The answer to one `Question`, with the figures a user wants to see.

    layer_tokens: n_i, the sequence length (visual + text) each decoder layer saw in prefill.
    layer_visual_tokens: the visual part of n_i per layer (the paper's FLOPs convention).
    kept_visual: positions (rows of the token set) of the visual tokens kept at layer K, or None
        when no merge ran; lets a viewer show which tokens the question kept (Fig. S2).
    """

    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    visual_tokens_in: int
    visual_tokens_after_merge: int
    layer_tokens: list[int]
    layer_visual_tokens: list[int]
    prefill_seconds: float
    decode_seconds: float
    kept_visual: torch.Tensor | None = None


Frames = np.ndarray | torch.Tensor  # uint8 [F, H, W, 3]


@runtime_checkable
class VideoLLM(Protocol):
    """The interface jobs/ and serving/ program against."""

    model_id: str
    family: str  # "llava_onevision" | "qwen2_5_vl"
    device: torch.device
    dtype: torch.dtype

    @property
    def hidden_size(self) -> int: ...

    @property
    def intermediate_size(self) -> int: ...

    @property
    def num_layers(self) -> int: ...

    def encode(self, frames: Frames, timestamps: Sequence[float] | None = None) -> EncodedVideo: ...

    def encode_batch(
        self, videos: Sequence[Frames], timestamps: Sequence[Sequence[float] | None] | None = None
    ) -> list[EncodedVideo]: ...

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


def grid_index(grid: tuple[int, int, int]) -> torch.Tensor:
    """(t, h, w) of every cell of a token grid in original (frame-major, raster) order: [N, 3]
    int32, the `EncodedVideo.index` of a video whose every token is kept."""
    axes = [torch.arange(size, dtype=torch.int32) for size in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def load_video_llm(
    model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> VideoLLM:
    """A plug-in by name: a built-in tiny model ("tiny-llava-ov", "tiny-qwen2.5-vl"; random
    weights from a fixed seed, no download), or a hub id / local checkpoint directory, dispatched
    on its config's `model_type` (llava_onevision, qwen2_5_vl).

    dtype defaults to bfloat16 on CUDA and float32 elsewhere; attention is sdpa.
    Plug-ins are imported lazily: loading one family never imports the other.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty name, hub id or directory, got {model!r}")
    from compression.tiny_models import TINY_LLAVA_OV, TINY_QWEN2_5_VL

    tiny_families = {TINY_LLAVA_OV: "llava_onevision", TINY_QWEN2_5_VL: "qwen2_5_vl"}
    family = tiny_families.get(model)
    if family is None:
        from transformers import AutoConfig

        family = AutoConfig.from_pretrained(model).model_type
    plugin: type[ChatVideoLLM] | None = None
    if family == "llava_onevision":
        from compression.llava_onevision import LlavaOneVision as plugin
    elif family == "qwen2_5_vl":
        from compression.qwen2_5_vl import Qwen2_5_VL as plugin
    if plugin is not None:
        if model in tiny_families:
            return plugin.tiny(device=device, dtype=dtype)
        return plugin.from_pretrained(model, device=device, dtype=dtype)
    raise ValueError(
        f"{model!r} is a {family!r} model; supported: llava_onevision, qwen2_5_vl "
        f"(or the built-ins {TINY_LLAVA_OV!r}, {TINY_QWEN2_5_VL!r})"
    )
