"""A chunked run stopped by Ctrl-C (or a storage error) records its end, like the Ray path: its
videos not yet indexed read `interrupted` at once, not `pending` until its heartbeat goes
stale."""

from __future__ import annotations

from pathlib import Path

import pytest

import jobs.index.chunks as chunks
from compression import CompressionConfig
from jobs.index import index_videos
from storage import VideoStatus, open_store
from tokenreel.sample_videos import write_long_video

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_ctrl_c_in_a_chunked_run_records_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        write_long_video(corpus / f"v{i}.mp4", 30, fps=1, size=64, seed=i)
    index_long_video = chunks.index_long_video
    calls = []

    def stopped_on_the_second(*args: object) -> object:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return index_long_video(*args)

    monkeypatch.setattr(chunks, "index_long_video", stopped_on_the_second)
    store_url = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        index_videos(
            str(corpus), store_url=store_url, model="tiny-llava-ov", frames=2, chunk_seconds=20.0,
            config=CompressionConfig(retention_ratio=0.1), progress=False, heartbeat_s=3600.0,
        )  # fmt: skip
    catalog = open_store(store_url).catalog
    [run] = catalog.list_runs()
    assert run.finished_at is not None and run.counts == {
        "indexed": 1,
        "failed": 0,
        "interrupted": 1,
    }
    statuses = sorted(r.status.value for r in catalog.list_videos())
    assert statuses == [VideoStatus.INDEXED.value, VideoStatus.INTERRUPTED.value]
    catalog.close()
