"""The one planning rule of an indexing run: which listed videos to index now, registered pending.

Given the source's (URI, fingerprint) pairs (`jobs.index.sources.list_sources_with_fingerprints`),
`register_todo` asks the catalog, in chunks of `PLAN_CHUNK` so every catalog call (and its
transaction) stays small whatever the corpus size, what is still to do (`Catalog.needs_indexing`:
new, pending or interrupted videos, indexed ones whose source changed, failed ones with
`retry_failed`) and marks those pending under the run WITH the listed fingerprints, so a changed
source becomes pending again while its old token set stays readable until the new one is
recorded (`Catalog.register_pending`).

The chunked path (`jobs.index.chunks`) plans with it; `jobs.index.job.plan_run` has the same
loop inline (its listing is being reworked for bounded memory) and is meant to call this.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage import Catalog

# Listed videos per catalog check + pending registration.
PLAN_CHUNK = 10_000


@dataclass(frozen=True)
class Todo:
    """What a run registered to do: (URI, listed fingerprint) pairs, in listing order, and how
    many listed videos failed before and are not retried (no `retry_failed`)."""

    videos: list[tuple[str, str | None]]
    skipped_failed: int


def register_todo(
    catalog: Catalog,
    sources: Iterable[tuple[str, str | None]],
    model_id: str,
    config_hash: str,
    *,
    run_id: str,
    retry_failed: bool,
    chunk: int = PLAN_CHUNK,
) -> Todo:
    """Decide what to index of `sources` under (model_id, config_hash) and register it pending
    under `run_id` with its listed fingerprints (see the module docstring)."""
    videos: list[tuple[str, str | None]] = []
    skipped_failed = 0
    for part in _chunked(sources, chunk):
        listed = dict(part)
        wanted = catalog.needs_indexing(listed, model_id, config_hash, retry_failed=retry_failed)
        if not retry_failed:
            failed = catalog.needs_indexing(listed, model_id, config_hash, retry_failed=True)
            skipped_failed += len(failed) - len(wanted)
        catalog.register_pending(wanted, model_id, config_hash, run_id=run_id, fingerprints=listed)
        videos.extend((uri, listed[uri]) for uri in wanted)
    return Todo(videos, skipped_failed)


def _chunked(items: Iterable[tuple[str, str | None]], size: int) -> Iterator[list]:
    part: list[tuple[str, str | None]] = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part
