"""The SQL catalog of videos, their indexing status and their token sets (SQLAlchemy 2.x).

One code path for SQLite (the embedded default: WAL, a busy timeout and ``BEGIN IMMEDIATE`` for
writes, so several processes can write one file) and PostgreSQL (production, by URL).

Keys. A video is its `video_id` (derived from its URI, `storage.ids.video_id_for`). Its status
lives per (video_id, model_id, config_hash): a video can be indexed under one compression config
and pending or failed under another. `video_status` and `token_sets` have that triple as primary
key, and every write is an INSERT ... ON CONFLICT (the same statement on both backends), so the
same video under the same model and config exists once however many workers write at once, and
no writer fails because another got there first.

Visibility. A token set is visible once its `token_sets` row exists; `record_indexed` writes it
only for locations that `write_token_sets` returned, i.e. after the file is durable.

Relocatable stores. A `token_sets` row holds the file's path relative to the store root
(``tokensets/<name>.parquet``), never the store's URL, so a store can be copied, moved or mirrored
(e.g. synced to S3) and opened where it is: `Catalog(url, store_url=...)` resolves every location
it returns against `store_url` (`storage.open_store` passes it). A Catalog opened without a store
URL resolves against the store that last recorded token sets into it (`catalog_info`, row
``store_url``, written by `record_indexed`; revision 0002 fills it from the newest converted row):
what callers that predate relocatable stores expect, and wrong for a copy or a mirror, which must
pass `store_url`.

Changed sources. `video_status.source_fingerprint` is the fingerprint (size + mtime of a local
file, ETag of an object; see `list_sources_with_fingerprints` in `jobs.index.sources`) of the
source listed for the indexing that produced the current token set. `needs_indexing` plans a run
from (uri, fingerprint) pairs; `register_pending` with the new fingerprints makes a changed video
pending again; only `record_indexed` writes the new fingerprint, in the transaction that points
the row at the new token set, so until then `locate` returns the old one, still readable.

Interrupted runs. A run records its end (`finish_run`) however it stops: done, Ctrl-C,
SIGTERM, an error (`jobs.index.job`). A video still `pending` under a run that has ended will not
be finished by it: it reads as `interrupted` (`VideoStatus.INTERRUPTED`) in `get_video`,
`list_videos` / `count_videos` (status filter included) and `run_summary`, and a rerun picks it up
like any pending video (`needs_indexing`). Decision: derived at read time, not stored, so there is
no second write that a killed driver could miss; `pending` means a live run still owns the video.

Heartbeats (revision 0004). A driver killed outright (SIGKILL, the OOM killer, a lost node)
records no end. So a driver also refreshes its run's heartbeat every `heartbeat_s` seconds
(`heartbeat`; `jobs.index.heartbeat` runs it in a thread), and a run reads as ended when
`finished_at` is set OR its heartbeat is older than `HEARTBEAT_STALE_INTERVALS` intervals: its
pending videos then read `interrupted` everywhere, and `run_summary` reports it `stale`. Each
heartbeat writes `stale_after` = its time + that many intervals, so the read rule is one
timestamp comparison on both backends (`_RUN_ENDED`). A run without heartbeats (recorded before
0004, or by a writer that does not beat) keeps the `finished_at` rule alone. A stale run whose
driver was only stalled (a long pause, a partitioned database) reads as running again at its
next heartbeat; a rerun meanwhile takes its videos over (`register_pending`), and both writing
the same video is the upsert case every write already handles.
Clock: `heartbeat_at` and `stale_after` are the WRITER's UTC clock; the rule compares them with
the READER's clock. A reader ahead of the writer by more than (`HEARTBEAT_STALE_INTERVALS` - 1)
intervals would read a live run as stale, one behind would notice a dead one that much later;
NTP-synced machines are milliseconds apart, far below the default 30 s interval (the
database server's clock would avoid skew, but SQLite has none apart from the caller's).

Schema versions are Alembic revisions (`storage/migrations`); the schema is created or upgraded
to head on first use, under a lock (SQLite's write lock, PostgreSQL's advisory lock) so
concurrent first users do not race.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from compression.token_set import TokenSet
from storage.ids import validate_uri, validate_video_id, video_id_for
from storage.token_files import TokenSetLocation
from storage.urls import normalize_store_url, resolve_in_store, split_token_file_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The one bound on a failure reason: stored, listed and shown as it is kept here.
MAX_REASON_CHARS = 500
MAX_FINGERPRINT_LENGTH = 256
_CHUNK = 500  # ids per IN (...) query: far below every backend's bound-parameter limit
# A run whose heartbeat is this many intervals old reads as ended (module docstring). Decision:
# 4 tolerates three missed or late heartbeats (a slow or locked database) before a live run is
# taken for dead.
HEARTBEAT_STALE_INTERVALS = 4
_MIGRATION_LOCK_ID = 0x746F6B656E72  # PostgreSQL advisory lock key ("tokenr")


class VideoStatus(str, Enum):
    """A video's status under one (model, config). INTERRUPTED is never stored: it is how a
    stored `pending` reads once the run that registered it has ended: recorded its end, or
    stopped heartbeating (module docstring)."""

    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


metadata = sa.MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

_TS = sa.DateTime(timezone=True)

videos = sa.Table(
    "videos",
    metadata,
    sa.Column("video_id", sa.String(128), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(128), nullable=True),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
)

indexing_runs = sa.Table(
    "indexing_runs",
    metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("started_at", _TS, nullable=False),
    sa.Column("finished_at", _TS, nullable=True),
    sa.Column("settings_json", sa.Text, nullable=False),
    sa.Column("counts_json", sa.Text, nullable=True),
    # Revision 0004: the driver's last heartbeat, its interval, and when the run reads as ended
    # without a newer one (module docstring). NULL: a run without heartbeats.
    sa.Column("heartbeat_at", _TS, nullable=True),
    sa.Column("heartbeat_s", sa.Float, nullable=True),
    sa.Column("stale_after", _TS, nullable=True),
)

video_status = sa.Table(
    "video_status",
    metadata,
    sa.Column(
        "video_id",
        sa.String(128),
        sa.ForeignKey("videos.video_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("model_id", sa.String(256), primary_key=True),
    sa.Column("config_hash", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("indexing_runs.run_id"), nullable=True),
    sa.Column("last_duration_s", sa.Float, nullable=True),
    sa.Column("indexed_at", _TS, nullable=True),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Column("source_fingerprint", sa.String(MAX_FINGERPRINT_LENGTH), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'indexed', 'failed')", name="status"),
    sa.Index(None, "status"),
    sa.Index(None, "run_id"),
)

token_sets = sa.Table(
    "token_sets",
    metadata,
    sa.Column(
        "video_id",
        sa.String(128),
        sa.ForeignKey("videos.video_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("model_id", sa.String(256), primary_key=True),
    sa.Column("config_hash", sa.String(64), primary_key=True),
    sa.Column("file_url", sa.Text, nullable=False),
    sa.Column("row_group", sa.Integer, nullable=False),
    sa.Column("byte_offset", sa.BigInteger, nullable=False),
    sa.Column("byte_length", sa.BigInteger, nullable=False),
    sa.Column("footer", sa.LargeBinary, nullable=False),
    sa.Column("kept_count", sa.Integer, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("crc32", sa.BigInteger, nullable=True),  # NULL: recorded before revision 0002
)

# Chunk token sets of videos indexed in time windows (issue 14; revision 0003): one row per
# window, keyed by the VIDEO's (video_id, model_id, config_hash) and the window's number.
chunk_sets = sa.Table(
    "chunk_sets",
    metadata,
    sa.Column(
        "video_id",
        sa.String(128),
        sa.ForeignKey("videos.video_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("model_id", sa.String(256), primary_key=True),
    sa.Column("config_hash", sa.String(64), primary_key=True),
    sa.Column("window_index", sa.Integer, primary_key=True),
    sa.Column("start_s", sa.Float, nullable=False),
    sa.Column("end_s", sa.Float, nullable=False),
    sa.Column("chunk_config_hash", sa.String(64), nullable=False),
    sa.Column("file_url", sa.Text, nullable=False),
    sa.Column("row_group", sa.Integer, nullable=False),
    sa.Column("byte_offset", sa.BigInteger, nullable=False),
    sa.Column("byte_length", sa.BigInteger, nullable=False),
    sa.Column("footer", sa.LargeBinary, nullable=False),
    sa.Column("kept_count", sa.Integer, nullable=False),
    sa.Column("crc32", sa.BigInteger, nullable=True),
    sa.Column("created_at", _TS, nullable=False),
    sa.CheckConstraint("window_index >= 0", name="window_index"),
    sa.CheckConstraint("start_s >= 0 AND end_s > start_s", name="span"),
)

# Facts about the catalog itself, one row each; today only "store_url" (see the module docstring).
catalog_info = sa.Table(
    "catalog_info",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
_STORE_URL_INFO = "store_url"


@dataclass(frozen=True)
class IndexedVideo:
    """What `Catalog.record_indexed` needs about one successfully indexed video."""

    uri: str
    content_hash: str
    location: TokenSetLocation
    duration_s: float | None = None
    source_fingerprint: str | None = None  # of the source as listed for this indexing

    @classmethod
    def of(
        cls,
        token_set: TokenSet,
        location: TokenSetLocation,
        duration_s: float | None = None,
        source_fingerprint: str | None = None,
    ) -> IndexedVideo:
        return cls(
            token_set.source_uri, token_set.content_hash, location, duration_s, source_fingerprint
        )


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk token set of a video indexed in windows: window `window` (from 0) covers
    [start_s, end_s) seconds of the video; `location` is where its token set is (its own config
    hash, `location.config_hash`, is the chunk config's; `video_config_hash` keys the row)."""

    window: int
    start_s: float
    end_s: float
    video_config_hash: str
    location: TokenSetLocation


@dataclass(frozen=True)
class VideoRecord:
    """One video under one (model_id, config_hash): its status, why it failed, where its tokens are.

    attempts counts failed attempts (`record_failed`); `record_indexed` leaves it unchanged, so
    recording the same success twice changes nothing. location is None while no token set was
    ever recorded (a changed source being re-indexed keeps its old one, status pending/failed).
    source_fingerprint: of the source the token set was made from (None: not recorded).
    """

    video_id: str
    uri: str
    content_hash: str | None
    model_id: str
    config_hash: str
    status: VideoStatus
    error: str | None
    attempts: int
    run_id: str | None
    last_duration_s: float | None
    indexed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    location: TokenSetLocation | None
    source_fingerprint: str | None = None


@dataclass(frozen=True)
class Triage:
    """What `Catalog.triage` made of listed sources: `wanted`, the URIs to index (in order);
    `skipped_failed`, failed before and not retried; `repeated`, already registered by the run
    asking. The rest of the listed URIs are indexed and unchanged."""

    wanted: list[str]
    skipped_failed: int
    repeated: int


@dataclass(frozen=True)
class RunSummary:
    """An indexing run: its settings, the counts its job recorded at the end (`counts`, None while
    running) and the live count of status rows last touched by it (`status_counts`). stale: not
    finished, but its heartbeat is too old (its driver died): it reads as ended (module
    docstring); heartbeat_at: its driver's last heartbeat (None: none recorded)."""

    run_id: str
    started_at: datetime
    finished_at: datetime | None
    settings: dict[str, Any]
    counts: dict[str, int] | None
    status_counts: dict[str, int]
    stale: bool = False
    heartbeat_at: datetime | None = None


class Catalog:
    """The catalog at `url` (``sqlite:///path.sqlite`` or ``postgresql+psycopg://...``) of the
    token-set store at `store_url` (local directory or fsspec URL), against which every returned
    location is resolved; None: the store that last recorded token sets here (module docstring).

    Creates/upgrades the schema on construction. One instance per process (engines must not
    cross a fork); it is thread-safe. Every method validates its inputs (ValueError).
    """

    def __init__(self, url: str, store_url: str | None = None) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"a catalog URL must be a non-empty string, got {url!r}")
        if store_url is not None and (not isinstance(store_url, str) or not store_url.strip()):
            raise ValueError(f"store_url must be None or a non-empty string, got {store_url!r}")
        self.url = url
        self.store_url = None if store_url is None else normalize_store_url(store_url)
        self.engine = create_engine(url)
        self._dialect = self.engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"catalog backend {self._dialect!r} unsupported: sqlite or postgresql")
        upgrade_to_head(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- runs -------------------------------------------------------------------------------
    def start_run(self, settings: Mapping[str, Any]) -> str:
        """Record the start of an indexing run with its settings (JSON-serialisable); its id."""
        run_id = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                indexing_runs.insert().values(
                    run_id=run_id, started_at=_now(), settings_json=_to_json(settings)
                )
            )
        return run_id

    def finish_run(self, run_id: str, counts: Mapping[str, int]) -> None:
        """Record the end of a run with its final counts (e.g. indexed/failed/skipped)."""
        with self._write() as conn:
            result = conn.execute(
                indexing_runs.update()
                .where(indexing_runs.c.run_id == run_id)
                .values(finished_at=_now(), counts_json=_to_json(dict(counts)))
            )
        if result.rowcount != 1:
            raise KeyError(f"unknown indexing run {run_id!r}")

    def heartbeat(self, run_id: str, interval_s: float, *, at: datetime | None = None) -> None:
        """Record that the driver of run `run_id` is alive at `at` (default: now, this machine's
        UTC clock) and will say so again within `interval_s` seconds; without a newer heartbeat
        the run reads as ended `HEARTBEAT_STALE_INTERVALS` intervals later (module docstring).
        A finished run is left as it is."""
        interval_s = check_heartbeat_interval(interval_s)
        at = _now() if at is None else at
        if at.tzinfo is None:
            raise ValueError("a heartbeat time must be timezone-aware")
        with self._write() as conn:
            conn.execute(
                indexing_runs.update()
                .where(indexing_runs.c.run_id == run_id)
                .where(indexing_runs.c.finished_at.is_(None))
                .values(
                    heartbeat_at=at,
                    heartbeat_s=interval_s,
                    stale_after=at + timedelta(seconds=HEARTBEAT_STALE_INTERVALS * interval_s),
                )
            )

    def run_summary(self, run_id: str) -> RunSummary | None:
        """The run `run_id` with live status counts, or None when unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(indexing_runs, _RUN_ENDED.label("run_ended")).where(
                    indexing_runs.c.run_id == run_id
                )
            ).first()
            if row is None:
                return None
            counts = conn.execute(
                sa.select(video_status.c.status, sa.func.count())
                .where(video_status.c.run_id == run_id)
                .group_by(video_status.c.status)
            ).all()
        ended = bool(row.run_ended)
        return RunSummary(
            run_id=row.run_id,
            started_at=_utc(row.started_at),
            finished_at=_utc(row.finished_at),
            settings=json.loads(row.settings_json),
            counts=None if row.counts_json is None else json.loads(row.counts_json),
            status_counts={_read_status(status, ended).value: n for status, n in counts},
            stale=ended and row.finished_at is None,
            heartbeat_at=_utc(row.heartbeat_at),
        )

    def list_runs(self, limit: int = 20, offset: int = 0) -> list[RunSummary]:
        """The most recent runs first."""
        _check_page(limit, offset)
        with self.engine.connect() as conn:
            ids = conn.scalars(
                sa.select(indexing_runs.c.run_id)
                .order_by(indexing_runs.c.started_at.desc(), indexing_runs.c.run_id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [summary for run_id in ids if (summary := self.run_summary(run_id)) is not None]

    # -- indexing status --------------------------------------------------------------------
    def not_indexed(
        self,
        uris: Iterable[str],
        model_id: str,
        config_hash: str,
        *,
        retry_failed: bool = False,
        max_attempts: int | None = None,
    ) -> list[str]:
        """The URIs (input order, duplicates dropped) with no token set yet under this model and
        config: unknown or pending ones, plus failed ones when `retry_failed` (and, with
        `max_attempts`, only those that failed fewer times than that). `needs_indexing` without
        fingerprints: an indexed video is done whatever happened to its source since."""
        by_id = _ids_by_uri(uris)
        return self.needs_indexing(
            dict.fromkeys(by_id),
            model_id,
            config_hash,
            retry_failed=retry_failed,
            max_attempts=max_attempts,
        )

    def needs_indexing(
        self,
        sources: Mapping[str, str | None],
        model_id: str,
        config_hash: str,
        *,
        retry_failed: bool = False,
        max_attempts: int | None = None,
    ) -> list[str]:
        """The URIs of `sources` ({uri: fingerprint}, in order) to index under this model and
        config: unknown or pending ones; indexed ones whose source changed, i.e. whose listed
        fingerprint differs from the one recorded with their token set (a token set recorded
        without a fingerprint counts as changed: nothing vouches for it); failed ones only when
        `retry_failed` (and, with `max_attempts`, only those that failed fewer times than that).
        A None fingerprint means unknown: an indexed video is then done, as in `not_indexed`."""
        return self.triage(
            sources, model_id, config_hash, retry_failed=retry_failed, max_attempts=max_attempts
        ).wanted

    def triage(
        self,
        sources: Mapping[str, str | None],
        model_id: str,
        config_hash: str,
        *,
        retry_failed: bool = False,
        max_attempts: int | None = None,
        run_id: str | None = None,
    ) -> Triage:
        """`needs_indexing`, with what was left out counted: one catalog read of `sources`.

        With `run_id`, a video that run has already registered pending counts as `repeated`, not
        wanted: a URI a manifest names twice, in two of a run's planning chunks, is indexed
        once, and no listing has to be held whole to find such repeats (`jobs.index.job`)."""
        _check_key(model_id, config_hash)
        by_id = _ids_by_uri(_checked_sources(sources))
        rows: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(by_id.values())):
                result = conn.execute(
                    sa.select(
                        video_status.c.video_id,
                        video_status.c.status,
                        video_status.c.attempts,
                        video_status.c.source_fingerprint,
                        video_status.c.run_id,
                    )
                    .where(video_status.c.video_id.in_(chunk))
                    .where(video_status.c.model_id == model_id)
                    .where(video_status.c.config_hash == config_hash)
                )
                rows.update({row.video_id: row for row in result})
        wanted: list[str] = []
        skipped_failed = repeated = 0
        for uri, video_id in by_id.items():
            row = rows.get(video_id)
            if row is None:
                wanted.append(uri)
            elif row.status == VideoStatus.PENDING.value:
                if run_id is not None and row.run_id == run_id:
                    repeated += 1
                else:
                    wanted.append(uri)
            elif row.status == VideoStatus.FAILED.value:
                if retry_failed and (max_attempts is None or row.attempts < max_attempts):
                    wanted.append(uri)
                else:
                    skipped_failed += 1
            elif sources[uri] is not None and row.source_fingerprint != sources[uri]:
                wanted.append(uri)
        return Triage(wanted=wanted, skipped_failed=skipped_failed, repeated=repeated)

    def register_pending(
        self,
        uris: Iterable[str],
        model_id: str,
        config_hash: str,
        *,
        run_id: str | None = None,
        fingerprints: Mapping[str, str | None] | None = None,
    ) -> list[str]:
        """Mark the URIs pending under this model/config (new videos are added); return their ids.

        A failed video becomes pending again (a retry) and keeps its attempts and last error. An
        indexed video stays indexed, unless `fingerprints` ({uri: fingerprint}, as listed) gives
        it a fingerprint other than the one recorded with its token set: its source changed, so
        it becomes pending, and its token set stays where it is (`locate` returns it) until
        `record_indexed` replaces it. Safe to call concurrently with the same URIs.
        """
        _check_key(model_id, config_hash)
        by_id = _ids_by_uri(uris)
        listed = _checked_sources(fingerprints or {})
        changed = [
            {"changed_id": video_id, "fingerprint": listed[uri]}
            for uri, video_id in by_id.items()
            if listed.get(uri) is not None
        ]
        now = _now()
        rows = [
            {"video_id": v, "uri": u, "created_at": now, "updated_at": now}
            for u, v in by_id.items()
        ]
        if not rows:
            return []
        status_rows = [
            {
                "video_id": video_id,
                "model_id": model_id,
                "config_hash": config_hash,
                "status": VideoStatus.PENDING.value,
                "attempts": 0,
                "run_id": run_id,
                "created_at": now,
                "updated_at": now,
            }
            for video_id in by_id.values()
        ]
        insert = self._insert(video_status)
        with self._write() as conn:
            conn.execute(
                self._insert(videos).on_conflict_do_nothing(index_elements=["video_id"]), rows
            )
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=_STATUS_KEY,
                    set_={
                        "status": insert.excluded.status,
                        "run_id": insert.excluded.run_id,
                        "updated_at": insert.excluded.updated_at,
                    },
                    where=video_status.c.status != VideoStatus.INDEXED.value,
                ),
                status_rows,
            )
            if changed:
                conn.execute(
                    video_status.update()
                    .where(video_status.c.video_id == sa.bindparam("changed_id"))
                    .where(video_status.c.model_id == model_id)
                    .where(video_status.c.config_hash == config_hash)
                    .where(video_status.c.status == VideoStatus.INDEXED.value)
                    .where(
                        video_status.c.source_fingerprint.is_distinct_from(
                            sa.bindparam("fingerprint")
                        )
                    )
                    .values(status=VideoStatus.PENDING.value, run_id=run_id, updated_at=now),
                    changed,
                )
        return list(by_id.values())

    def record_indexed(self, entries: Sequence[IndexedVideo], *, run_id: str | None = None) -> None:
        """Make the token sets at `entries[i].location` the indexed token sets of their videos.

        Call only with locations `write_token_sets` returned (the files are durable), all in one
        store: this catalog's `store_url` when it has one (ValueError otherwise). Each entry's
        `source_fingerprint` becomes the recorded fingerprint of its video. Idempotent; a later
        call for the same (video, model, config) replaces the location (the old file is then an
        orphan for `collect_orphan_files`). All entries land in one transaction.
        """
        if not entries:
            return
        with self._write() as conn:
            self._record_indexed_in(conn, entries, run_id)

    def record_chunks(
        self,
        video: IndexedVideo,
        chunks: Sequence[ChunkRecord],
        *,
        run_id: str | None = None,
        all_windows: bool = False,
    ) -> None:
        """Record chunk sets of a video and its (new) video-level token set in ONE transaction,
        so that the video-level set always stands for exactly the chunks recorded (a follower
        killed in between loses both, never one: issue 14's "never recorded twice").

        `video` as for `record_indexed` (its `source_fingerprint` is recorded with it); each
        chunk's row is keyed by the video's (video_id, model_id, config_hash) and its window;
        recording a window again replaces its row. `all_windows`: `chunks` are ALL the video's
        chunks (a whole video indexed, or re-indexed after its source changed), so the rows of
        any other window of that key are deleted in the same transaction: a re-index with fewer
        windows leaves no stale chunk, and until it commits the old rows are what readers see.
        Without it (a follower appending chunks) the other windows' rows stay.
        """
        location = video.location
        rows = []
        now = _now()
        for chunk in chunks:
            if not isinstance(chunk.window, int) or chunk.window < 0:
                raise ValueError(f"a window number is an integer >= 0, got {chunk.window!r}")
            if not 0 <= chunk.start_s < chunk.end_s:
                raise ValueError(f"need 0 <= start < end, got {chunk.start_s}, {chunk.end_s}")
            if chunk.location.video_id != location.video_id:
                raise ValueError("chunk sets of another video than the video-level set")
            rows.append(
                {
                    "video_id": location.video_id,
                    "model_id": location.model_id,
                    "config_hash": location.config_hash,
                    "window_index": chunk.window,
                    "start_s": float(chunk.start_s),
                    "end_s": float(chunk.end_s),
                    "chunk_config_hash": chunk.location.config_hash,
                    "file_url": split_token_file_url(chunk.location.file_url)[1],
                    "row_group": chunk.location.row_group,
                    "byte_offset": chunk.location.offset,
                    "byte_length": chunk.location.length,
                    "footer": chunk.location.footer,
                    "kept_count": chunk.location.kept_count,
                    "crc32": chunk.location.crc32,
                    "created_at": now,
                }
            )
        self._store_of([video, *(IndexedVideo(video.uri, "", c.location) for c in chunks)])
        with self._write() as conn:
            self._record_indexed_in(conn, [video], run_id)
            if all_windows:
                conn.execute(
                    chunk_sets.delete()
                    .where(chunk_sets.c.video_id == location.video_id)
                    .where(chunk_sets.c.model_id == location.model_id)
                    .where(chunk_sets.c.config_hash == location.config_hash)
                    .where(chunk_sets.c.window_index.not_in([row["window_index"] for row in rows]))
                )
            if rows:
                self._upsert(
                    conn,
                    chunk_sets,
                    rows,
                    [*_STATUS_KEY, "window_index"],
                    [name for name in rows[0] if name not in (*_STATUS_KEY, "window_index")],
                )

    def list_chunks(
        self,
        video_id: str,
        model_id: str,
        config_hash: str,
        *,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> list[ChunkRecord]:
        """The chunk sets of a video under a (model, video config), in window order; with
        start_s / end_s, only those overlapping [start_s, end_s] (a chunk [a, b) overlaps when
        a < end_s and b > start_s)."""
        _check_key(model_id, config_hash)
        query = _filtered(
            sa.select(chunk_sets), chunk_sets, validate_video_id(video_id), model_id, config_hash
        )
        if end_s is not None:
            query = query.where(chunk_sets.c.start_s < float(end_s))
        if start_s is not None:
            query = query.where(chunk_sets.c.end_s > float(start_s))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(chunk_sets.c.window_index)).all()
            root = self._store_root(conn) if rows else ""
        return [
            ChunkRecord(
                window=row.window_index,
                start_s=row.start_s,
                end_s=row.end_s,
                video_config_hash=row.config_hash,
                location=_location(row, root, config_hash=row.chunk_config_hash),
            )
            for row in rows
        ]

    def _record_indexed_in(
        self, conn: Connection, entries: Sequence[IndexedVideo], run_id: str | None
    ) -> None:
        """`record_indexed`'s writes, inside the caller's write transaction."""
        now = _now()
        store_url = self._store_of(entries)
        video_rows, status_rows, token_rows = [], [], []
        # The last entry per key wins: one statement must not update the same row twice.
        latest = {
            (e.location.video_id, e.location.model_id, e.location.config_hash): e for e in entries
        }
        for entry in latest.values():
            location = entry.location
            video_id = validate_video_id(location.video_id)
            _check_key(location.model_id, location.config_hash)
            key = {
                "video_id": video_id,
                "model_id": location.model_id,
                "config_hash": location.config_hash,
            }
            video_rows.append(
                {
                    "video_id": video_id,
                    "uri": validate_uri(entry.uri),
                    "content_hash": entry.content_hash or None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            status_rows.append(
                {
                    **key,
                    "status": VideoStatus.INDEXED.value,
                    "error": None,
                    "attempts": 0,
                    "run_id": run_id,
                    "last_duration_s": entry.duration_s,
                    "indexed_at": now,
                    "created_at": now,
                    "updated_at": now,
                    "source_fingerprint": _checked_fingerprint(entry.source_fingerprint),
                }
            )
            token_rows.append(
                {
                    **key,
                    "file_url": split_token_file_url(location.file_url)[1],
                    "row_group": location.row_group,
                    "byte_offset": location.offset,
                    "byte_length": location.length,
                    "footer": location.footer,
                    "kept_count": location.kept_count,
                    "created_at": now,
                    "crc32": location.crc32,
                }
            )
        if self._recorded_store(conn) != store_url:  # a read, so writers rarely contend on it
            self._upsert(
                conn,
                catalog_info,
                [{"name": _STORE_URL_INFO, "value": store_url}],
                ["name"],
                ["value"],
            )
        self._upsert(conn, videos, video_rows, ["video_id"], ["uri", "content_hash", "updated_at"])
        self._upsert(
            conn,
            video_status,
            status_rows,
            _STATUS_KEY,
            [
                "status",
                "error",
                "run_id",
                "last_duration_s",
                "indexed_at",
                "updated_at",
                "source_fingerprint",
            ],
        )
        self._upsert(
            conn,
            token_sets,
            token_rows,
            _STATUS_KEY,
            [
                "file_url",
                "row_group",
                "byte_offset",
                "byte_length",
                "footer",
                "kept_count",
                "created_at",
                "crc32",
            ],
        )

    def record_failed(
        self,
        uri: str,
        model_id: str,
        config_hash: str,
        reason: str,
        *,
        run_id: str | None = None,
        duration_s: float | None = None,
    ) -> None:
        """Mark the video failed under this model/config with `reason`; attempts += 1.

        A video already indexed under this key stays indexed (a failed duplicate attempt by a
        concurrent worker must not hide a good token set); only its attempts count grows.
        """
        _check_key(model_id, config_hash)
        video_id = video_id_for(uri)
        now = _now()
        error = str(reason)[:MAX_REASON_CHARS]
        insert = self._insert(video_status).values(
            video_id=video_id,
            model_id=model_id,
            config_hash=config_hash,
            status=VideoStatus.FAILED.value,
            error=error,
            attempts=1,
            run_id=run_id,
            last_duration_s=duration_s,
            created_at=now,
            updated_at=now,
        )
        not_indexed = video_status.c.status != VideoStatus.INDEXED.value
        with self._write() as conn:
            conn.execute(
                self._insert(videos)
                .values(video_id=video_id, uri=uri, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["video_id"])
            )
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=_STATUS_KEY,
                    set_={
                        "attempts": video_status.c.attempts + 1,
                        "status": sa.case(
                            (not_indexed, insert.excluded.status), else_=video_status.c.status
                        ),
                        "error": sa.case(
                            (not_indexed, insert.excluded.error), else_=video_status.c.error
                        ),
                        "run_id": insert.excluded.run_id,
                        "last_duration_s": insert.excluded.last_duration_s,
                        "updated_at": insert.excluded.updated_at,
                    },
                )
            )

    # -- lookups ----------------------------------------------------------------------------
    def locate(
        self, video_id: str, model_id: str | None = None, config_hash: str | None = None
    ) -> TokenSetLocation | None:
        """Where the token set of `video_id` is (for this model/config; when either is None, the
        most recently written matching one), or None when there is none."""
        query = _filtered(
            sa.select(token_sets), token_sets, validate_video_id(video_id), model_id, config_hash
        )
        with self.engine.connect() as conn:
            row = conn.execute(
                query.order_by(token_sets.c.created_at.desc(), token_sets.c.config_hash).limit(1)
            ).first()
            return None if row is None else _location(row, self._store_root(conn))

    def get_video(
        self, video_id: str, model_id: str | None = None, config_hash: str | None = None
    ) -> VideoRecord | None:
        """The video with its status under this model/config, or None when unknown.

        When model_id/config_hash are None and several statuses match, an indexed one wins
        (the most recently updated), else the most recently updated one (e.g. failed + reason).
        """
        query = _filtered(
            _RECORD_QUERY, video_status, validate_video_id(video_id), model_id, config_hash
        )
        indexed_first = sa.case((video_status.c.status == VideoStatus.INDEXED.value, 0), else_=1)
        with self.engine.connect() as conn:
            row = conn.execute(
                query.order_by(indexed_first, video_status.c.updated_at.desc()).limit(1)
            ).first()
            if row is None:
                return None
            return _record(row, None if row.file_url is None else self._store_root(conn))

    def list_videos(
        self,
        status: VideoStatus | str | None = None,
        search: str | None = None,
        *,
        model_id: str | None = None,
        config_hash: str | None = None,
        limit: int = 100,
        offset: int = 0,
        search_uris: bool = True,
    ) -> list[VideoRecord]:
        """Status rows (one per video/model/config), most recently updated first.

        status filters on pending/indexed/failed/interrupted; search is a case-insensitive
        substring of the URI or the video id (no wildcards: % and _ match themselves); of the id
        only when `search_uris` is False (a server that does not show URIs must not let a search
        probe them).
        """
        _check_page(limit, offset)
        query = self._listing(
            _RECORD_QUERY, status, search, model_id, config_hash, search_uris=search_uris
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                query.order_by(
                    video_status.c.updated_at.desc(),
                    video_status.c.video_id,
                    video_status.c.model_id,
                    video_status.c.config_hash,
                )
                .limit(limit)
                .offset(offset)
            ).all()
            has_location = any(row.file_url is not None for row in rows)
            root = self._store_root(conn) if has_location else None
        return [_record(row, root) for row in rows]

    def count_videos(
        self,
        status: VideoStatus | str | None = None,
        search: str | None = None,
        *,
        model_id: str | None = None,
        config_hash: str | None = None,
        search_uris: bool = True,
    ) -> int:
        """How many rows `list_videos` would page through with the same filters."""
        base = sa.select(sa.func.count()).select_from(_STATUS_ROWS)
        query = self._listing(base, status, search, model_id, config_hash, search_uris=search_uris)
        with self.engine.connect() as conn:
            return int(conn.scalar(query))

    def referenced_file_urls(self, store_url: str | None = None) -> set[str]:
        """Every token-set file a catalog row points to, as a URL in the store at `store_url`
        (default: the one this catalog resolves against): what garbage collection there keeps."""
        with self.engine.connect() as conn:
            paths = set(conn.scalars(sa.select(token_sets.c.file_url).distinct()))
            paths |= set(conn.scalars(sa.select(chunk_sets.c.file_url).distinct()))
            if not paths:
                return set()
            root = normalize_store_url(store_url) if store_url else self._store_root(conn)
        return {resolve_in_store(root, path) for path in paths}

    # -- internals --------------------------------------------------------------------------
    def _store_root(self, conn: Connection) -> str:
        """The store URL the relative paths of the rows resolve against."""
        if self.store_url is not None:
            return self.store_url
        recorded = self._recorded_store(conn)
        if recorded is None:
            raise ValueError(
                f"the catalog {self.url} records no store: open it with Catalog(url, store_url=...)"
            )
        return recorded

    @staticmethod
    def _recorded_store(conn: Connection) -> str | None:
        """The store that last recorded token sets here (None before the first)."""
        return conn.scalar(
            sa.select(catalog_info.c.value).where(catalog_info.c.name == _STORE_URL_INFO)
        )

    def _store_of(self, entries: Sequence[IndexedVideo]) -> str:
        """The one store the files of `entries` are in (this catalog's, when it has one)."""
        stores = {split_token_file_url(e.location.file_url)[0] for e in entries}
        if len(stores) != 1:
            raise ValueError(f"token sets from several stores in one call: {sorted(stores)}")
        (store,) = stores
        if self.store_url is not None and store != self.store_url:
            raise ValueError(
                f"token sets in the store {store}, not this catalog's {self.store_url}"
            )
        return store

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so writers queue on the busy timeout
        instead of failing when a read transaction would have to upgrade)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(tokenreel_write=True)
            with conn.begin():
                yield conn

    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def _upsert(
        self,
        conn: Connection,
        table: sa.Table,
        rows: list[dict[str, Any]],
        key: list[str],
        update: list[str],
    ) -> None:
        insert = self._insert(table)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=key, set_={name: insert.excluded[name] for name in update}
            ),
            rows,
        )

    @staticmethod
    def _listing(
        query: sa.Select,
        status: VideoStatus | str | None,
        search: str | None,
        model_id: str | None,
        config_hash: str | None,
        *,
        search_uris: bool = True,
    ) -> sa.Select:
        if status is not None:
            wanted = VideoStatus(status)
            stored = VideoStatus.PENDING if wanted == VideoStatus.INTERRUPTED else wanted
            query = query.where(video_status.c.status == stored.value)
            if wanted == VideoStatus.INTERRUPTED:
                query = query.where(_RUN_ENDED)
            elif wanted == VideoStatus.PENDING:
                query = query.where(sa.not_(_RUN_ENDED))
        if search:
            needle = search.lower()
            matches = [sa.func.lower(videos.c.video_id).contains(needle, autoescape=True)]
            if search_uris:
                matches.append(sa.func.lower(videos.c.uri).contains(needle, autoescape=True))
            query = query.where(sa.or_(*matches))
        if model_id is not None:
            query = query.where(video_status.c.model_id == model_id)
        if config_hash is not None:
            query = query.where(video_status.c.config_hash == config_hash)
        return query


_STATUS_KEY = ["video_id", "model_id", "config_hash"]

# Status rows with their video and the run that last touched them (whose end makes a pending
# row read as interrupted).
_STATUS_ROWS = video_status.join(videos).outerjoin(
    indexing_runs, video_status.c.run_id == indexing_runs.c.run_id
)

# THE rule of a run's end (module docstring): finished, or its heartbeat is stale at the reader's
# now (evaluated when the statement runs). Never NULL, also for a row without a run (outer join):
# each branch is false there, so NOT(...) selects the pending rows of live runs.
_RUN_ENDED = sa.or_(
    indexing_runs.c.finished_at.is_not(None),
    sa.and_(
        indexing_runs.c.stale_after.is_not(None),
        indexing_runs.c.stale_after
        < sa.bindparam("reader_now", callable_=lambda: _now(), type_=_TS),
    ),
)

_RECORD_QUERY = sa.select(
    video_status,
    _RUN_ENDED.label("run_ended"),
    videos.c.uri,
    videos.c.content_hash,
    token_sets.c.file_url,
    token_sets.c.row_group,
    token_sets.c.byte_offset,
    token_sets.c.byte_length,
    token_sets.c.footer,
    token_sets.c.kept_count,
    token_sets.c.crc32,
).select_from(
    _STATUS_ROWS.outerjoin(
        token_sets,
        sa.and_(*(video_status.c[name] == token_sets.c[name] for name in _STATUS_KEY)),
    )
)


def _filtered(
    query: sa.Select, table: sa.Table, video_id: str, model_id: str | None, config_hash: str | None
) -> sa.Select:
    query = query.where(table.c.video_id == video_id)
    if model_id is not None:
        query = query.where(table.c.model_id == model_id)
    if config_hash is not None:
        query = query.where(table.c.config_hash == config_hash)
    return query


def _read_status(stored: str, run_ended: bool) -> VideoStatus:
    """A stored status as it reads: pending under a run that has ended is interrupted."""
    status = VideoStatus(stored)
    return VideoStatus.INTERRUPTED if status == VideoStatus.PENDING and run_ended else status


def _location(row: Any, store_url: str, config_hash: str | None = None) -> TokenSetLocation:
    return TokenSetLocation(
        file_url=resolve_in_store(store_url, row.file_url),
        row_group=row.row_group,
        offset=row.byte_offset,
        length=row.byte_length,
        footer=bytes(row.footer),
        video_id=row.video_id,
        model_id=row.model_id,
        config_hash=config_hash or row.config_hash,
        kept_count=row.kept_count,
        crc32=row.crc32,
    )


def _record(row: Any, store_url: str | None) -> VideoRecord:
    return VideoRecord(
        video_id=row.video_id,
        uri=row.uri,
        content_hash=row.content_hash,
        model_id=row.model_id,
        config_hash=row.config_hash,
        status=_read_status(row.status, bool(row.run_ended)),
        error=row.error,
        attempts=row.attempts,
        run_id=row.run_id,
        last_duration_s=row.last_duration_s,
        indexed_at=_utc(row.indexed_at),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        location=None if row.file_url is None else _location(row, store_url),
        source_fingerprint=row.source_fingerprint,
    )


# -- engine and schema ----------------------------------------------------------------------------

_upgrade_lock = threading.Lock()


def create_engine(url: str) -> Engine:
    """An engine for the catalog at `url` (SQLite: WAL, busy timeout, BEGIN IMMEDIATE on writes)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit transactions cannot be IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("tokenreel_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def upgrade_to_head(engine: Engine) -> None:
    """Create the schema, or upgrade it to the newest Alembic revision, under a lock."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _upgrade_lock, engine.connect() as conn:
        conn = conn.execution_options(tokenreel_write=True)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_ID}
                )
            config.attributes["connection"] = conn
            command.upgrade(config, "head")


# -- small helpers --------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _to_json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc


def _check_key(model_id: str, config_hash: str) -> None:
    if not isinstance(model_id, str) or not model_id or len(model_id) > 256:
        raise ValueError(
            f"model_id must be a non-empty string of <= 256 characters, got {model_id!r}"
        )
    if not isinstance(config_hash, str) or not config_hash or len(config_hash) > 64:
        raise ValueError(
            f"config_hash must be a non-empty string of <= 64 characters, got {config_hash!r}"
        )


def check_heartbeat_interval(heartbeat_s: object) -> float:
    """`heartbeat_s` as seconds when it is a usable interval (a positive, finite number, not a
    bool); else ValueError (the driver checks it before it records a run)."""
    if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, (int, float)):
        raise ValueError(f"heartbeat_s must be a number of seconds, got {heartbeat_s!r}")
    if not 0 < heartbeat_s < float("inf"):
        raise ValueError(f"heartbeat_s must be positive and finite, got {heartbeat_s!r}")
    return float(heartbeat_s)


def _check_page(limit: int, offset: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit must be an integer in [1, 10000], got {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


def _checked_fingerprint(fingerprint: object) -> str | None:
    if fingerprint is None:
        return None
    if not isinstance(fingerprint, str) or not 1 <= len(fingerprint) <= MAX_FINGERPRINT_LENGTH:
        raise ValueError(
            f"a source fingerprint must be None or a string of 1-{MAX_FINGERPRINT_LENGTH} "
            f"characters, got {fingerprint!r}"
        )
    return fingerprint


def _checked_sources(sources: Mapping[str, str | None]) -> Mapping[str, str | None]:
    """`sources` ({uri: fingerprint}) with every fingerprint checked."""
    if not isinstance(sources, Mapping):
        raise ValueError(f"expected a mapping {{uri: fingerprint}}, got {type(sources).__name__}")
    for fingerprint in sources.values():
        _checked_fingerprint(fingerprint)
    return sources


def _ids_by_uri(uris: Iterable[str]) -> dict[str, str]:
    """{uri: video_id} in input order, duplicates dropped; ValueError on an invalid URI."""
    if isinstance(uris, str):
        raise ValueError("expected a collection of URIs, got one string")
    return {uri: video_id_for(uri) for uri in uris}


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
