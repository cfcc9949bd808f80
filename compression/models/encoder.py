"""The encode half of every plug-in: a vision encoder that turns decoded frames into visual tokens
with their grid index and contribution scores (an `EncodedVideo`), holding only the vision side
of the model.

A family subclasses `VisionEncoder` (`LlavaOneVisionEncoder`, `Qwen2_5_VLEncoder`) with its
`encode_batch`; the family's `ChatVideoLLM` (the whole model, for answering) encodes through the
same encoder object over its own vision modules, so the indexing job's vision-only workers
(`load_video_encoder`) and the whole model give the same tokens and scores by construction.
The contribution-score hooks' base (`ScoreHook`) and the batch validation are here too.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from compression.models.preprocess import as_frame_tensor
from compression.models.vision_checkpoint import CheckpointRead
from compression.token_set import EncodedVideo

_Hook = TypeVar("_Hook", bound="ScoreHook")


class ScoreHook(ABC):
    """Forward pre-hook on a vision tower's attention module while inside `with`: `score` reads
    each forward's input (the tower keeps running its own attention); `elapsed_s` accumulates the
    time spent scoring, synchronised on CUDA before and after so it counts only this work."""

    def __init__(self, attention: nn.Module) -> None:
        self._attention = attention
        self.elapsed_s = 0.0

    def __enter__(self: _Hook) -> _Hook:
        self._handle = self._attention.register_forward_pre_hook(self, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    @torch.no_grad()
    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.is_cuda:
            torch.cuda.synchronize(hidden.device)
        started = time.perf_counter()
        self.score(module, hidden, kwargs)
        if hidden.is_cuda:
            torch.cuda.synchronize(hidden.device)
        self.elapsed_s += time.perf_counter() - started

    @abstractmethod
    def score(self, module: nn.Module, hidden: torch.Tensor, kwargs: dict) -> None:
        """Score the patches of one forward: `hidden` is the attention's input, `kwargs` the
        rest of its keyword arguments."""


def checked_videos(
    videos: Sequence[np.ndarray | torch.Tensor],
    timestamps: Sequence[Sequence[float] | None] | None,
) -> tuple[list[torch.Tensor], list[Sequence[float] | None]]:
    """The videos of an `encode_batch` call as validated frame tensors, and one timestamp list
    (or None) per video, each as long as its video."""
    stamps = list(timestamps) if timestamps is not None else [None] * len(videos)
    if len(stamps) != len(videos):
        raise ValueError(f"{len(videos)} videos but {len(stamps)} timestamp lists")
    frames = [as_frame_tensor(v) for v in videos]
    for video, video_stamps in zip(frames, stamps, strict=True):
        if video_stamps is not None and len(video_stamps) != len(video):
            raise ValueError(f"{len(video)} frames but {len(video_stamps)} timestamps")
    return frames, stamps


class VisionEncoder(ABC):
    """The `VideoEncoder` protocol over a family's inner HF model (`...ForConditionalGeneration
    .model`), of which only the vision modules are used; it may hold nothing else (see
    `compression.models.vision_checkpoint`).

    checkpoint_read: what a vision-only load read from the checkpoint (None when the encoder
    runs inside a whole model).
    """

    family: str

    def __init__(self, vision: nn.Module, model_id: str) -> None:
        self.vision = vision.eval()
        self.model_id = model_id
        first = next(vision.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.checkpoint_read: CheckpointRead | None = None

    def encode(
        self, frames: np.ndarray | torch.Tensor, timestamps: Sequence[float] | None = None
    ) -> EncodedVideo:
        return self.encode_batch([frames], [timestamps])[0]

    @abstractmethod
    def encode_batch(
        self,
        videos: Sequence[np.ndarray | torch.Tensor],
        timestamps: Sequence[Sequence[float] | None] | None = None,
    ) -> list[EncodedVideo]: ...
