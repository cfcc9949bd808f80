"""Relocatable stores: the catalog keeps paths relative to the store, so a copied, moved or
mirrored store opens where it is (issue 13), and revision 0002 converts catalogs written before.
Every test runs on SQLite and on PostgreSQL (the `catalog_url` fixture)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fsspec
import pytest
import sqlalchemy as sa
from storage_factory import assert_same_token_set, make_token_set, migrate_catalog

from storage import Store, open_store, video_id_for
from storage.catalog import Catalog, IndexedVideo, create_engine
from storage.token_files import write_token_sets

MODEL = "test-model"


def _record_at_revision_0001(catalog_url: str, token_sets: list, locations: list) -> None:
    """Write catalog rows as the code of revision 0001 did: absolute file URLs, no checksum."""
    now = datetime.now(timezone.utc)
    meta = sa.MetaData()
    engine = create_engine(catalog_url)
    meta.reflect(engine, only=["videos", "video_status", "token_sets"])
    videos, status, tokens = (meta.tables[n] for n in ("videos", "video_status", "token_sets"))
    with engine.begin() as conn:
        for i, (ts, loc) in enumerate(zip(token_sets, locations, strict=True)):
            key = {"video_id": loc.video_id, "model_id": MODEL, "config_hash": loc.config_hash}
            at = now + timedelta(seconds=i)
            conn.execute(
                videos.insert().values(
                    video_id=loc.video_id, uri=ts.source_uri, created_at=at, updated_at=at
                )
            )
            conn.execute(
                status.insert().values(
                    **key, status="indexed", attempts=0, created_at=at, updated_at=at
                )
            )
            conn.execute(
                tokens.insert().values(
                    **key,
                    file_url=loc.file_url,
                    row_group=loc.row_group,
                    byte_offset=loc.offset,
                    byte_length=loc.length,
                    footer=loc.footer,
                    kept_count=loc.kept_count,
                    created_at=at,
                )
            )
    engine.dispose()


def _in_store_if_sqlite(catalog_url: str, store: Path) -> str:
    """SQLite: the default catalog inside the store (so a copy carries its own); PostgreSQL: the
    fixture's database, which a copy of the store shares."""
    if catalog_url.startswith("sqlite"):
        return f"sqlite:///{store / 'catalog.sqlite'}"
    return catalog_url


def test_revision_0002_makes_a_catalog_relocatable_and_a_copy_reads_its_own_files(
    catalog_url: str, tmp_path: Path
) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    url = _in_store_if_sqlite(catalog_url, original)
    token_sets = [make_token_set(seed) for seed in range(5)]
    locations = write_token_sets(str(original), token_sets[:3])
    locations += write_token_sets(str(original), token_sets[3:])  # two files
    migrate_catalog(url, "0001_initial")
    _record_at_revision_0001(url, token_sets, locations)

    shutil.copytree(original, copy)  # cp -a store copy
    shutil.rmtree(original)
    copied_url = _in_store_if_sqlite(catalog_url, copy)

    store = open_store(str(copy), None if copied_url.startswith("sqlite") else copied_url)
    assert store.catalog.url == copied_url  # the copy found its own catalog (SQLite)
    for ts, location in zip(token_sets, locations, strict=True):
        found = store.catalog.locate(location.video_id, MODEL, location.config_hash)
        assert found.file_url == str(copy / "tokensets" / Path(location.file_url).name)
        assert found.crc32 is None  # written before 0002: the payload CRC still verifies it
        assert_same_token_set(ts, store.load(location.video_id, MODEL, ts.config_hash))
    assert store.catalog.referenced_file_urls() == {
        str(copy / "tokensets" / Path(loc.file_url).name) for loc in locations
    }
    assert store.collect_garbage(older_than=timedelta(0)) == []  # nothing there is an orphan
    with store.catalog.engine.connect() as conn:
        stored = set(conn.scalars(sa.text("SELECT file_url FROM token_sets")))
    assert stored == {f"tokensets/{Path(loc.file_url).name}" for loc in locations}
    # Opened without a store URL, the catalog resolves against the store that last recorded into
    # it: the original, here (the newest converted row's); a copy must pass its store URL.
    legacy = Catalog(copied_url)
    assert legacy.locate(locations[-1].video_id).file_url == locations[-1].file_url
    legacy.close()
    store.catalog.close()


def test_revision_0002_downgrades_back_to_absolute_urls(catalog_url: str, tmp_path: Path) -> None:
    token_sets = [make_token_set(seed) for seed in range(2)]
    locations = write_token_sets(str(tmp_path / "store"), token_sets)
    migrate_catalog(catalog_url, "0001_initial")
    _record_at_revision_0001(catalog_url, token_sets, locations)
    migrate_catalog(catalog_url, "head")
    migrate_catalog(catalog_url, "0001_initial", down=True)
    engine = create_engine(catalog_url)
    with engine.connect() as conn:
        stored = set(conn.scalars(sa.text("SELECT file_url FROM token_sets")))
    engine.dispose()
    assert stored == {locations[0].file_url}
    catalog = Catalog(catalog_url)  # and up again, as on first use
    assert catalog.locate(locations[1].video_id).file_url == locations[1].file_url
    catalog.close()


def test_a_store_synced_to_s3_opens_there_and_loads_every_token_set(
    catalog_url: str, s3_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "store"
    store = open_store(str(local), catalog_url)
    token_sets = [make_token_set(seed) for seed in range(4)]
    store.save(token_sets[:2])
    store.save(token_sets[2:])
    store.catalog.close()
    s3 = fsspec.filesystem("s3")
    for path in sorted((local / "tokensets").iterdir()):  # the sync: same relative keys
        s3.put_file(str(path), f"{s3_bucket}/mirror/tokensets/{path.name}")
    orphan = f"{s3_bucket}/mirror/tokensets/20200101T000000Z-{'0' * 32}.parquet"
    s3.pipe_file(orphan, b"left over")
    shutil.rmtree(local)

    mirror = open_store(f"s3://{s3_bucket}/mirror", catalog_url=catalog_url)
    for ts in token_sets:
        video_id = video_id_for(ts.source_uri)
        assert mirror.catalog.locate(video_id).file_url.startswith(f"s3://{s3_bucket}/mirror/")
        assert_same_token_set(ts, mirror.load(video_id, ts.model_id, ts.config_hash))
    # Garbage collection on the mirror keeps the mirror's referenced files, removes the orphan.
    assert mirror.collect_garbage(older_than=timedelta(hours=1)) == [f"s3://{orphan}"]
    mirror.catalog.close()


def test_a_catalog_refuses_token_sets_of_another_store(catalog_url: str, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "a"), catalog_url)
    ts = make_token_set(0)
    (elsewhere,) = write_token_sets(str(tmp_path / "b"), [ts])
    with pytest.raises(ValueError, match="not this catalog's"):
        store.catalog.record_indexed([IndexedVideo.of(ts, elsewhere)])
    with pytest.raises(ValueError, match="resolves against"):
        Store(str(tmp_path / "b"), store.catalog)
    with pytest.raises(ValueError, match="not a token-set file URL"):
        store.catalog.record_indexed([IndexedVideo.of(ts, replace(elsewhere, file_url="/x"))])
    assert store.catalog.locate(video_id_for(ts.source_uri)) is None
    store.catalog.close()
