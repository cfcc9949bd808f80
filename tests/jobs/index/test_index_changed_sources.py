"""A video replaced at the same path is re-indexed by the next run (its listed size + mtime
changed), and its old token set stays readable until a new one is recorded."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from video_files import make_corrupt_video

from compression.config import CompressionConfig
from jobs.index import IndexSummary, index_videos
from storage import VideoStatus, open_store, video_id_for
from tokenreel.sample_videos import make_sample_videos

pytestmark = pytest.mark.slow


def test_a_replaced_local_video_is_reindexed_and_its_old_tokens_stay_until_then(
    ray_session: None, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    steady, changing = make_sample_videos(corpus, 2, frames=8, width=64, height=48, seed=1)
    [replacement] = make_sample_videos(tmp_path / "new", 1, frames=8, width=64, height=48, seed=9)
    store_url, catalog_url = str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite"
    store = open_store(store_url, catalog_url)
    video = video_id_for(str(changing))

    def index(**options: object) -> IndexSummary:
        return index_videos(
            corpus, store_url=store_url, catalog_url=catalog_url, progress=False, frames=4,
            config=CompressionConfig(retention_ratio=0.1), batch_size=2, **options,
        )  # fmt: skip

    def replace(path: Path, source: Path) -> None:
        before = path.stat().st_mtime_ns
        shutil.copyfile(source, path)
        os.utime(path, ns=(before + 10**9, before + 10**9))  # a later mtime, as a copy makes

    def content_hash(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    first = index()
    assert (first.indexed, first.failed) == (2, 0)
    old_hash = content_hash(changing)
    assert store.load(video).content_hash == old_hash
    assert (index().indexed, index().skipped) == (0, 2)  # unchanged: nothing to do

    # Replaced by something that cannot be indexed: the new attempt fails, the old tokens stay.
    make_corrupt_video(tmp_path / "corrupt.mp4")
    replace(changing, tmp_path / "corrupt.mp4")
    broken = index()
    assert (broken.indexed, broken.failed, broken.skipped) == (0, 1, 1)
    assert store.catalog.get_video(video).status is VideoStatus.FAILED
    assert store.load(video).content_hash == old_hash  # still readable

    # Replaced by a good video: the next run (failed ones are retried on request) re-indexes it.
    replace(changing, replacement)
    fixed = index(retry_failed=True)
    assert (fixed.indexed, fixed.failed, fixed.skipped) == (1, 0, 1)
    record = store.catalog.get_video(video)
    assert record.status is VideoStatus.INDEXED and record.content_hash == content_hash(changing)
    assert store.load(video).content_hash == content_hash(replacement) != old_hash
    assert store.load(video_id_for(str(steady))).content_hash == content_hash(steady)
    assert index().indexed == 0  # and it is done
