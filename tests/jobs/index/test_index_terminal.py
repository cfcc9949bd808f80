"""What `tokenreel index` shows on a terminal: its progress bar (videos/s, ETA, failures so far)
and its summary, nothing of Ray's, Ray Data's, Python's warnings or the decoders' chatter;
those stay in log files unless --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from video_files import make_corrupt_video

from tokenreel.sample_videos import make_sample_videos

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def test_index_prints_only_its_progress_and_summary(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    make_sample_videos(videos, 2, frames=8)
    make_corrupt_video(videos / "broken.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    command = [sys.executable, "-m", "tokenreel", "index", str(videos)]
    command += ["--store", str(tmp_path / "store"), "--frames", "8", "--num-cpus", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "2 indexed, 0 skipped, 1 failed" in result.stdout
    lines = [line.strip() for line in result.stderr.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line]
    foreign = [line for line in lines if not line.startswith("indexing:")]
    assert not foreign, result.stderr
    assert "videos/s" in lines[0] and "failed=1" in lines[-1] and "3/3 videos" in lines[-1]


def test_a_bad_videos_decoder_chatter_shows_only_under_verbose(tmp_path: Path) -> None:
    """ffmpeg's own lines about a corrupt video ("Invalid NAL unit size ...") are off the
    terminal by default (the reason is in the summary and the catalog) and on it with --verbose.
    The chunked path decodes in this process: no Ray to start."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_corrupt_video(videos / "broken.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TOKENREEL_"))}
    env["TMPDIR"] = str(tmp_path)  # where the native stderr's log file goes by default
    command = [sys.executable, "-m", "tokenreel", "index", str(videos), "--chunk-seconds", "60"]
    command += ["--frames", "4", "--no-progress"]
    runs = {}
    for verbose in (False, True):
        store = ["--store", str(tmp_path / f"store-{verbose}")]
        argv = [*command, *store, *(["--verbose"] if verbose else [])]
        runs[verbose] = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
        )
    for result in runs.values():
        assert result.returncode == 1, result.stderr  # the only video failed
        assert "0 indexed, 0 skipped, 1 failed" in result.stdout
        assert "broken.mp4: decode: " in result.stdout
    assert not runs[False].stderr, runs[False].stderr
    # Not merely redirected to the native stderr's log file: the decoders were quiet.
    logs = [p.read_text(errors="replace") for p in (tmp_path / "tokenreel-logs").glob("*.log")]
    assert not [text for text in logs if "NAL unit" in text]
    assert "Invalid NAL unit size" in runs[True].stderr
