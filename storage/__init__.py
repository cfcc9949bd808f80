"""storage: token-set files (Parquet on a local directory or any fsspec URL) and the SQL catalog.

    store = open_store("s3://bucket/prefix", "postgresql+psycopg://...")   # or open_store()
    locations = store.save(token_sets, run_id=run_id)     # file durable first, then catalog rows
    token_set = store.load(video_id, model_id, config_hash)

The catalog keeps file paths relative to the store, so a store can be copied, moved or synced to
S3 and opened where it now is: ``open_store("/copy")`` (its own ``/copy/catalog.sqlite``) or
``open_store("s3://bucket/mirror", catalog_url=...)`` reads the files there.

The pieces, for finer control: `storage.token_files` (write_token_sets, read_token_set,
collect_orphan_files), `storage.catalog` (Catalog), `storage.ids` (video_id_for), `storage.urls`
(store URLs), `storage.store` (Store, open_store).

The names below load on first use: a process that needs only `storage.ids` or `storage.urls` (a
decode worker) does not pay for pyarrow, SQLAlchemy and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CATALOG_URL_ENV": "storage.store",
    "DEFAULT_STORE_URL": "storage.urls",
    "Catalog": "storage.catalog",
    "IndexedVideo": "storage.catalog",
    "Store": "storage.store",
    "TokenSetLocation": "storage.token_files",
    "TokenSetReadError": "storage.token_files",
    "VideoRecord": "storage.catalog",
    "VideoStatus": "storage.catalog",
    "default_catalog_url": "storage.store",
    "open_store": "storage.store",
    "read_token_set": "storage.token_files",
    "validate_video_id": "storage.ids",
    "video_id_for": "storage.ids",
    "write_token_sets": "storage.token_files",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
