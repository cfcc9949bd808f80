"""The catalog, the same tests on SQLite and on PostgreSQL (the `catalog_url` fixture)."""

from __future__ import annotations

import multiprocessing

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.catalog import MIGRATIONS_DIR, Catalog, IndexedVideo, VideoStatus, metadata
from storage.ids import video_id_for
from storage.token_files import TokenSetLocation

MODEL, CONFIG = "model-a", "cfg0000000000001"


def _location(
    uri: str, model: str = MODEL, config: str = CONFIG, file: str = "f1"
) -> TokenSetLocation:
    return TokenSetLocation(
        file_url=f"/store/tokensets/{file}.parquet",
        row_group=3,
        offset=1234,
        length=5678,
        footer=b"\x15\x00footer",
        video_id=video_id_for(uri),
        model_id=model,
        config_hash=config,
        kept_count=125,
        crc32=0xDEADBEEF,  # read back as recorded
    )


def _indexed(uri: str, **kwargs: str) -> IndexedVideo:
    return IndexedVideo(uri=uri, content_hash="sha256:abc", location=_location(uri, **kwargs))


def test_empty_database_upgrades_to_head_matching_the_tables(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == head
        assert compare_metadata(context, metadata) == []
    Catalog(catalog_url).close()  # a second open is a no-op upgrade
    catalog.close()


def test_status_lifecycle_is_per_model_and_config(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    uris = ["s3://v/a.mp4", "s3://v/b.mp4", "s3://v/c.mp4"]
    assert catalog.not_indexed([*uris, uris[0]], MODEL, CONFIG) == uris
    ids = catalog.register_pending(uris, MODEL, CONFIG)
    assert ids == [video_id_for(u) for u in uris]
    assert catalog.get_video(ids[0], MODEL, CONFIG).status is VideoStatus.PENDING

    catalog.record_indexed([_indexed(uris[0])])
    catalog.record_indexed([_indexed(uris[0])])  # idempotent
    catalog.record_failed(uris[1], MODEL, CONFIG, "decode timeout")
    catalog.record_failed(uris[1], MODEL, CONFIG, "decode error: bad moov atom")

    assert catalog.not_indexed(uris, MODEL, CONFIG) == [uris[2]]
    assert catalog.not_indexed(uris, MODEL, CONFIG, retry_failed=True) == uris[1:]
    assert catalog.not_indexed(uris, MODEL, CONFIG, retry_failed=True, max_attempts=2) == [uris[2]]
    # Another config: nothing done there yet.
    assert catalog.not_indexed(uris, MODEL, "cfg0000000000002") == uris

    indexed = catalog.get_video(ids[0], MODEL, CONFIG)
    assert indexed.status is VideoStatus.INDEXED and indexed.attempts == 0
    assert indexed.location == _location(uris[0]) and indexed.content_hash == "sha256:abc"
    failed = catalog.get_video(ids[1])
    assert failed.status is VideoStatus.FAILED and failed.attempts == 2
    assert failed.error == "decode error: bad moov atom" and failed.location is None
    assert catalog.get_video(video_id_for("s3://v/unknown.mp4")) is None
    assert catalog.get_video(ids[0], "other-model") is None

    # A retry makes the failed video pending again; an indexed one stays indexed.
    catalog.register_pending(uris[:2], MODEL, CONFIG)
    assert catalog.get_video(ids[1]).status is VideoStatus.PENDING
    assert catalog.get_video(ids[0]).status is VideoStatus.INDEXED
    # A failure reported by a duplicate worker does not hide a good token set.
    catalog.record_failed(uris[0], MODEL, CONFIG, "late duplicate")
    assert catalog.get_video(ids[0]).status is VideoStatus.INDEXED
    assert catalog.locate(ids[0], MODEL, CONFIG) == _location(uris[0])
    catalog.close()


def test_locate_picks_the_model_config_or_the_most_recent(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    uri = "file:///videos/x.mp4"
    video_id = video_id_for(uri)
    assert catalog.locate(video_id) is None
    catalog.record_indexed([_indexed(uri, config="cfg-old", file="old")])
    catalog.record_indexed([_indexed(uri, config="cfg-new", file="new")])
    assert catalog.locate(video_id).file_url.endswith("new.parquet")
    assert catalog.locate(video_id, MODEL, "cfg-old").file_url.endswith("old.parquet")
    assert catalog.locate(video_id, "other-model") is None
    # Re-indexing the same key replaces its location (last writer wins, one row).
    catalog.record_indexed([_indexed(uri, config="cfg-old", file="old2")])
    assert catalog.locate(video_id, MODEL, "cfg-old").file_url.endswith("old2.parquet")
    assert catalog.referenced_file_urls() == {
        "/store/tokensets/new.parquet",
        "/store/tokensets/old2.parquet",
    }
    catalog.close()


def test_list_and_search_videos(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    uris = [f"s3://bucket/cats/cat_{i:02d}.mp4" for i in range(5)] + ["s3://bucket/dog%.mp4"]
    catalog.register_pending(uris, MODEL, CONFIG)
    catalog.record_indexed([_indexed(uris[0]), _indexed(uris[1])])
    catalog.record_failed(uris[2], MODEL, CONFIG, "oops")

    assert catalog.count_videos() == 6
    assert {r.uri for r in catalog.list_videos(status="indexed")} == set(uris[:2])
    assert [r.error for r in catalog.list_videos(status=VideoStatus.FAILED)] == ["oops"]
    assert {r.uri for r in catalog.list_videos(search="CAT_0")} == set(uris[:5])
    assert [r.uri for r in catalog.list_videos(search="g%")] == [uris[5]]  # % is literal
    assert catalog.list_videos(search="t_%") == []
    assert catalog.count_videos(search=video_id_for(uris[3])[:10]) == 1
    pages = [catalog.list_videos(limit=4, offset=o) for o in (0, 4)]
    assert [len(p) for p in pages] == [4, 2]
    assert len({r.video_id for page in pages for r in page}) == 6
    for bad in ({"limit": 0}, {"offset": -1}, {"status": "done"}):
        with pytest.raises(ValueError):
            catalog.list_videos(**bad)
    catalog.close()


def test_runs_are_summarised(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    run_id = catalog.start_run({"model": MODEL, "retention_ratio": 0.02})
    catalog.register_pending(["a", "b", "c"], MODEL, CONFIG, run_id=run_id)
    catalog.record_indexed([_indexed("a")], run_id=run_id)
    catalog.record_failed("b", MODEL, CONFIG, "bad", run_id=run_id)
    running = catalog.run_summary(run_id)
    assert running.finished_at is None and running.counts is None
    assert running.status_counts == {"indexed": 1, "failed": 1, "pending": 1}
    assert running.settings == {"model": MODEL, "retention_ratio": 0.02}
    catalog.finish_run(run_id, {"indexed": 1, "failed": 1})
    done = catalog.run_summary(run_id)
    assert done.finished_at >= done.started_at and done.counts == {"indexed": 1, "failed": 1}
    assert [r.run_id for r in catalog.list_runs()] == [run_id]
    assert catalog.run_summary("nope") is None
    with pytest.raises(KeyError):
        catalog.finish_run("nope", {})
    catalog.close()


def test_pending_videos_of_an_ended_run_read_as_interrupted_until_a_rerun(
    catalog_url: str,
) -> None:
    catalog = Catalog(catalog_url)
    first = catalog.start_run({})
    catalog.register_pending(["a", "b", "c"], MODEL, CONFIG, run_id=first)
    catalog.record_indexed([_indexed("a")], run_id=first)
    catalog.register_pending(["z"], MODEL, CONFIG)  # no run: nothing can end it
    assert catalog.get_video(video_id_for("b"), MODEL, CONFIG).status is VideoStatus.PENDING
    catalog.finish_run(first, {"indexed": 1, "interrupted": 1})  # e.g. Ctrl-C

    status = {r.uri: r.status for r in catalog.list_videos(limit=10)}
    assert status == {
        "a": VideoStatus.INDEXED,
        "b": VideoStatus.INTERRUPTED,
        "c": VideoStatus.INTERRUPTED,
        "z": VideoStatus.PENDING,
    }
    assert catalog.get_video(video_id_for("b")).status is VideoStatus.INTERRUPTED
    assert sorted(r.uri for r in catalog.list_videos("interrupted", limit=10)) == ["b", "c"]
    assert [r.uri for r in catalog.list_videos("pending", limit=10)] == ["z"]
    assert (catalog.count_videos("interrupted"), catalog.count_videos("pending")) == (2, 1)
    assert catalog.run_summary(first).status_counts == {"indexed": 1, "interrupted": 2}
    assert catalog.not_indexed(["a", "b", "c"], MODEL, CONFIG) == ["b", "c"]  # resumable

    rerun = catalog.start_run({})
    catalog.register_pending(["b", "c"], MODEL, CONFIG, run_id=rerun)
    assert catalog.get_video(video_id_for("b")).status is VideoStatus.PENDING
    assert catalog.count_videos("interrupted") == 0
    catalog.close()


def test_invalid_inputs_are_refused(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    with pytest.raises(ValueError, match="invalid video id"):
        catalog.locate("../../etc")
    with pytest.raises(ValueError, match="invalid video id"):
        catalog.get_video("a b")
    with pytest.raises(ValueError, match="URI"):
        catalog.register_pending(["ok", ""], MODEL, CONFIG)
    with pytest.raises(ValueError, match="collection of URIs"):
        catalog.not_indexed("s3://one/string.mp4", MODEL, CONFIG)
    with pytest.raises(ValueError, match="model_id"):
        catalog.not_indexed(["a"], "", CONFIG)
    with pytest.raises(ValueError, match="JSON"):
        catalog.start_run({"x": object()})
    assert catalog.count_videos() == 0  # nothing half-written by the refused calls
    catalog.close()


def _worker(url: str, worker: int, uris: list[str], done: multiprocessing.Queue) -> None:
    catalog = Catalog(url)  # each process opens (and first-use upgrades) on its own
    for i, uri in enumerate(uris):
        catalog.register_pending([uri], MODEL, CONFIG)
        if i % 3 == 0:
            catalog.record_failed(uri, MODEL, CONFIG, f"worker {worker}")
        else:
            catalog.record_indexed([_indexed(uri, file=f"w{worker}")])
    catalog.close()
    done.put(worker)


@pytest.mark.slow
def test_concurrent_writers_neither_duplicate_nor_lose_rows(catalog_url: str) -> None:
    uris = [f"s3://v/{i}.mp4" for i in range(30)]
    # Overlapping slices: every URI is written by two or three workers at once.
    slices = [uris[0:20], uris[10:30], uris[5:25]]
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    workers = [
        context.Process(target=_worker, args=(catalog_url, w, part, done))
        for w, part in enumerate(slices)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0, 0]
    assert sorted(done.get(timeout=1) for _ in workers) == [0, 1, 2]

    catalog = Catalog(catalog_url)
    with catalog.engine.connect() as conn:
        for table in ("videos", "video_status", "token_sets"):
            rows = conn.execute(sa.text(f"SELECT video_id FROM {table}")).scalars().all()
            assert len(rows) == len(set(rows)), table
        assert conn.execute(sa.text("SELECT count(*) FROM videos")).scalar() == 30
        assert conn.execute(sa.text("SELECT count(*) FROM video_status")).scalar() == 30
    # Indexed by any worker stays indexed (a late failure or re-registration does not demote it),
    # and every row ends on some worker's last word, never pending.
    expected_indexed = {u for part in slices for i, u in enumerate(part) if i % 3 != 0}
    records = catalog.list_videos(limit=100)
    assert {r.uri for r in records} == set(uris)
    assert {r.uri for r in records if r.status is VideoStatus.INDEXED} == expected_indexed
    assert {r.uri for r in records if r.location is not None} == expected_indexed
    assert all(r.status is VideoStatus.FAILED for r in records if r.uri not in expected_indexed)
    catalog.close()


def test_a_changed_source_is_reindexed_and_its_old_token_set_stays_until_replaced(
    catalog_url: str,
) -> None:
    """Issue 13: sources listed with fingerprints; a changed one needs indexing again, becomes
    pending, and `locate` keeps returning its old token set until the new one is recorded."""
    catalog = Catalog(catalog_url)
    a, b, c, d = (f"s3://v/{name}.mp4" for name in "abcd")
    listed = {a: "etag:1", b: "etag:1", c: None, d: "etag:1"}
    assert catalog.needs_indexing(listed, MODEL, CONFIG) == [a, b, c, d]
    catalog.register_pending(listed, MODEL, CONFIG, fingerprints=listed)
    catalog.record_indexed(
        [
            IndexedVideo(a, "sha256:a", _location(a, file="a1"), source_fingerprint="etag:1"),
            IndexedVideo(b, "sha256:b", _location(b), source_fingerprint="etag:1"),
            IndexedVideo(c, "sha256:c", _location(c)),
            IndexedVideo(d, "sha256:d", _location(d)),  # recorded without a fingerprint
        ]
    )
    assert catalog.get_video(video_id_for(a)).source_fingerprint == "etag:1"
    assert catalog.needs_indexing(listed, MODEL, CONFIG) == [d]  # d: nothing vouches for it
    assert catalog.needs_indexing({a: None, c: None}, MODEL, CONFIG) == []  # unknown: done
    assert catalog.not_indexed([a, b, c, d], MODEL, CONFIG) == []  # callers without fingerprints

    relisted = {a: "etag:2", b: "etag:1", c: "local:7:1"}
    assert catalog.needs_indexing(relisted, MODEL, CONFIG) == [a, c]
    assert catalog.needs_indexing(relisted, MODEL, "cfg-other") == [a, b, c]
    catalog.register_pending([a, b, c], MODEL, CONFIG, fingerprints=relisted)
    old = _location(a, file="a1")
    a_id = video_id_for(a)
    record = catalog.get_video(a_id, MODEL, CONFIG)
    assert record.status is VideoStatus.PENDING and record.location == old
    assert record.source_fingerprint == "etag:1"  # the token set's, until it is replaced
    assert catalog.get_video(video_id_for(b)).status is VideoStatus.INDEXED  # unchanged
    assert catalog.locate(a_id, MODEL, CONFIG) == old

    catalog.record_failed(a, MODEL, CONFIG, "decode error")  # the new version fails
    assert catalog.get_video(a_id).status is VideoStatus.FAILED
    assert catalog.locate(a_id) == old  # still served
    assert catalog.needs_indexing(relisted, MODEL, CONFIG) == [c]
    assert catalog.needs_indexing(relisted, MODEL, CONFIG, retry_failed=True) == [a, c]

    new = _location(a, file="a2")
    catalog.record_indexed([IndexedVideo(a, "sha256:a2", new, source_fingerprint="etag:2")])
    assert catalog.locate(a_id) == new
    record = catalog.get_video(a_id)
    assert record.status is VideoStatus.INDEXED and record.source_fingerprint == "etag:2"
    assert catalog.needs_indexing(relisted, MODEL, CONFIG) == [c]
    catalog.close()


def test_fingerprints_are_validated(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    for bad in ("", "x" * 257, 12):
        with pytest.raises(ValueError, match="fingerprint"):
            catalog.needs_indexing({"s3://v/a.mp4": bad}, MODEL, CONFIG)
        with pytest.raises(ValueError, match="fingerprint"):
            catalog.record_indexed([IndexedVideo("a", "h", _location("a"), source_fingerprint=bad)])
    with pytest.raises(ValueError, match="mapping"):
        catalog.needs_indexing(["s3://v/a.mp4"], MODEL, CONFIG)
    assert catalog.count_videos() == 0
    catalog.close()
