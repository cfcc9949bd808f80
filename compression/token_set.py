"""`TokenSet`: the one type that crosses every border (ARCHITECTURE.md), and `EncodedVideo`, the
outer stage's input.

A `TokenSet` holds the compressed tokens of one video under one model and one compression config:
compression builds it, storage serialises it, jobs produce it, serving consumes it. An
`EncodedVideo` holds all N tokens of one video with their contribution scores, as a model plug-in
(`compression.models`) encodes it, before the outer stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from compression.config import CompressionConfig


@dataclass
class EncodedVideo:
    """All N visual tokens of one video, before the outer stage.

    tokens: [N, d] projected tokens (what the LLM would see), original order.
    index: [N, 3] int32 (t, h, w) grid index of each token.
    scores: [N] float32 contribution score of each token (METHOD.md section 1).
    grid: (T, H, W) with T * H * W == N.
    frame_timestamps: seconds of the sampled frames.
    extras: model-specific scalars to keep with the token set (see `TokenSet.extras`).
    encode_s / score_s: measured wall time of the vision tower (+ projector) and of the
        contribution scores (a share of it), for the benchmarks and the job summary.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    scores: torch.Tensor
    grid: tuple[int, int, int]
    frame_timestamps: tuple[float, ...] = ()
    extras: dict[str, str | int | float] = field(default_factory=dict)
    encode_s: float = 0.0
    score_s: float = 0.0


def grid_index(grid: tuple[int, int, int]) -> torch.Tensor:
    """(t, h, w) of every cell of a token grid in original (frame-major, raster) order: [N, 3]
    int32, the `EncodedVideo.index` of a video whose every token is kept."""
    axes = [torch.arange(size, dtype=torch.int32) for size in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


class TokenKind(IntEnum):
    """What a stored token is: picked from the video (the retention pool, or a baseline's pick),
    or the mean of a cluster of recycled tokens (DPC-KNN refill, or a baseline's merge)."""

    SELECTED = 0
    CLUSTER = 1


# Width of the integer columns, fixed so that storage can promise a bit-exact round trip.
INDEX_DTYPE = torch.int32
KIND_DTYPE = torch.int8
SIZE_DTYPE = torch.int32
SCORE_DTYPE = torch.float32
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FLOAT_DTYPES_BY_NAME = {str(d).removeprefix("torch."): d for d in FLOAT_DTYPES}


@dataclass
class TokenSet:
    """Compressed visual tokens of one video, in original (frame-major, raster) order.

    tokens: [M, d] in the dtype the model produced (bf16/fp16 on GPU, fp32 on CPU).
    index: [M, 3] int32, the original (t, h, w) grid index of each token; a cluster token carries
        its centre's index.
    kind: [M] int8, a `TokenKind` per token.
    size: [M] int32, how many original tokens each token stands for (1 for a selected token).
    grid: (T, H, W), the shape of the video's full token grid; N = T * H * W.
    assignment: [N] int32 or None; for each original token (in original order) the row of
        `tokens` that represents it, or -1 when it was dropped (lets a viewer draw each fate).
    scores: [M] float32 or None; the contribution score of each kept token: the mean
        contribution score (METHOD.md section 1) of the original tokens it stands for, so a
        selected token keeps its own score and a cluster or merged token gets its members' mean
        (whatever the outer method). The global retention pool orders by it when token sets are
        pooled again (`compression.hierarchy`). None for token sets made before it was kept.
    frame_timestamps: seconds of each sampled frame in the source video.
    extras: small model-specific scalars a plug-in needs to answer later (e.g. Qwen2.5-VL's
        seconds per temporal grid step); plain str/int/float values only.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    kind: torch.Tensor
    size: torch.Tensor
    grid: tuple[int, int, int]
    config: CompressionConfig = field(default_factory=CompressionConfig)
    assignment: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    model_id: str = ""
    video_id: str = ""
    source_uri: str = ""
    content_hash: str = ""
    frame_timestamps: tuple[float, ...] = ()
    extras: dict[str, str | int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        self.frame_timestamps = tuple(float(t) for t in self.frame_timestamps)
        self.validate()

    # -- derived figures ------------------------------------------------------------------
    @property
    def original_count(self) -> int:
        return math.prod(self.grid)

    @property
    def kept_count(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def config_hash(self) -> str:
        return self.config.stable_hash()

    @property
    def frame_count(self) -> int:
        return len(self.frame_timestamps)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors (what a cache of token sets holds in memory)."""
        tensors = (self.tokens, self.index, self.kind, self.size, self.assignment, self.scores)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError on any inconsistency; a TokenSet that exists is well formed."""
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"grid must be three positive sizes (T, H, W), got {self.grid}")
        t = self.tokens
        if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(f"tokens must be [M, d] with M, d >= 1, got {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"tokens dtype must be one of {FLOAT_DTYPES}, got {t.dtype}")
        m = t.shape[0]
        if m > self.original_count:
            raise ValueError(
                f"{m} tokens kept but the grid {self.grid} has only {self.original_count}"
            )
        expected = {
            "index": (self.index, (m, 3), INDEX_DTYPE),
            "kind": (self.kind, (m,), KIND_DTYPE),
            "size": (self.size, (m,), SIZE_DTYPE),
        }
        if self.assignment is not None:
            expected["assignment"] = (self.assignment, (self.original_count,), INDEX_DTYPE)
        if self.scores is not None:
            expected["scores"] = (self.scores, (m,), SCORE_DTYPE)
        for name, (tensor, shape, dtype) in expected.items():
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"{name} must be {dtype} of shape {shape}, "
                    f"got {tensor.dtype} of shape {tuple(tensor.shape)}"
                )
        upper = torch.tensor(self.grid, device=self.index.device)
        if m and (self.index.min() < 0 or (self.index >= upper).any()):
            raise ValueError("index has entries outside the grid")
        if m and (self.size < 1).any():
            raise ValueError("every token stands for at least one original token")
        a = self.assignment
        if a is not None and (a.min() < -1 or a.max() >= m):
            raise ValueError(f"assignment entries must be -1 (dropped) or rows 0..{m - 1}")
        if self.scores is not None and not bool(torch.isfinite(self.scores).all()):
            raise ValueError("scores contain NaN or infinite values")
        kinds = {int(k) for k in self.kind.unique().tolist()}
        if not kinds <= {k.value for k in TokenKind}:
            raise ValueError(f"unknown token kinds {sorted(kinds)}")
        for key, value in self.extras.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, float)):
                raise ValueError(f"extras must map str to str/int/float, got {key!r}: {value!r}")

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TokenSet:
        """A copy with the tokens moved/cast (the integer columns stay on CPU-friendly dtypes)."""
        moved = {
            "tokens": self.tokens.to(device=device, dtype=dtype or self.tokens.dtype),
            "index": self.index.to(device),
            "kind": self.kind.to(device),
            "size": self.size.to(device),
        }
        for name in ("assignment", "scores"):
            value = getattr(self, name)
            if value is not None:
                moved[name] = value.to(device)
        return dataclasses.replace(self, **moved)

    def with_metadata(self, **metadata: object) -> TokenSet:
        """A copy with metadata fields (model_id, video_id, source_uri, ...) filled in."""
        tensors = {"tokens", "index", "kind", "size", "assignment", "scores", "grid", "config"}
        bad = tensors & set(metadata)
        if bad:
            raise ValueError(f"with_metadata sets metadata only, not {sorted(bad)}")
        return dataclasses.replace(self, **metadata)  # type: ignore[arg-type]

    # -- plain columns ----------------------------------------------------------------------
    def to_columns(self) -> dict[str, Any]:
        """The token set as plain values (numpy arrays, str): what a Ray Data or Arrow row holds
        without pickling a Python object. The tokens are their raw bytes ([M, d * itemsize]
        uint8: bit-exact for every float width, bf16 included); a missing assignment or scores
        is an empty array (a grid always has at least one cell, a token set at least one token).
        `from_columns` inverts it."""
        tokens = self.tokens.detach().cpu().contiguous()
        assignment, scores = self.assignment, self.scores
        return {
            "tokens": tokens.view(torch.uint8).numpy(),
            "dtype": str(tokens.dtype).removeprefix("torch."),
            "index": self.index.cpu().numpy(),
            "kind": self.kind.cpu().numpy(),
            "size": self.size.cpu().numpy(),
            "assignment": np.zeros(0, np.int32) if assignment is None else assignment.cpu().numpy(),
            "scores": np.zeros(0, np.float32) if scores is None else scores.cpu().numpy(),
            "grid": np.asarray(self.grid, np.int64),
            "config_json": json.dumps(self.config.to_dict(), sort_keys=True),
            "model_id": self.model_id,
            "video_id": self.video_id,
            "source_uri": self.source_uri,
            "content_hash": self.content_hash,
            "frame_timestamps": np.asarray(self.frame_timestamps, np.float64),
            "extras_json": json.dumps(self.extras, sort_keys=True),
        }

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> TokenSet:
        """The token set `to_columns` gave (validated like any other); columns without "scores"
        (written before it existed) give scores None."""
        dtype = _FLOAT_DTYPES_BY_NAME.get(str(columns["dtype"]))
        if dtype is None:
            raise ValueError(f"unknown token dtype {columns['dtype']!r}")
        raw = torch.from_numpy(np.ascontiguousarray(columns["tokens"], dtype=np.uint8))
        assignment = np.asarray(columns["assignment"], np.int32)
        scores = np.asarray(columns.get("scores", ()), np.float32)
        return cls(
            tokens=raw.view(dtype),
            index=torch.from_numpy(np.asarray(columns["index"], np.int32).reshape(-1, 3)),
            kind=torch.from_numpy(np.asarray(columns["kind"], np.int8)),
            size=torch.from_numpy(np.asarray(columns["size"], np.int32)),
            grid=tuple(int(g) for g in columns["grid"]),
            config=CompressionConfig.from_dict(json.loads(columns["config_json"])),
            assignment=torch.from_numpy(assignment) if assignment.size else None,
            scores=torch.from_numpy(scores) if scores.size else None,
            model_id=str(columns["model_id"]),
            video_id=str(columns["video_id"]),
            source_uri=str(columns["source_uri"]),
            content_hash=str(columns["content_hash"]),
            frame_timestamps=tuple(float(t) for t in columns["frame_timestamps"]),
            extras=json.loads(columns["extras_json"]),
        )
