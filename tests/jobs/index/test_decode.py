"""The decoder: sampling, resizing, rotation, variable frame rate, bad files, the time limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from video_files import make_awkward_videos, make_bad_videos, make_vfr_video

from jobs.index.decode import (
    DecodedVideo,
    DecodeError,
    DecoderProcess,
    DecodeSettings,
    DecodeTimeout,
    decode_video,
    sample_frame_indices,
    scaled_size,
)
from tokenreel.sample_videos import make_sample_videos, write_video

BACKENDS = ("decord", "pyav")


def graded_video(path: Path, count: int, *, width: int = 64, height: int = 48) -> Path:
    """Frame i is a flat grey of brightness 8 * i + 20: a decoded frame tells its own index."""
    levels = (8 * np.arange(count) + 20).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()
    return write_video(path, frames)


def decoded_levels(video: DecodedVideo) -> list[int]:
    return [round((float(frame.mean()) - 20) / 8) for frame in video.frames]


def test_sample_frame_indices_are_uniform_and_repeat_for_short_videos() -> None:
    assert sample_frame_indices(100, 5) == [0, 25, 50, 74, 99]
    assert sample_frame_indices(7, 1) == [0]
    assert sample_frame_indices(1, 4) == [0, 0, 0, 0]
    short = sample_frame_indices(3, 8)
    assert len(short) == 8 and sorted(set(short)) == [0, 1, 2] and short == sorted(short)
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


def test_scaled_size_only_shrinks_and_keeps_the_aspect() -> None:
    assert scaled_size(3840, 2160, 384) == (683, 384)
    assert scaled_size(2160, 3840, 384) == (384, 683)
    assert scaled_size(64, 48, 384) == (64, 48)
    assert scaled_size(64, 48, None) == (64, 48)


def test_settings_are_validated() -> None:
    for bad in ({"num_frames": 0}, {"frame_size": 0}, {"timeout_s": 0}, {"backend": "opencv"}):
        with pytest.raises(ValueError):
            DecodeSettings(**bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_pick_the_sampled_frames(tmp_path: Path, backend: str) -> None:
    path = graded_video(tmp_path / "graded.mp4", 20)
    video = decode_video(path, DecodeSettings(num_frames=6, backend=backend))
    wanted = sample_frame_indices(20, 6)
    assert video.backend == backend
    assert video.frames.shape == (6, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.frame_indices == tuple(wanted)
    assert decoded_levels(video) == wanted
    assert video.timestamps == pytest.approx([i / 8 for i in wanted])
    assert video.source_frame_count == 20 and video.source_size == (64, 48)


def test_backends_agree_on_resized_frames(tmp_path: Path) -> None:
    (path,) = make_sample_videos(tmp_path, 1, frames=12, width=96, height=64)
    by_decord = decode_video(path, DecodeSettings(num_frames=5, frame_size=40, backend="decord"))
    by_pyav = decode_video(path, DecodeSettings(num_frames=5, frame_size=40, backend="pyav"))
    assert by_decord.frames.shape == by_pyav.frames.shape == (5, 40, 60, 3)
    assert by_decord.timestamps == pytest.approx(by_pyav.timestamps)
    difference = np.abs(by_decord.frames.astype(int) - by_pyav.frames.astype(int))
    assert difference.mean() < 4.0  # two scalers, same frames


def test_auto_falls_back_to_pyav_when_decord_fails(tmp_path: Path) -> None:
    # decord 0.6 rejects some output sizes (here 48x32) with a stride check error.
    (path,) = make_sample_videos(tmp_path, 1, frames=12, width=96, height=64)
    with pytest.raises(DecodeError, match="decord"):
        decode_video(path, DecodeSettings(num_frames=3, frame_size=32, backend="decord"))
    video = decode_video(path, DecodeSettings(num_frames=3, frame_size=32))
    assert video.backend == "pyav" and video.frames.shape == (3, 32, 48, 3)


def test_short_video_gives_repeated_frames(tmp_path: Path) -> None:
    path = graded_video(tmp_path / "short.mp4", 3)
    video = decode_video(path, DecodeSettings(num_frames=8))
    assert video.frames.shape[0] == 8
    assert decoded_levels(video) == list(video.frame_indices) == sample_frame_indices(3, 8)


def test_variable_frame_rate_timestamps_are_the_real_ones(tmp_path: Path) -> None:
    path = make_vfr_video(tmp_path / "vfr.mp4", frames=20)
    gaps = np.where(np.arange(20) % 2 == 0, 0.05, 0.25)
    written = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    for backend in BACKENDS:
        video = decode_video(path, DecodeSettings(num_frames=7, backend=backend))
        assert video.timestamps == pytest.approx(written[list(video.frame_indices)].tolist())


def test_rotated_video_is_turned_upright(tmp_path: Path) -> None:
    frames = np.zeros((6, 48, 64, 3), np.uint8)
    frames[:, :12, :16] = 255  # a white marker in the top-left corner of the stored picture
    path = write_video(tmp_path / "rotated.mp4", frames, rotation=90)
    video = decode_video(path, DecodeSettings(num_frames=3))
    assert video.backend == "pyav"  # decord mishandles rotated streams
    assert video.source_size == (48, 64) and video.frames.shape == (3, 64, 48, 3)
    # 90 degrees counter-clockwise carries the top-left 12x16 corner to the bottom-left 16x12.
    assert video.frames[:, -16:, :12].mean() > 200
    assert video.frames[:, :16, :12].mean() < 50


def test_awkward_but_readable_videos_decode(tmp_path: Path) -> None:
    for name, path in make_awkward_videos(tmp_path).items():
        video = decode_video(path, DecodeSettings(num_frames=8, frame_size=32))
        assert video.frames.shape[0] == 8, name
        assert min(video.frames.shape[1:3]) == 32, name


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("corrupt", "no decodable frame"),
        ("truncated", "not a readable video container"),
        ("zero_bytes", "empty file"),
        ("not_a_video", "not a readable video container"),
        ("unsupported_codec", "unsupported video codec"),
        ("no_frames", "no decodable frame"),
        ("audio_only", "no video stream (audio only)"),
    ],
)
def test_bad_files_raise_a_readable_reason(tmp_path: Path, kind: str, reason: str) -> None:
    path = make_bad_videos(tmp_path)[kind]
    for backend in ("auto", *BACKENDS):
        with pytest.raises(DecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            decode_video(path, DecodeSettings(num_frames=4, backend=backend))


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="file not found"):
        decode_video(tmp_path / "nope.mp4", DecodeSettings())


def test_decoder_process_matches_in_process_decoding_and_passes_errors(tmp_path: Path) -> None:
    (path,) = make_sample_videos(tmp_path, 1)
    bad = make_bad_videos(tmp_path / "bad")["corrupt"]
    settings = DecodeSettings(num_frames=4, frame_size=32)
    decoder = DecoderProcess()
    try:
        guarded = decoder.decode(path, settings)
        direct = decode_video(path, settings)
        np.testing.assert_array_equal(guarded.frames, direct.frames)
        assert guarded.timestamps == direct.timestamps
        with pytest.raises(DecodeError, match="no decodable frame"):
            decoder.decode(bad, settings)
        first_child = decoder.pid
        decoder.decode(path, settings)
        assert decoder.pid == first_child  # errors do not cost a new child
    finally:
        decoder.close()


def test_a_decoder_child_starts_without_a_warning(tmp_path: Path) -> None:
    """Regressions: the child ran as `python -m jobs.index.decode`, which the package had already
    imported, and every child printed runpy's RuntimeWarning ("found in sys.modules") to stderr,
    in every decode task's log and under --verbose; and closing a decoder left the child's two
    pipes open (a ResourceWarning each, two file descriptors per recycled child until GC)."""
    (path,) = make_sample_videos(tmp_path, 1)
    script = (
        "import sys; from jobs.index.decode import DecoderProcess, DecodeSettings; "
        "d = DecoderProcess(); d.decode(sys.argv[1], DecodeSettings(num_frames=2)); d.close()"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr


def test_decoder_process_kills_an_overrunning_decode_and_recovers(tmp_path: Path) -> None:
    (path,) = make_sample_videos(tmp_path, 1, frames=40, width=128, height=128)
    decoder = DecoderProcess()
    try:
        decoder.decode(path, DecodeSettings(num_frames=2))  # start the child first
        child = decoder.pid
        # No decode (pipe round trip, open, probe, seek) fits in a microsecond.
        with pytest.raises(DecodeTimeout, match="longer than"):
            decoder.decode(path, DecodeSettings(num_frames=8, timeout_s=1e-6))
        assert decoder.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
        video = decoder.decode(path, DecodeSettings(num_frames=8))
        assert video.frames.shape[0] == 8 and decoder.pid != child
    finally:
        decoder.close()


def test_decoder_process_survives_a_killed_child_and_recycles(tmp_path: Path) -> None:
    (path,) = make_sample_videos(tmp_path, 1)
    decoder = DecoderProcess(recycle_after=2)
    settings = DecodeSettings(num_frames=2)
    try:
        decoder.decode(path, settings)
        os.kill(decoder.pid, signal.SIGKILL)
        decoder.decode(path, settings)  # a dead child is replaced, the video is not blamed
        replacement = decoder.pid
        assert replacement is not None
        decoder.decode(path, settings)
        assert decoder.pid is None  # the replacement served two videos: recycled
        decoder.decode(path, settings)
        assert decoder.pid not in (None, replacement)
    finally:
        decoder.close()
