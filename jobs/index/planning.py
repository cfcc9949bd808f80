"""The one planning rule of an indexing run: which listed videos to index now, registered pending.

`register_todo` takes the source's (URI, fingerprint) pairs as a stream
(`jobs.index.sources.iter_sources`) and, in chunks of `PLAN_CHUNK` (every catalog call and its
transaction stay small, and only one chunk of the listing is in memory, whatever the corpus
size), asks the catalog what is still to do (`Catalog.triage`: new, pending or interrupted
videos, indexed ones whose source changed, failed ones with `retry_failed`), marks those pending
under the run WITH the listed fingerprints (a changed source becomes pending again while its old
token set stays readable until the new one is recorded: `Catalog.register_pending`), and spills
them to the run's `TodoFile`. Both indexing paths plan with it: the Ray job
(`jobs.index.job.plan_run`) and the chunked one (`jobs.index.chunks`).

Repeats (a manifest naming a video twice) are dropped without holding the listing: inside a
chunk by the chunk's own dict, across chunks by the catalog, where the first one is already
pending under this run (`Triage.repeated`). Decision: `listed` counts such a repeat once when it
is to be indexed; a repeat of a video that is skipped (indexed, unchanged) is counted as often
as it is named, since telling it apart would need the whole listing (directories, prefixes and
globs never repeat).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from storage import Catalog

# Listed videos per catalog check + pending registration.
PLAN_CHUNK = 10_000
T = TypeVar("T")


class TodoFile:
    """A run's to-do list, (URI, listed fingerprint) per video, spilled to an anonymous temporary
    file (Arrow IPC, one record batch per planning chunk, ~60 bytes a video) while planning and
    streamed back, so the driver never holds it whole (10^6 videos: no list in memory).
    Decision: a local file, not the catalog, because the listed fingerprint of a pending video
    is the run's (it becomes the recorded one only with its token set) and has no column there.
    Deleted when closed (and by the OS if the driver dies)."""

    def __init__(self) -> None:
        import pyarrow as pa

        self._schema = pa.schema([("uri", pa.string()), ("fingerprint", pa.string())])
        # Closed by `close` (the plan's owner), not by a with-block: it lives from planning to
        # the end of the run.
        self._file = tempfile.TemporaryFile(prefix="tokenreel-todo-")  # noqa: SIM115
        self._writer: Any = pa.ipc.new_stream(self._file, self._schema)
        self.count = 0

    def add(self, todo: Sequence[tuple[str, str | None]]) -> None:
        """Append videos to the list (before `rows` is first called)."""
        import pyarrow as pa

        if not todo:
            return
        uris, fingerprints = zip(*todo, strict=True)
        self._writer.write_batch(
            pa.record_batch([pa.array(uris), pa.array(fingerprints)], schema=self._schema)
        )
        self.count += len(todo)

    def rows(self) -> Iterator[tuple[str, str | None]]:
        """The list in the order it was added, one record batch in memory at a time."""
        import pyarrow as pa

        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._file.seek(0)
        for batch in pa.ipc.open_stream(self._file):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class Todo:
    """What a run registered to do: `videos`, (URI, listed fingerprint) in listing order;
    `listed`, the videos the source named; `skipped_failed`, those that failed before and are
    not retried (no `retry_failed`)."""

    videos: TodoFile
    listed: int
    skipped_failed: int


def register_todo(
    catalog: Catalog,
    sources: Iterable[tuple[str, str | None]],
    model_id: str,
    config_hash: str,
    *,
    run_id: str,
    retry_failed: bool,
) -> Todo:
    """Decide what to index of `sources` under (model_id, config_hash) and register it pending
    under `run_id` with its listed fingerprints (see the module docstring). An error half-way
    (a bad manifest entry) raises after what was registered so far; the caller records the
    run's end, so those read interrupted."""
    todo = TodoFile()
    listed = skipped_failed = 0
    try:
        for part in chunked(sources, PLAN_CHUNK):
            found: dict[str, str | None] = {}
            for uri, fingerprint in part:  # a repeat inside the chunk: the first one counts
                found.setdefault(uri, fingerprint)
            triage = catalog.triage(
                found, model_id, config_hash, retry_failed=retry_failed, run_id=run_id
            )
            listed += len(found) - triage.repeated
            skipped_failed += triage.skipped_failed
            catalog.register_pending(
                triage.wanted, model_id, config_hash, run_id=run_id, fingerprints=found
            )
            todo.add([(uri, found[uri]) for uri in triage.wanted])
    except BaseException:
        todo.close()
        raise
    return Todo(todo, listed, skipped_failed)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter), consumed as they are yielded."""
    part: list[T] = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part
