"""A store: token-set files under one URL and the catalog that indexes them, used together."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from compression.token_set import TokenSet
from storage.catalog import Catalog, IndexedVideo
from storage.token_files import (
    TokenSetLocation,
    collect_orphan_files,
    read_token_set,
    write_token_sets,
)
from storage.urls import is_local, join_url, normalize_store_url

CATALOG_URL_ENV = "TOKENREEL_CATALOG_URL"


def default_catalog_url(store_url: str) -> str:
    """``sqlite:///<store>/catalog.sqlite`` for a local store; a remote store needs an explicit
    catalog URL (a SQLite file on S3 cannot be shared by writers)."""
    store_url = normalize_store_url(store_url)
    if not is_local(store_url):
        raise ValueError(
            f"the store {store_url} is remote: give a catalog URL (or ${CATALOG_URL_ENV}), "
            "e.g. postgresql+psycopg://user@host/db"
        )
    return f"sqlite:///{join_url(store_url, 'catalog.sqlite')}"


@dataclass
class Store:
    """A token-set store and its catalog, used together."""

    store_url: str
    catalog: Catalog

    def save(
        self,
        token_sets: Sequence[TokenSet],
        *,
        run_id: str | None = None,
        durations_s: Sequence[float | None] | None = None,
    ) -> list[TokenSetLocation]:
        """Write `token_sets` to one new file, then record them indexed (in that order, so a
        catalog row never points to a file that is not durable)."""
        durations = list(durations_s) if durations_s is not None else [None] * len(token_sets)
        if len(durations) != len(token_sets):
            raise ValueError(f"{len(durations)} durations for {len(token_sets)} token sets")
        locations = write_token_sets(self.store_url, token_sets)
        self.catalog.record_indexed(
            [
                IndexedVideo.of(ts, loc, d)
                for ts, loc, d in zip(token_sets, locations, durations, strict=True)
            ],
            run_id=run_id,
        )
        return locations

    def load(
        self, video_id: str, model_id: str | None = None, config_hash: str | None = None
    ) -> TokenSet:
        """The token set of `video_id` (most recent one when model/config are None); KeyError when
        the catalog has none, TokenSetReadError when its file cannot be read as expected."""
        location = self.catalog.locate(video_id, model_id, config_hash)
        if location is None:
            raise KeyError(
                f"no token set for video {video_id!r} (model={model_id}, config={config_hash})"
            )
        return read_token_set(
            location, expected_config_hash=config_hash, expected_model_id=model_id
        )

    def collect_garbage(
        self, older_than: timedelta = timedelta(hours=6), *, dry_run: bool = False
    ) -> list[str]:
        """Delete token-set files no catalog row references, older than `older_than`."""
        return collect_orphan_files(
            self.store_url,
            self.catalog.referenced_file_urls(),
            older_than=older_than,
            dry_run=dry_run,
        )


def open_store(store_url: str | None = None, catalog_url: str | None = None) -> Store:
    """The store at `store_url` (default $TOKENREEL_STORE_URL, then ``./tokenreel-data``) with the
    catalog at `catalog_url` (default $TOKENREEL_CATALOG_URL, then `default_catalog_url`)."""
    store_url = normalize_store_url(store_url)
    catalog_url = catalog_url or os.environ.get(CATALOG_URL_ENV) or default_catalog_url(store_url)
    return Store(store_url, Catalog(catalog_url))
