"""`TokenSet`: the one type that crosses every border (ARCHITECTURE.md).

The compressed tokens of one video under one model and one compression config. compression
builds it, storage serialises it, jobs produce it, serving consumes it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import IntEnum

import torch

from compression.config import CompressionConfig


class TokenKind(IntEnum):
    """What a stored token is: picked from the video (the retention pool, or a baseline's pick),
    or the mean of a cluster of recycled tokens (DPC-KNN refill, or a baseline's merge)."""

    SELECTED = 0
    CLUSTER = 1


# Width of the integer columns, fixed so that storage can promise a bit-exact round trip.
INDEX_DTYPE = torch.int32
KIND_DTYPE = torch.int8
SIZE_DTYPE = torch.int32
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
        total = sum(t.numel() * t.element_size() for t in (self.tokens, self.index, self.kind))
        total += self.size.numel() * self.size.element_size()
        if self.assignment is not None:
            total += self.assignment.numel() * self.assignment.element_size()
        return total

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
        if self.assignment is not None:
            moved["assignment"] = self.assignment.to(device)
        return dataclasses.replace(self, **moved)

    def with_metadata(self, **metadata: object) -> TokenSet:
        """A copy with metadata fields (model_id, video_id, source_uri, ...) filled in."""
        tensors = {"tokens", "index", "kind", "size", "assignment", "grid", "config"}
        bad = tensors & set(metadata)
        if bad:
            raise ValueError(f"with_metadata sets metadata only, not {sorted(bad)}")
        return dataclasses.replace(self, **metadata)  # type: ignore[arg-type]
