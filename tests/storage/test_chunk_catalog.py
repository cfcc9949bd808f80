"""Chunk rows of videos indexed in time windows (issue 14, revision 0003), on SQLite and
PostgreSQL: recorded with the video-level set in one transaction, listed by time range, kept by
garbage collection."""

from __future__ import annotations

import dataclasses

import pytest

from storage.catalog import Catalog, ChunkRecord, IndexedVideo
from storage.ids import video_id_for
from storage.token_files import TokenSetLocation

URI = "s3://archive/film.mp4"
MODEL, VIDEO_CONFIG, CHUNK_CONFIG = "model-a", "video0000000001", "chunk0000000001"


def _location(row_group: int, config: str, file: str = "f1") -> TokenSetLocation:
    return TokenSetLocation(
        file_url=f"/store/tokensets/{file}.parquet",
        row_group=row_group,
        offset=100 * row_group,
        length=100,
        footer=b"footer",
        video_id=video_id_for(URI),
        model_id=MODEL,
        config_hash=config,
        kept_count=10 + row_group,
        crc32=row_group,
    )


def _chunks(windows: range, file: str = "f1") -> list[ChunkRecord]:
    return [
        ChunkRecord(k, 60.0 * k, 60.0 * (k + 1), VIDEO_CONFIG, _location(k + 1, CHUNK_CONFIG, file))
        for k in windows
    ]


def test_chunks_are_recorded_with_the_video_set_and_listed_by_range(catalog_url: str) -> None:
    catalog = Catalog(catalog_url, store_url="/store")
    video = IndexedVideo(URI, "hash", _location(0, VIDEO_CONFIG))
    catalog.record_chunks(video, _chunks(range(3)))
    video_id = video_id_for(URI)
    assert catalog.locate(video_id, MODEL, VIDEO_CONFIG) == video.location
    listed = catalog.list_chunks(video_id, MODEL, VIDEO_CONFIG)
    assert listed == _chunks(range(3))  # the chunk location carries its own config hash
    in_range = catalog.list_chunks(video_id, MODEL, VIDEO_CONFIG, start_s=70.0, end_s=125.0)
    assert [c.window for c in in_range] == [1, 2]
    edge = catalog.list_chunks(video_id, MODEL, VIDEO_CONFIG, start_s=60.0, end_s=120.0)
    assert [c.window for c in edge] == [1]  # [a, b) windows: touching is not overlapping
    # A live video grows: new chunks and a new video-level set, in one transaction.
    newer = IndexedVideo(URI, "hash", _location(0, VIDEO_CONFIG, file="f2"))
    catalog.record_chunks(newer, _chunks(range(3, 4), file="f2"))
    assert [c.window for c in catalog.list_chunks(video_id, MODEL, VIDEO_CONFIG)] == [0, 1, 2, 3]
    assert catalog.locate(video_id, MODEL, VIDEO_CONFIG).file_url.endswith("f2.parquet")
    # Recording a window again replaces its row: never two rows for one window.
    catalog.record_chunks(newer, _chunks(range(3, 4), file="f2"))
    assert len(catalog.list_chunks(video_id, MODEL, VIDEO_CONFIG)) == 4
    assert catalog.referenced_file_urls() == {
        "/store/tokensets/f1.parquet",
        "/store/tokensets/f2.parquet",
    }
    catalog.close()


@pytest.mark.parametrize(
    "change", [{"window": -1}, {"start_s": 60.0, "end_s": 60.0}, {"start_s": -1.0}]
)
def test_bad_chunks_are_refused(catalog_url: str, change: dict) -> None:
    catalog = Catalog(catalog_url, store_url="/store")
    video = IndexedVideo(URI, "hash", _location(0, VIDEO_CONFIG))
    [chunk] = _chunks(range(1))
    with pytest.raises(ValueError):
        catalog.record_chunks(video, [dataclasses.replace(chunk, **change)])
    assert catalog.locate(video_id_for(URI)) is None  # nothing of the call was recorded
    catalog.close()


def test_recording_all_windows_replaces_every_old_chunk_row_at_once(catalog_url: str) -> None:
    """A video re-indexed after its source changed: its new chunks are all its chunks, so the
    rows of windows it no longer has go, in the transaction that records the new ones."""
    catalog = Catalog(catalog_url, store_url="/store")
    video_id = video_id_for(URI)
    catalog.record_chunks(IndexedVideo(URI, "hash", _location(0, VIDEO_CONFIG)), _chunks(range(4)))
    shorter = IndexedVideo(
        URI, "new", _location(0, VIDEO_CONFIG, file="f2"), source_fingerprint="b"
    )
    catalog.record_chunks(shorter, _chunks(range(2), file="f2"), all_windows=True)
    assert catalog.list_chunks(video_id, MODEL, VIDEO_CONFIG) == _chunks(range(2), file="f2")
    assert catalog.get_video(video_id, MODEL, VIDEO_CONFIG).source_fingerprint == "b"
    assert catalog.referenced_file_urls() == {"/store/tokensets/f2.parquet"}
    catalog.close()
