"""Small synthetic videos written with PyAV: the demo's sample clips (the tests and benchmarks
use them too; the awkward files a real archive holds are made in tests/video_files.py).

`make_sample_videos` writes good clips: a coloured square moving over a gradient, different for
every clip (so their bytes, content hashes and tokens differ) and identical on every run for the
same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DEFAULT_FPS = 8


def synthetic_frames(num_frames: int, width: int, height: int, seed: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: a gradient background and a square that moves; depends only on seed."""
    if num_frames < 1 or width < 1 or height < 1:
        raise ValueError(f"need positive sizes, got {num_frames} frames of {width}x{height}")
    rng = np.random.default_rng(seed)
    background_colour, square_colour = rng.integers(0, 256, size=(2, 3))
    velocity = rng.uniform(-3.0, 3.0, size=2)
    side = max(1, min(width, height) // 4)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    background = (background_colour * (0.5 + 0.25 * ys + 0.25 * xs)).astype(np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    start = rng.uniform(0, [max(1, height - side), max(1, width - side)])
    for t in range(num_frames):
        y, x = (start + velocity * t).astype(int) % [max(1, height - side), max(1, width - side)]
        frames[t, y : y + side, x : x + side] = square_colour
    return frames


def write_video(
    path: str | Path,
    frames: np.ndarray,
    *,
    fps: int = DEFAULT_FPS,
    codec: str = "libx264",
    rotation: int = 0,
    timestamps: Sequence[float] | None = None,
    audio: bool = False,
) -> Path:
    """Encode uint8 [F, H, W, 3] frames into `path` (the container follows the suffix).

    rotation: display-matrix rotation in degrees counter-clockwise (what phones write).
    timestamps: presentation time of each frame in seconds (variable frame rate); default F / fps.
    audio: also write a short sine-tone AAC track, as most real videos have one.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if timestamps is not None and len(timestamps) != len(frames):
        raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
    path = Path(path)
    height, width = frames.shape[1:3]
    # 4:2:0 needs even sizes; odd-sized clips are stored 4:4:4, which H.264 allows at any size.
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    tick = 1000  # time base 1/1000 s: fine enough for variable frame rates
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = Fraction(1, tick)
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            at_s = timestamps[i] if timestamps is not None else i / fps
            frame.pts = round(at_s * tick)
            frame.time_base = Fraction(1, tick)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio_stream is not None:
            write_tone(container, audio_stream, duration_s=len(frames) / fps)
    return path


def write_long_video(
    path: str | Path,
    duration_s: float,
    *,
    fps: int = 1,
    size: int = 64,
    events: Sequence[tuple[float, float]] = (),
    seed: int = 0,
) -> Path:
    """A long, cheap synthetic video for chunked indexing (issue 14): one static scene (a
    gradient) for `duration_s` seconds at `fps`, except during each event (start_s, length_s),
    when a bright checkerboard of another colour fills the frame. Written frame by frame (a
    3-hour video never exists in memory), H.264 at size x size: seconds to make."""
    if duration_s <= 0 or fps < 1 or size < 2 or size % 2:
        raise ValueError(
            f"need duration > 0, fps >= 1, an even size >= 2; got {duration_s, fps, size}"
        )
    rng = np.random.default_rng(seed)
    colour, event_colour = rng.integers(40, 200, size=(2, 3))
    ramp = np.linspace(0.6, 1.0, size, dtype=np.float32)[:, None, None]
    scene = np.broadcast_to((colour * ramp).astype(np.uint8), (size, size, 3))
    cells = (np.indices((size, size)) // max(1, size // 8)).sum(axis=0) % 2
    event = np.where(cells[..., None] == 1, 255, event_colour).astype(np.uint8)
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(round(duration_s * fps)):
            at = i / fps
            busy = any(start <= at < start + length for start, length in events)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(event if busy else scene))
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_sample_videos(
    directory: str | Path,
    count: int,
    *,
    frames: int = 16,
    width: int = 64,
    height: int = 64,
    fps: int = DEFAULT_FPS,
    seed: int = 0,
    prefix: str = "sample",
) -> list[Path]:
    """Write `count` distinct small MP4 clips into `directory`; return their paths in order."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        write_video(
            directory / f"{prefix}_{i:04d}.mp4",
            synthetic_frames(frames, width, height, seed=seed * 1_000_003 + i),
            fps=fps,
        )
        for i in range(count)
    ]


def write_tone(container: av.container.OutputContainer, stream, *, duration_s: float) -> None:
    """Encode a quiet 440 Hz tone of `duration_s` seconds into an audio stream of `container`."""
    rate = stream.codec_context.sample_rate
    chunk = 1024
    total = max(chunk, int(rate * duration_s))
    for start in range(0, total, chunk):
        t = np.arange(start, start + chunk) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
