"""The awkward files an indexing job meets in a real archive, made for the tests: corrupt,
truncated, empty, not a video, an unknown codec, a video stream with no frames, audio only,
rotation metadata, variable frame rate, odd sizes, fewer frames than sampled."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np

from tokenreel.sample_videos import DEFAULT_FPS, synthetic_frames, write_tone, write_video


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


def make_audio_only(path: str | Path, *, duration_s: float = 1.0) -> Path:
    """An MP4 with a single AAC audio track and no video."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        write_tone(container, container.add_stream("aac", rate=16000), duration_s=duration_s)
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
