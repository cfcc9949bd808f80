"""Writes stream: a batch is durable in the store and the catalog while later videos are still
waiting to be decoded, not only once the whole corpus has been encoded.

How it is made deterministic on 2 CPUs, without timing: one video of the list is a named pipe
(FIFO). Its decode task blocks reading it - holding a CPU, as a long decode would - until the
test releases it, and the test releases it only from `on_progress`, i.e. once the driver has
received the first written batch (whose catalog rows therefore exist). If writes waited for
decoding to end, nothing would be written while that decode blocks: a watchdog then releases
the pipe after WAIT_S so that the job ends, and the test fails saying so. On release the pipe is
replaced by a real clip before the decode task's read returns, so that video indexes normally.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from compression.config import CompressionConfig
from jobs.index import index_videos
from storage import open_store, video_id_for
from tokenreel.sample_videos import make_sample_videos

WAIT_S = 60.0  # generous: the streaming pipeline releases the pipe within seconds
BATCH = 2
HELD_AT = 4  # two batches' worth of videos are listed before the blocking one

pytestmark = pytest.mark.slow


def test_first_batch_is_indexed_while_a_later_video_is_still_decoding(
    ray_session: None, tmp_path: Path
) -> None:
    clips = make_sample_videos(tmp_path / "corpus", 7, frames=12, width=64, height=48, seed=11)
    spare, listed = clips[-1], clips[:-1]
    held = tmp_path / "corpus" / "held.mp4"
    os.mkfifo(held)
    uris = [str(p) for p in listed[:HELD_AT]] + [str(held)] + [str(p) for p in listed[HELD_AT:]]
    store_url, catalog_url = str(tmp_path / "store"), f"sqlite:///{tmp_path / 'catalog.db'}"

    progressed, timed_out = threading.Event(), threading.Event()
    seen_at_first_progress: dict[str, object] = {}

    def on_progress(done: int, todo: int) -> None:
        if progressed.is_set():
            return
        catalog = open_store(store_url, catalog_url).catalog
        seen_at_first_progress["indexed"] = len(catalog.list_videos("indexed", limit=100))
        pending = catalog.list_videos("pending", limit=100)
        seen_at_first_progress["held_pending"] = video_id_for(str(held)) in {
            r.video_id for r in pending
        }
        progressed.set()

    def release_held() -> None:
        if not progressed.wait(WAIT_S):
            timed_out.set()
        fd = os.open(held, os.O_WRONLY)  # returns once the decode task has it open for reading
        os.replace(spare, held)  # the decoder, which opens the path next, finds a real clip
        os.close(fd)  # the decode task's read ends (empty content)

    releaser = threading.Thread(target=release_held, daemon=True)
    releaser.start()
    summary = index_videos(
        uris,
        store_url=store_url,
        catalog_url=catalog_url,
        config=CompressionConfig(retention_ratio=0.1),
        frames=4,
        batch_size=BATCH,
        progress=False,
        on_progress=on_progress,
    )
    releaser.join(timeout=WAIT_S)

    assert not timed_out.is_set(), (
        f"nothing was written within {WAIT_S:.0f} s while one video's decode was blocked: "
        "the write stage waits for decoding to end instead of streaming"
    )
    assert seen_at_first_progress["indexed"] >= BATCH
    assert seen_at_first_progress["held_pending"] is True
    assert (summary.indexed, summary.failed) == (len(uris), 0), summary.failures
