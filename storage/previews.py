"""Previews: what a viewer shows of an indexed video without reading its token set or its source.

One preview per token set, kept in the store beside the token-set files, at a path derived from
the token set's key (video id, model id, config hash): ``<store>/previews/<video_id>/<digest>``
with ``.jpg`` and ``.json``. The digest is of (model id, config hash), so a video indexed under
several models or configs has one preview each and a model id's slashes never reach a path.

* ``.jpg``: the token set's sampled frames side by side (a frame strip), each scaled to
  `FRAME_HEIGHT` pixels high: the library's thumbnail is its first frame, the video page draws
  every frame under the tokens' fates (Figs. S2/S3) without decoding the source again.
* ``.json``: `PreviewFacts`, the figures a listing shows that the catalog does not hold (tokens
  before compression, frames, the sampled span of the video).

Decision: files beside the token sets instead of catalog columns, so the catalog's schema (and
its Alembic revisions) stays as it is; a preview is written after its token set and is only a
view: a missing one (videos indexed before previews existed, a failed write) shows as none.
The module needs only numpy, PIL and fsspec, so the decode workers that make the strips stay
light.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from storage.ids import validate_video_id
from storage.urls import filesystem_for, join_url, normalize_store_url

PREVIEW_DIR = "previews"
FRAME_HEIGHT = 72  # pixels: a thumbnail; the console scales the panels up under the token grid
JPEG_QUALITY = 80
MAX_PREVIEW_BYTES = 4 * 1024 * 1024  # a preview larger than this is not one we wrote

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviewFacts:
    """tokens_in: tokens of the whole video before compression (T * H * W); frames: sampled
    frames (panels of the strip); duration_s: last sampled timestamp (the span the token set
    covers, close to the video's length with uniform sampling)."""

    tokens_in: int
    frames: int
    duration_s: float
    grid: tuple[int, int, int]


def frame_strip_jpeg(frames: np.ndarray, height: int = FRAME_HEIGHT) -> bytes:
    """uint8 frames [F, H, W, 3] as one JPEG, side by side, each `height` pixels high."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3] with F >= 1, got {frames.shape}")
    count, frame_h, frame_w = frames.shape[:3]
    width = max(1, round(height * frame_w / frame_h))
    strip = Image.new("RGB", (width * count, height))
    for i, frame in enumerate(frames.astype(np.uint8)):
        panel = Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR)
        strip.paste(panel, (i * width, 0))
    out = io.BytesIO()
    strip.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def preview_url(store_url: str, video_id: str, model_id: str, config_hash: str) -> str:
    """The preview's URL without extension (add ``.jpg`` / ``.json``)."""
    digest = hashlib.sha256(f"{model_id}\0{config_hash}".encode()).hexdigest()[:24]
    return join_url(
        normalize_store_url(store_url), PREVIEW_DIR, validate_video_id(video_id), digest
    )


def write_preview(
    store_url: str,
    video_id: str,
    model_id: str,
    config_hash: str,
    strip_jpeg: bytes,
    facts: PreviewFacts,
) -> None:
    """Write the preview of one token set (a later write replaces it)."""
    base = preview_url(store_url, video_id, model_id, config_hash)
    fs, path = filesystem_for(base)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    fs.pipe_file(path + ".json", json.dumps(asdict(facts)).encode())
    fs.pipe_file(path + ".jpg", strip_jpeg)


def read_preview_jpeg(
    store_url: str, video_id: str, model_id: str, config_hash: str
) -> bytes | None:
    """The frame strip, or None when this token set has no preview."""
    return _read(preview_url(store_url, video_id, model_id, config_hash) + ".jpg")


def read_preview_facts(
    store_url: str, video_id: str, model_id: str, config_hash: str
) -> PreviewFacts | None:
    """The preview's figures, or None when there is none (or it is not one we wrote)."""
    data = _read(preview_url(store_url, video_id, model_id, config_hash) + ".json")
    if data is None:
        return None
    try:
        raw = json.loads(data)
        return PreviewFacts(
            tokens_in=int(raw["tokens_in"]),
            frames=int(raw["frames"]),
            duration_s=float(raw["duration_s"]),
            grid=_grid(raw["grid"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def facts_of(grid: Sequence[int], frame_timestamps: Sequence[float]) -> PreviewFacts:
    """The facts of a token set with this grid and these sampled timestamps."""
    grid3 = _grid(grid)
    return PreviewFacts(
        tokens_in=int(np.prod(grid3)),
        frames=len(frame_timestamps),
        duration_s=float(max(frame_timestamps, default=0.0)),
        grid=grid3,
    )


def _grid(values: Sequence[int]) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in values)
    return t, h, w


def _read(url: str) -> bytes | None:
    fs, path = filesystem_for(url)
    try:
        with fs.open(path, "rb") as f:
            data = f.read(MAX_PREVIEW_BYTES + 1)
    except FileNotFoundError:
        return None
    return None if len(data) > MAX_PREVIEW_BYTES else data


def write_preview_quietly(store_url: str, token_set: object, strip_jpeg: bytes) -> None:
    """`write_preview` for a `TokenSet` just stored (keyed and described by its own fields).

    A preview is only a view: failing to write one (or having no strip) is logged, never a
    failure of the video, whose token set is already durable and recorded."""
    if not strip_jpeg:
        return
    ts: Any = token_set
    try:
        write_preview(
            store_url,
            ts.video_id,
            ts.model_id,
            ts.config_hash,
            bytes(strip_jpeg),
            facts_of(ts.grid, ts.frame_timestamps),
        )
    except (OSError, ValueError) as exc:
        logger.warning("no preview for video %s: %s", ts.video_id, exc)
