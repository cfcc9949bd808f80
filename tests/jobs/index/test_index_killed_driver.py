"""A driver killed outright (SIGKILL: no handler runs, no end is recorded) leaves its videos
`pending`; they used to read "still being indexed" forever. With the run's heartbeat they read
`interrupted` once it goes stale (`tokenreel videos`, `tokenreel runs`, the catalog), and a rerun
indexes them: the chunked path (`--chunk-seconds`) here; the Ray pipeline's driver in
test_index.py (`test_killed_driver_reads_interrupted_and_a_rerun_finishes_without_duplicates`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import Catalog, VideoStatus, open_store
from tokenreel.cli import main
from tokenreel.sample_videos import write_long_video

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.5
CHUNKED = ("--frames", "2", "--chunk-seconds", "10", "--model", "tiny-llava-ov")


def _wait_for(condition: object, what: str, timeout_s: float = 150.0) -> None:
    """Poll `condition()` until it holds (a deadline for a hung test, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_sigkilled_chunked_drivers_videos_read_interrupted_and_a_rerun_indexes_them(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    store_args = ["--store", str(tmp_path / "store"), "--catalog", f"sqlite:///{tmp_path}/c.sqlite"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        write_long_video(corpus / f"v{i}.mp4", 60, fps=1, size=64, seed=i)
    command = [
        sys.executable, "-m", "tokenreel", "index", str(corpus), *store_args, "--no-progress",
        "--heartbeat-seconds", str(HEARTBEAT_S), *CHUNKED,
    ]  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    catalog: Catalog | None = None
    try:

        def one_indexed() -> bool:
            nonlocal catalog
            assert driver.poll() is None, "the job finished before it could be killed"
            if catalog is None and (tmp_path / "c.sqlite").exists():
                catalog = open_store(store_args[1], store_args[3]).catalog
            return catalog is not None and catalog.count_videos("indexed") > 0

        _wait_for(one_indexed, "a first indexed video")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert catalog is not None
    [run] = catalog.list_runs()
    assert run.finished_at is None and run.heartbeat_at is not None  # no end was recorded

    # Once the heartbeat is a few intervals old, nothing reads as still being indexed.
    _wait_for(lambda: catalog.count_videos("pending") == 0, "the run to read as ended")
    statuses = {r.status for r in catalog.list_videos(limit=100)}
    assert statuses <= {VideoStatus.INDEXED, VideoStatus.INTERRUPTED}
    left = catalog.count_videos("interrupted")
    assert left >= 1
    capfd.readouterr()
    assert main(["videos", *store_args, "--status", "interrupted", "--json"]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert listed["total"] == left
    assert main(["runs", *store_args, "--json"]) == 0
    [row] = json.loads(capfd.readouterr().out)["runs"]
    assert row["state"] == "interrupted" and row["finished_at"] is None

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert catalog.count_videos("indexed") == 6
    assert catalog.count_videos("interrupted") == catalog.count_videos("pending") == 0
    catalog.close()
