"""Small synthetic videos written with PyAV, for tests, the demo and the evaluation runner.

`make_sample_videos` writes good clips: a coloured square moving over a gradient, different for
every clip (so their bytes, content hashes and tokens differ) and identical on every run for the
same seed. The `make_*` functions below it write the awkward files an indexing job meets in a
real archive: corrupt, truncated, empty, not a video, an unknown codec, a video stream with no
frames, audio only, rotation metadata, variable frame rate, odd sizes, fewer frames than sampled.
"""

from __future__ import annotations

import struct
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
            seconds = timestamps[i] if timestamps is not None else i / fps
            frame.pts = round(seconds * tick)
            frame.time_base = Fraction(1, tick)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio_stream is not None:
            _write_tone(container, audio_stream, seconds=len(frames) / fps)
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


# -- awkward files ---------------------------------------------------------------------------


def make_corrupt_video(path: str | Path, *, seed: int = 0) -> Path:
    """An MP4 whose container is intact but whose whole video bitstream is random bytes."""
    path = write_video(path, synthetic_frames(12, 64, 64, seed), fps=DEFAULT_FPS)
    data = bytearray(path.read_bytes())
    at = data.find(b"mdat")
    if at < 4:
        raise RuntimeError("PyAV wrote an MP4 without an mdat box")
    (box_size,) = struct.unpack(">I", data[at - 4 : at])
    payload = box_size - 8
    rng = np.random.default_rng(seed)
    data[at + 4 : at + 4 + payload] = rng.integers(0, 256, payload, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def make_truncated_video(path: str | Path, *, keep: float = 0.5, seed: int = 0) -> Path:
    """The first `keep` share of a good MP4's bytes (the index at the end is lost)."""
    path = write_video(path, synthetic_frames(24, 64, 64, seed), fps=DEFAULT_FPS)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_zero_byte_file(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_not_a_video(path: str | Path) -> Path:
    """A text file with a video suffix."""
    path = Path(path)
    path.write_text("this is a shopping list, not a video\n" * 20)
    return path


def make_unsupported_codec_video(path: str | Path, *, seed: int = 0) -> Path:
    """A well-formed MP4 whose video track names a codec no decoder knows (fourcc 'zzzz')."""
    path = write_video(path, synthetic_frames(8, 64, 64, seed))
    path.write_bytes(path.read_bytes().replace(b"avc1", b"zzzz"))
    return path


def make_no_frames_video(path: str | Path) -> Path:
    """A container with a video stream that holds no frame (AVI keeps such a stream; MP4 drops it).

    The suffix of `path` is replaced by `.avi`; the written path is returned.
    """
    path = Path(path).with_suffix(".avi")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=DEFAULT_FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def make_audio_only(path: str | Path, *, seconds: float = 1.0) -> Path:
    """An MP4 with a single AAC audio track and no video."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        _write_tone(container, container.add_stream("aac", rate=16000), seconds=seconds)
    return path


def make_rotated_video(
    path: str | Path, *, rotation: int = 90, width: int = 64, height: int = 48, seed: int = 0
) -> Path:
    """A clip with display-matrix rotation metadata (as phones record portrait video)."""
    return write_video(path, synthetic_frames(12, width, height, seed), rotation=rotation)


def make_vfr_video(path: str | Path, *, frames: int = 20, seed: int = 0) -> Path:
    """A variable-frame-rate clip: gaps between frames alternate between 50 ms and 250 ms."""
    gaps = np.where(np.arange(frames) % 2 == 0, 0.05, 0.25)
    timestamps = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return write_video(path, synthetic_frames(frames, 64, 64, seed), timestamps=timestamps.tolist())


def make_odd_size_video(
    path: str | Path, *, width: int = 57, height: int = 43, seed: int = 0
) -> Path:
    return write_video(path, synthetic_frames(12, width, height, seed))


def make_short_video(path: str | Path, *, frames: int = 3, seed: int = 0) -> Path:
    """A clip with fewer frames than a job samples."""
    return write_video(path, synthetic_frames(frames, 64, 64, seed))


def make_video_with_audio(path: str | Path, *, seed: int = 0) -> Path:
    return write_video(path, synthetic_frames(16, 64, 64, seed), audio=True)


def make_bad_videos(directory: str | Path) -> dict[str, Path]:
    """One file of each unreadable kind; name -> path. None of them can be indexed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "corrupt": make_corrupt_video(directory / "corrupt.mp4"),
        "truncated": make_truncated_video(directory / "truncated.mp4"),
        "zero_bytes": make_zero_byte_file(directory / "zero_bytes.mp4"),
        "not_a_video": make_not_a_video(directory / "not_a_video.mp4"),
        "unsupported_codec": make_unsupported_codec_video(directory / "unsupported_codec.mp4"),
        "no_frames": make_no_frames_video(directory / "no_frames.avi"),
        "audio_only": make_audio_only(directory / "audio_only.mp4"),
    }


def make_awkward_videos(directory: str | Path) -> dict[str, Path]:
    """One file of each awkward but readable kind; name -> path. All of them can be indexed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "rotated": make_rotated_video(directory / "rotated.mp4"),
        "vfr": make_vfr_video(directory / "vfr.mp4"),
        "odd_size": make_odd_size_video(directory / "odd_size.mp4"),
        "short": make_short_video(directory / "short.mp4"),
        "with_audio": make_video_with_audio(directory / "with_audio.mp4"),
    }


def _write_tone(container: av.container.OutputContainer, stream, *, seconds: float) -> None:
    """Encode a quiet 440 Hz tone of `seconds` into an audio stream of `container`."""
    rate = stream.codec_context.sample_rate
    chunk = 1024
    total = max(chunk, int(rate * seconds))
    for start in range(0, total, chunk):
        t = np.arange(start, start + chunk) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
