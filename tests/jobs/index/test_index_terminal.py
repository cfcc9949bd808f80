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
