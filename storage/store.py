"""A store: token-set files under one URL and the catalog that indexes them, used together.

The catalog keeps file paths relative to the store, so a store can be copied, moved or synced to
S3 and opened where it now is: ``open_store("/copy")`` (its own ``/copy/catalog.sqlite``) or
``open_store("s3://bucket/mirror", catalog_url=...)`` reads the files there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from compression.token_set import TokenSet
from storage.catalog import Catalog, ChunkRecord, IndexedVideo
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
    """A token-set store and its catalog, used together (the catalog resolves its locations
    against this store: `open_store` opens it so)."""

    store_url: str
    catalog: Catalog

    def __post_init__(self) -> None:
        self.store_url = normalize_store_url(self.store_url)
        if self.catalog.store_url != self.store_url:
            raise ValueError(
                f"the catalog resolves against {self.catalog.store_url}, not the store "
                f"{self.store_url}: open it with Catalog(url, store_url={self.store_url!r})"
            )

    def save(
        self,
        token_sets: Sequence[TokenSet],
        *,
        run_id: str | None = None,
        durations_s: Sequence[float | None] | None = None,
        fingerprints: Sequence[str | None] | None = None,
    ) -> list[TokenSetLocation]:
        """Write `token_sets` to one new file, then record them indexed (in that order, so a
        catalog row never points to a file that is not durable), each with its duration and the
        fingerprint its source was listed with (`fingerprints[i]`, None when unknown)."""
        durations = _per_token_set(durations_s, token_sets, "durations")
        listed = _per_token_set(fingerprints, token_sets, "fingerprints")
        locations = write_token_sets(self.store_url, token_sets)
        self.catalog.record_indexed(
            [
                IndexedVideo.of(ts, loc, d, f)
                for ts, loc, d, f in zip(token_sets, locations, durations, listed, strict=True)
            ],
            run_id=run_id,
        )
        return locations

    def save_chunks(
        self,
        video_set: TokenSet,
        chunks: Sequence[tuple[int, float, float, TokenSet]],
        *,
        run_id: str | None = None,
        duration_s: float | None = None,
        fingerprint: str | None = None,
        all_windows: bool = False,
    ) -> TokenSetLocation:
        """Write new chunk sets ((window, start_s, end_s, token set) each) and the video-level
        set that now stands for all of the video's chunks into one new file, then record them in
        one catalog transaction (`Catalog.record_chunks`, with the fingerprint the source was
        listed with); the video-level set's location. `all_windows`: these are all the video's
        chunks, the rows of other windows go (a re-indexed video, `Catalog.record_chunks`)."""
        locations = write_token_sets(self.store_url, [video_set, *(c[3] for c in chunks)])
        self.catalog.record_chunks(
            IndexedVideo.of(video_set, locations[0], duration_s, fingerprint),
            [
                ChunkRecord(window, start, end, video_set.config_hash, location)
                for (window, start, end, _), location in zip(chunks, locations[1:], strict=True)
            ],
            run_id=run_id,
            all_windows=all_windows,
        )
        return locations[0]

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
            self.catalog.referenced_file_urls(self.store_url),
            older_than=older_than,
            dry_run=dry_run,
        )


def open_store(store_url: str | None = None, catalog_url: str | None = None) -> Store:
    """The store at `store_url` (default $TOKENREEL_STORE_URL, then ``./tokenreel-data``) with the
    catalog at `catalog_url` (default $TOKENREEL_CATALOG_URL, then `default_catalog_url`)."""
    store_url = normalize_store_url(store_url)
    catalog_url = catalog_url or os.environ.get(CATALOG_URL_ENV) or default_catalog_url(store_url)
    return Store(store_url, Catalog(catalog_url, store_url=store_url))


def _per_token_set(
    values: Sequence[Any] | None, token_sets: Sequence[TokenSet], name: str
) -> list[Any]:
    """`values` as a list with one entry per token set (all None when `values` is None)."""
    if values is None:
        return [None] * len(token_sets)
    if len(values) != len(token_sets):
        raise ValueError(f"{len(values)} {name} for {len(token_sets)} token sets")
    return list(values)
