"""Small machines and stopped runs: a cluster that cannot hold the pools is refused up front
(the job used to hang), and a run stopped by SIGTERM leaves its videos interrupted, resumable,
instead of pending forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import VideoStatus, open_store
from tokenreel.sample_videos import make_sample_videos

pytestmark = pytest.mark.slow


def index_command(corpus: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tokenreel", "index", str(corpus),
        "--store", str(tmp_path / "store"), "--catalog", f"sqlite:///{tmp_path}/catalog.sqlite",
        "--frames", "4", "--batch-size", "1", "--no-progress", *extra,
    ]  # fmt: skip


def test_one_cpu_is_refused_up_front_instead_of_hanging(tmp_path: Path) -> None:
    """The issue: `tokenreel index DIR --num-cpus 1` hung for 15 minutes."""
    corpus = tmp_path / "corpus"
    make_sample_videos(corpus, 1, frames=8, width=64, height=48)
    done = subprocess.run(
        index_command(corpus, tmp_path, "--num-cpus", "1", "--ray-address", "local"),
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot run the indexing pipeline" in done.stderr
    assert "= 2 CPU, the cluster has 1" in done.stderr
    assert "Traceback" not in done.stderr
    # The run that could not start reads as ended: its videos are resumable, not in progress.
    catalog = open_store(str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite").catalog
    assert {r.status for r in catalog.list_videos(limit=10)} == {VideoStatus.INTERRUPTED}


def test_sigterm_leaves_the_runs_videos_interrupted_and_a_rerun_finishes(
    ray_session: None, tmp_path: Path
) -> None:
    import ray

    corpus = tmp_path / "corpus"
    videos = make_sample_videos(corpus, 6, frames=12, width=64, height=48, seed=5)
    address = ray.get_runtime_context().gcs_address
    command = index_command(corpus, tmp_path, "--ray-address", address)
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    store = open_store(str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite")
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and driver.poll() is None:
            if (tmp_path / "catalog.sqlite").exists() and store.catalog.count_videos("indexed"):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the job finished before it could be stopped"
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    (run,) = store.catalog.list_runs()
    assert run.finished_at is not None and run.counts["interrupted"] == 1
    statuses = {r.status for r in store.catalog.list_videos(limit=100)}
    left = store.catalog.count_videos("interrupted")
    assert statuses <= {VideoStatus.INDEXED, VideoStatus.INTERRUPTED} and left >= 1
    assert store.catalog.count_videos("pending") == 0  # nothing reads as still being indexed

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert store.catalog.count_videos("indexed") == len(videos)
    assert store.catalog.count_videos("interrupted") == 0
