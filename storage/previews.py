"""Previews: what a viewer shows of an indexed video without reading its token set or its source.

One preview per token set, kept in the store beside the token-set files, at a path derived from
the token set's key (video id, model id, config hash): ``<store>/previews/<video_id>/<digest>``
with ``.jpg`` and ``.json``. The digest is of (model id, config hash), so a video indexed under
several models or configs has one preview each and a model id's slashes never reach a path.

* ``.jpg``: the token set's sampled frames side by side (a frame strip), one panel per entry of
  its `frame_timestamps` in order, each scaled to `FRAME_HEIGHT` pixels high: the library's
  thumbnail is its first frame, the video page draws every frame under the tokens' fates (Figs.
  S2/S3) without decoding the source again. The JPEG's comment holds its panel count, so a strip
  read back (a live video's, appended to segment by segment, `FrameStrip`) says what it holds.
* ``.json``: `PreviewFacts`, the figures a listing shows that the catalog does not hold (tokens
  before compression, frames, the sampled span of the video).

A strip is built up in frame order (`FrameStrip`): by the one-pass job from a video's frames, and
by chunked indexing and `--follow` window by window, each window's frames downscaled to panels as
soon as it is decoded (only panels are kept, never a window's frames). A preview is written only
when its panel count is the token set's frame count (what the console's token grid assumes).

Decision on long videos: JPEG allows at most 65,535 pixels a side (`MAX_JPEG_SIDE`). When the
panels would not fit side by side, all of them are halved in width and height (again until they
fit: a panel is resampled at most log2(width) times), so a 3-hour video still has one strip
whose panels line up with its frames, only smaller (at 1 px wide, 65,535 frames). A video with
more sampled frames than that has no preview (logged): no strip could show one panel each.
A strip over `MAX_PREVIEW_BYTES` (only noise-like video at the size limit) is not read back: it
shows as none.

Decision: files beside the token sets instead of catalog columns, so the catalog's schema (and
its Alembic revisions) stays as it is; a preview is written after its token set and is only a
view: a missing one (videos indexed before previews existed, a failed write) shows as none.
The module needs only numpy, PIL and fsspec, so the decode workers that make the strips stay
light.
"""

from __future__ import annotations

import contextlib
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
MAX_JPEG_SIDE = 65_535  # pixels: JPEG's limit on a side
MISSING_PANEL = (0x88, 0x88, 0x88)  # a frame whose panel is lost (the console's grey for none)
PANELS_COMMENT = "tokenreel panels="  # the JPEG comment: the strip's panel count

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


class FrameStrip:
    """A frame strip built up in frame order: `append` frames (window by window), `jpeg` it.

    Every panel has one size: the first frames' aspect at `height` pixels high, halved while the
    panels would not fit in `MAX_JPEG_SIDE` (module docstring). Memory: the strip itself, at most
    `MAX_JPEG_SIDE` x `height` pixels (14 MB at 72 px), whatever the video's length."""

    def __init__(self, height: int = FRAME_HEIGHT) -> None:
        self.height = height
        self.count = 0  # panels, including `pad`'s
        self._image: Any = None  # PIL image, count * width wide; None until frames come
        self._panel: tuple[int, int] = (0, 0)  # (width, height) of every panel
        self._first: tuple[int, int] = (0, 0)  # the first panels' size (their aspect is kept)

    def append(self, frames: np.ndarray) -> None:
        """Add uint8 frames [F, H, W, 3] as F panels after those already there."""
        from PIL import Image

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [F, H, W, 3] with F >= 1, got {frames.shape}")
        count, frame_h, frame_w = frames.shape[:3]
        total = self.count + count
        if total > MAX_JPEG_SIDE:  # not even 1-pixel panels fit: no strip (jpeg logs it)
            self._image, self.count = None, total
            return
        if self._first == (0, 0):
            self._first = self._panel = (
                max(1, round(self.height * frame_w / frame_h)),
                self.height,
            )
        self._fit(total)
        width, height = self._panel
        strip = Image.new("RGB", (width * total, height), MISSING_PANEL)
        if self._image is not None:
            strip.paste(self._image, (0, 0))
        for i, frame in enumerate(frames.astype(np.uint8)):
            panel = Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR)
            strip.paste(panel, ((self.count + i) * width, 0))
        self._image, self.count = strip, total

    def pad(self, count: int) -> None:
        """Grey panels up to `count` panels in all (frames whose panels are lost)."""
        from PIL import Image

        if count <= self.count:
            return
        if self._image is not None and count <= MAX_JPEG_SIDE:
            self._fit(count)
            width, height = self._panel
            strip = Image.new("RGB", (width * count, height), MISSING_PANEL)
            strip.paste(self._image, (0, 0))
            self._image = strip
        elif self._image is not None:
            self._image = None  # too many panels: no strip
        self.count = count

    def jpeg(self) -> bytes:
        """The strip as a JPEG with its panel count in its comment; b"" when there is none (no
        frames yet, or more than `MAX_JPEG_SIDE` panels)."""
        if self._image is None:
            if self.count > MAX_JPEG_SIDE:
                logger.warning(
                    "no preview: %d frames do not fit in one JPEG (%d px)",
                    self.count,
                    MAX_JPEG_SIDE,
                )
            return b""
        out = io.BytesIO()
        self._image.save(
            out, format="JPEG", quality=JPEG_QUALITY, comment=f"{PANELS_COMMENT}{self.count}"
        )
        return out.getvalue()

    @classmethod
    def from_jpeg(cls, data: bytes | None, height: int = FRAME_HEIGHT) -> FrameStrip:
        """The strip of a JPEG that `jpeg` wrote, to append to; empty when `data` is None or
        not such a strip (its panels cannot be told apart)."""
        from PIL import Image

        strip = cls(height)
        count = strip_panels(data) if data else None
        if not count:
            return strip
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb = image.convert("RGB")
        except (OSError, ValueError):
            return strip
        if rgb.width % count:
            return strip
        strip._image, strip.count = rgb, count
        strip._first = strip._panel = (rgb.width // count, rgb.height)
        return strip

    def _fit(self, total: int) -> None:
        """Halve the panels until `total` of them fit in `MAX_JPEG_SIDE` (module docstring)."""
        from PIL import Image

        width, height = self._panel
        while total * width > MAX_JPEG_SIDE:
            width = max(1, width // 2)
            height = max(1, round(self._first[1] * width / self._first[0]))
        if (width, height) == self._panel:
            return
        if self._image is not None:
            old_w, old_h = self._panel
            strip = Image.new("RGB", (width * self.count, height), MISSING_PANEL)
            for i in range(self.count):
                panel = self._image.crop((i * old_w, 0, (i + 1) * old_w, old_h))
                strip.paste(panel.resize((width, height), Image.Resampling.BOX), (i * width, 0))
            self._image = strip
        self._panel = (width, height)


def frame_strip_jpeg(frames: np.ndarray, height: int = FRAME_HEIGHT) -> bytes:
    """uint8 frames [F, H, W, 3] as one JPEG, side by side, each `height` pixels high (smaller
    past `MAX_JPEG_SIDE`; b"" past that many frames: see the module docstring)."""
    strip = FrameStrip(height)
    strip.append(frames)
    return strip.jpeg()


def strip_panels(strip_jpeg: bytes) -> int | None:
    """The panel count a strip's JPEG comment records (None: not a strip we wrote). Reads the
    header only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(strip_jpeg)) as image:
            comment = image.info.get("comment", b"")
    except (OSError, ValueError):
        return None
    text = comment.decode("ascii", "replace") if isinstance(comment, bytes) else str(comment)
    if not text.startswith(PANELS_COMMENT):
        return None
    try:
        return int(text[len(PANELS_COMMENT) :])
    except ValueError:
        return None


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


def remove_preview(store_url: str, video_id: str, model_id: str, config_hash: str) -> None:
    """Remove a token set's preview, if any."""
    fs, path = filesystem_for(preview_url(store_url, video_id, model_id, config_hash))
    for name in (path + ".json", path + ".jpg"):
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(name)


def write_preview_quietly(store_url: str, token_set: object, strip_jpeg: bytes) -> None:
    """`write_preview` for a `TokenSet` just stored (keyed and described by its own fields).

    Only a strip with one panel per frame of the token set is written (the console draws the
    token grid over the panels); otherwise (no strip, a count that differs) the token set has no
    preview, and one left from an earlier set under the same key (a live video's) is removed.
    A preview is only a view: failing to write one is logged, never a failure of the video,
    whose token set is already durable and recorded."""
    ts: Any = token_set
    key = (ts.video_id, ts.model_id, ts.config_hash)
    try:
        panels = strip_panels(strip_jpeg) if strip_jpeg else None
        frames = len(ts.frame_timestamps)
        if panels != frames:
            if strip_jpeg:
                logger.warning(
                    "no preview for video %s: %s panels for %d frames", ts.video_id, panels, frames
                )
            remove_preview(store_url, *key)
            return
        write_preview(store_url, *key, bytes(strip_jpeg), facts_of(ts.grid, ts.frame_timestamps))
    except (OSError, ValueError) as exc:
        logger.warning("no preview for video %s: %s", ts.video_id, exc)
