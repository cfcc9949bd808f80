"""Frame strips (storage.previews): built window by window, read back and appended to (a live
video's), shrunk to fit JPEG's size limit, and written only when they line up with their set."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from storage import previews
from storage.previews import (
    MISSING_PANEL,
    FrameStrip,
    frame_strip_jpeg,
    read_preview_facts,
    read_preview_jpeg,
    strip_panels,
    write_preview_quietly,
)


def frames(count: int, value: int = 200, height: int = 48, width: int = 64) -> np.ndarray:
    return np.full((count, height, width, 3), value, np.uint8)


def image(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def test_windows_appended_make_one_strip_with_its_panel_count() -> None:
    strip = FrameStrip()
    strip.append(frames(3, 10))
    strip.append(frames(2, 240))
    jpeg = strip.jpeg()
    assert strip_panels(jpeg) == 5
    picture = image(jpeg)
    panel = round(previews.FRAME_HEIGHT * 64 / 48)
    assert picture.size == (5 * panel, previews.FRAME_HEIGHT)
    assert picture.getpixel((panel // 2, 30))[0] < 40  # window 1's frames, then window 2's
    assert picture.getpixel((4 * panel + panel // 2, 30))[0] > 210
    assert jpeg == frame_strip_jpeg(np.concatenate([frames(3, 10), frames(2, 240)]))


def test_a_strip_read_back_is_appended_to_and_grey_fills_lost_frames() -> None:
    first = FrameStrip()
    first.append(frames(4, 20))
    again = FrameStrip.from_jpeg(first.jpeg())
    assert again.count == 4
    again.pad(6)  # two frames whose panels were never written
    again.append(frames(2, 230))
    picture = image(again.jpeg())
    panel = picture.width // 8
    assert strip_panels(again.jpeg()) == 8 and picture.width == 8 * panel
    colours = [picture.getpixel((k * panel + panel // 2, 30)) for k in range(8)]
    assert all(c[0] < 50 for c in colours[:4])
    assert all(abs(c[0] - MISSING_PANEL[0]) < 10 for c in colours[4:6])
    assert all(c[0] > 200 for c in colours[6:])


def test_a_jpeg_without_our_comment_is_not_appended_to() -> None:
    out = io.BytesIO()
    Image.new("RGB", (96, 72)).save(out, format="JPEG")
    assert strip_panels(out.getvalue()) is None
    assert FrameStrip.from_jpeg(out.getvalue()).count == 0
    assert FrameStrip.from_jpeg(None).count == 0


def test_panels_shrink_to_fit_jpegs_width_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(previews, "MAX_JPEG_SIDE", 1000)
    strip = FrameStrip()
    strip.append(frames(10, 50))  # 10 panels of 96 x 72
    strip.append(frames(3, 50))  # 13 x 96 > 1000: halved to 48 x 36
    picture = image(strip.jpeg())
    assert picture.size == (13 * 48, 36) and strip_panels(strip.jpeg()) == 13
    strip.append(frames(990, 50))  # 1003 panels: not even 1-pixel panels fit
    assert strip.count == 1003 and strip.jpeg() == b""


def test_only_a_strip_that_lines_up_with_its_set_is_written(tmp_path) -> None:
    store = str(tmp_path)
    token_set = SimpleNamespace(
        video_id="0123456789abcdef",
        model_id="some/model",
        config_hash="c0ffee",
        grid=(2, 3, 3),
        frame_timestamps=(0.0, 1.0, 2.0, 3.0),
    )
    key = (token_set.video_id, token_set.model_id, token_set.config_hash)
    write_preview_quietly(store, token_set, frame_strip_jpeg(frames(4)))
    facts = read_preview_facts(store, *key)
    assert facts is not None and facts.frames == 4 and facts.grid == (2, 3, 3)
    # The set grew (a live video) but the strip did not: the old preview would not line up.
    grown = SimpleNamespace(**{**vars(token_set), "frame_timestamps": (0.0, 1.0, 2.0, 3.0, 4.0)})
    write_preview_quietly(store, grown, frame_strip_jpeg(frames(4)))
    assert read_preview_jpeg(store, *key) is None and read_preview_facts(store, *key) is None
