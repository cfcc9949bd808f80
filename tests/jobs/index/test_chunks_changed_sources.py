"""A long video replaced at the same path is re-indexed by the next chunked run (`--chunk-seconds`,
issue 13): its listed fingerprint changed, as in the one-pass path. Until the new sets are
recorded the old video-level set and chunks are what the catalog serves, and the new chunk rows
replace all the old ones (a shorter video, fewer windows: no stale chunk row is left)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from compression import CompressionConfig
from jobs.index import IndexSummary, index_videos
from jobs.index.sources import local_fingerprint
from storage import Store, VideoStatus, open_store, video_id_for
from tokenreel.sample_videos import write_long_video

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "tiny-llava-ov"
CHUNK_S = 20.0


def test_a_replaced_long_video_is_reindexed_in_chunks_and_served_until_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    film = write_long_video(corpus / "film.mp4", 70, fps=1, size=64, seed=1)  # 4 windows
    shorter = write_long_video(tmp_path / "shorter.mp4", 30, fps=1, size=64, seed=2)  # 2
    store_url = str(tmp_path / "store")
    video_id = video_id_for(str(film))

    def index() -> IndexSummary:
        return index_videos(
            str(corpus), store_url=store_url, model=MODEL, frames=4, chunk_seconds=CHUNK_S,
            config=CompressionConfig(retention_ratio=0.1), progress=False,
        )  # fmt: skip

    first = index()
    assert (first.indexed, first.failed) == (1, 0)
    catalog = open_store(store_url).catalog
    [record] = catalog.list_videos()
    key = (record.model_id, record.config_hash)
    old_location = catalog.locate(video_id, *key)
    old_chunks = catalog.list_chunks(video_id, *key)
    assert [c.window for c in old_chunks] == [0, 1, 2, 3]
    assert record.source_fingerprint == local_fingerprint(str(film))
    assert (index().indexed, index().skipped) == (0, 1)  # unchanged: nothing to do

    before = film.stat().st_mtime_ns
    shutil.copyfile(shorter, film)  # replaced at the same path
    os.utime(film, ns=(before + 10**9, before + 10**9))

    # What a reader sees once the new sets are written but not yet recorded.
    served_meanwhile = []
    save_chunks = Store.save_chunks

    def observed_save_chunks(self: Store, *args: object, **kwargs: object) -> object:
        served_meanwhile.append(
            (
                catalog.get_video(video_id, *key).status,
                catalog.locate(video_id, *key),
                catalog.list_chunks(video_id, *key),
            )
        )
        return save_chunks(self, *args, **kwargs)

    monkeypatch.setattr(Store, "save_chunks", observed_save_chunks)
    second = index()
    assert (second.indexed, second.failed, second.skipped) == (1, 0, 0)
    [(status, location, chunks)] = served_meanwhile
    assert status is VideoStatus.PENDING  # being re-indexed...
    assert (location, chunks) == (old_location, old_chunks)  # ...and the old sets still served

    record = catalog.get_video(video_id, *key)
    assert record.status is VideoStatus.INDEXED
    assert record.source_fingerprint == local_fingerprint(str(film))
    assert record.content_hash == hashlib.sha256(shorter.read_bytes()).hexdigest()
    assert catalog.locate(video_id, *key) != old_location
    new_chunks = catalog.list_chunks(video_id, *key)
    assert [(c.window, c.start_s) for c in new_chunks] == [(0, 0.0), (1, CHUNK_S)]
    assert new_chunks[-1].end_s == pytest.approx(30.0)
    assert {c.location.file_url for c in new_chunks} == {record.location.file_url}
    assert index().indexed == 0  # and it is done
    catalog.close()
