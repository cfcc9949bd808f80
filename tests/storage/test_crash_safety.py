"""A writer killed with SIGKILL at a chosen point leaves no partial token set visible."""

from __future__ import annotations

import multiprocessing
import os
import signal
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from storage_factory import assert_same_token_set, make_token_set

from storage import open_store
from storage.catalog import Catalog
from storage.ids import video_id_for

MODEL_CONFIG = ("test-model", make_token_set(0).config_hash)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _save_killed_mid_file(store_url: str, token_sets: list) -> None:
    """Child: dies while the third row group of the file is being written."""
    original = pq.ParquetWriter.write_table
    calls = []

    def write_table(self, table, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            _kill_self()
        return original(self, table, *args, **kwargs)

    pq.ParquetWriter.write_table = write_table
    open_store(store_url).save(token_sets)


def _save_killed_before_catalog(store_url: str, token_sets: list) -> None:
    """Child: dies after the file is durable, before its catalog rows are written."""
    Catalog.record_indexed = lambda *args, **kwargs: _kill_self()
    open_store(store_url).save(token_sets)


def _run_killed(target, store_url: str, token_sets: list) -> None:
    process = multiprocessing.get_context("fork").Process(
        target=target, args=(store_url, token_sets)
    )
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL


def _assert_nothing_visible(store_url: str, token_sets: list) -> None:
    store = open_store(store_url)
    uris = [ts.source_uri for ts in token_sets]
    assert store.catalog.not_indexed(uris, *MODEL_CONFIG) == uris
    assert store.catalog.referenced_file_urls() == set()
    for ts in token_sets:
        assert store.catalog.locate(video_id_for(ts.source_uri)) is None
    store.catalog.close()


def _rerun_completes(store_url: str, token_sets: list) -> None:
    store = open_store(store_url)
    store.save(token_sets)
    for ts in token_sets:
        assert_same_token_set(ts, store.load(video_id_for(ts.source_uri), *MODEL_CONFIG))
    store.catalog.close()


@pytest.mark.slow
def test_writer_killed_mid_file_leaves_no_visible_token_set(tmp_path: Path) -> None:
    store_url = str(tmp_path / "store")
    token_sets = [make_token_set(seed, hidden=512) for seed in range(5)]
    _run_killed(_save_killed_mid_file, store_url, token_sets)

    leftovers = os.listdir(tmp_path / "store" / "tokensets")
    assert len(leftovers) == 1 and leftovers[0].endswith(".parquet.partial")  # killed mid-file
    _assert_nothing_visible(store_url, token_sets)
    _rerun_completes(store_url, token_sets)
    store = open_store(store_url)
    removed = store.collect_garbage(older_than=timedelta(0))
    assert [os.path.basename(url) for url in removed] == leftovers
    store.catalog.close()


@pytest.mark.slow
def test_writer_killed_before_catalog_leaves_an_orphan_only(tmp_path: Path) -> None:
    store_url = str(tmp_path / "store")
    token_sets = [make_token_set(seed) for seed in range(3)]
    _run_killed(_save_killed_before_catalog, store_url, token_sets)

    (orphan,) = (tmp_path / "store" / "tokensets").iterdir()
    assert pq.read_metadata(orphan).num_row_groups == 3  # complete, durable, but unreferenced
    _assert_nothing_visible(store_url, token_sets)
    store = open_store(store_url)
    assert store.collect_garbage(older_than=timedelta(hours=1)) == []  # too young to collect
    assert store.collect_garbage(older_than=timedelta(0)) == [str(orphan)]
    store.catalog.close()
    _rerun_completes(store_url, token_sets)
