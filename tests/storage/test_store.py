from __future__ import annotations

import os
from pathlib import Path

import pytest
from storage_factory import assert_same_token_set, make_token_set

from compression.config import CompressionConfig
from storage import (
    TokenSetReadError,
    default_catalog_url,
    open_store,
    video_id_for,
    write_token_sets,
)


def test_defaults_are_a_local_store_with_its_sqlite_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENREEL_STORE_URL", raising=False)
    monkeypatch.delenv("TOKENREEL_CATALOG_URL", raising=False)
    store = open_store()
    assert store.store_url == str(tmp_path / "tokenreel-data")
    assert store.catalog.url == f"sqlite:///{tmp_path / 'tokenreel-data' / 'catalog.sqlite'}"
    assert (tmp_path / "tokenreel-data" / "catalog.sqlite").exists()
    store.catalog.close()


def test_a_remote_store_needs_a_catalog_url() -> None:
    with pytest.raises(ValueError, match="give a catalog URL"):
        default_catalog_url("s3://bucket/prefix")


def test_save_then_load_by_video_model_and_config(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    a = make_token_set(0)
    b = make_token_set(0, config=CompressionConfig(retention_ratio=0.05))  # same video
    store.save([a])
    store.save([b], durations_s=[1.5])
    video_id = video_id_for(a.source_uri)
    assert_same_token_set(a, store.load(video_id, a.model_id, a.config_hash))
    assert_same_token_set(b, store.load(video_id))  # most recent when unspecified
    assert store.catalog.get_video(video_id, config_hash=b.config_hash).last_duration_s == 1.5
    with pytest.raises(KeyError, match="no token set"):
        store.load(video_id, "other-model")
    with pytest.raises(KeyError, match="no token set"):
        store.load(video_id_for("s3://never/indexed.mp4"))
    store.catalog.close()


def test_catalog_row_whose_file_is_gone_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    (location,) = store.save([make_token_set(0)])
    os.unlink(location.file_url)
    with pytest.raises(TokenSetReadError, match="file not found") as info:
        store.load(location.video_id)
    assert info.value.file_url == location.file_url
    store.catalog.close()


def test_s3_store_with_a_sql_catalog(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_bucket}/tr", f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    token_sets = [make_token_set(seed) for seed in range(3)]
    locations = store.save(token_sets)
    assert store.catalog.referenced_file_urls() == {locations[0].file_url}
    for ts in token_sets:
        assert_same_token_set(ts, store.load(video_id_for(ts.source_uri), ts.model_id))
    store.catalog.close()


def test_a_replaced_video_keeps_its_old_token_set_until_the_new_one_is_recorded(
    tmp_path: Path,
) -> None:
    store = open_store(str(tmp_path))
    old = make_token_set(0)
    new = make_token_set(1).with_metadata(source_uri=old.source_uri)  # same URI, new bytes
    uri, video_id = old.source_uri, video_id_for(old.source_uri)
    store.save([old], fingerprints=["etag:old"])
    key = (old.model_id, old.config_hash)
    assert store.catalog.needs_indexing({uri: "etag:old"}, *key) == []
    assert store.catalog.needs_indexing({uri: "etag:new"}, *key) == [uri]
    store.catalog.register_pending([uri], *key, fingerprints={uri: "etag:new"})
    write_token_sets(store.store_url, [new])  # durable, not recorded yet (a crash here...)
    assert_same_token_set(old, store.load(video_id, *key))
    assert store.catalog.needs_indexing({uri: "etag:new"}, *key) == [uri]  # ...is retried
    store.save([new], fingerprints=["etag:new"])
    assert_same_token_set(new, store.load(video_id, *key))
    assert store.catalog.needs_indexing({uri: "etag:new"}, *key) == []
    with pytest.raises(ValueError, match="2 fingerprints for 1 token sets"):
        store.save([new], fingerprints=["a", "b"])
    store.catalog.close()
