"""Run heartbeats (issue 13, revision 0004): a run not finished whose driver stopped heartbeating
reads as ended, so its pending videos read `interrupted`; runs without heartbeats keep the
`finished_at` rule. On SQLite and PostgreSQL (the `catalog_url` fixture). Timestamps are
explicit, hours away from any boundary: nothing depends on how fast the test runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from storage_factory import migrate_catalog

from storage.catalog import HEARTBEAT_STALE_INTERVALS, Catalog, VideoStatus, create_engine
from storage.ids import video_id_for
from storage.run_states import run_row

MODEL, CONFIG = "model-a", "cfg0000000000001"
HOUR = 3600.0


def _run_with(catalog: Catalog, uri: str, heartbeat: tuple[float, datetime] | None) -> str:
    """A run that registered `uri` pending and last heartbeat (interval_s, at), or never."""
    run_id = catalog.start_run({"source": uri})
    catalog.register_pending([uri], MODEL, CONFIG, run_id=run_id)
    if heartbeat is not None:
        interval_s, at = heartbeat
        catalog.heartbeat(run_id, interval_s, at=at)
    return run_id


def test_a_run_whose_heartbeat_is_too_old_reads_as_ended(catalog_url: str) -> None:
    catalog = Catalog(catalog_url)
    now = datetime.now(timezone.utc)
    limit = timedelta(seconds=HEARTBEAT_STALE_INTERVALS * HOUR)
    legacy = _run_with(catalog, "legacy", None)  # no heartbeat: the finished_at rule alone
    alive = _run_with(catalog, "alive", (HOUR, now - limit + timedelta(minutes=10)))
    dead = _run_with(catalog, "dead", (HOUR, now - limit - timedelta(seconds=1)))

    status = {r.uri: r.status for r in catalog.list_videos(limit=10)}
    assert status == {
        "legacy": VideoStatus.PENDING,
        "alive": VideoStatus.PENDING,  # 3 h 50 min of 4 h: still running
        "dead": VideoStatus.INTERRUPTED,  # 4 h and a second: its driver is gone
    }
    assert catalog.get_video(video_id_for("dead")).status is VideoStatus.INTERRUPTED
    assert [r.uri for r in catalog.list_videos("interrupted", limit=10)] == ["dead"]
    assert sorted(r.uri for r in catalog.list_videos("pending", limit=10)) == ["alive", "legacy"]
    assert (catalog.count_videos("interrupted"), catalog.count_videos("pending")) == (1, 2)
    assert catalog.not_indexed(["dead"], MODEL, CONFIG) == ["dead"]  # a rerun resumes it

    summaries = {s.run_id: s for s in catalog.list_runs()}
    assert summaries[dead].stale and summaries[dead].status_counts == {"interrupted": 1}
    assert not summaries[alive].stale and not summaries[legacy].stale
    assert summaries[dead].heartbeat_at == now - limit - timedelta(seconds=1)
    states = {run_id: run_row(s)["state"] for run_id, s in summaries.items()}
    assert states == {legacy: "running", alive: "running", dead: "interrupted"}

    # A driver that was only stalled beats again: its run reads as running again.
    catalog.heartbeat(dead, HOUR, at=now)
    assert catalog.get_video(video_id_for("dead")).status is VideoStatus.PENDING
    # A finished run stays finished: a late heartbeat changes nothing.
    catalog.finish_run(alive, {"indexed": 0})
    catalog.heartbeat(alive, HOUR, at=now)
    assert catalog.run_summary(alive).heartbeat_at == now - limit + timedelta(minutes=10)
    assert catalog.get_video(video_id_for("alive")).status is VideoStatus.INTERRUPTED
    catalog.close()


@pytest.mark.parametrize("interval", [0, -1.0, float("inf"), float("nan")])
def test_bad_heartbeats_are_refused(catalog_url: str, interval: float) -> None:
    catalog = Catalog(catalog_url)
    run_id = catalog.start_run({})
    with pytest.raises(ValueError):
        catalog.heartbeat(run_id, interval)
    with pytest.raises(ValueError, match="timezone"):
        catalog.heartbeat(run_id, 1.0, at=datetime(2026, 1, 1))  # naive: refused
    catalog.close()


def test_revision_0004_adds_heartbeats_to_runs_recorded_before_it(catalog_url: str) -> None:
    """Upgraded from 0003 with a run and its pending video in place: the run keeps the
    finished_at rule; downgraded (with a status row referencing the run) and up again."""
    migrate_catalog(catalog_url, "0003_chunk_sets")
    engine = create_engine(catalog_url)
    now = datetime.now(timezone.utc)
    meta = sa.MetaData()
    meta.reflect(engine, only=["indexing_runs", "videos", "video_status"])
    runs, videos, status = (meta.tables[n] for n in ("indexing_runs", "videos", "video_status"))
    video_id = video_id_for("old")
    with engine.begin() as conn:
        conn.execute(
            runs.insert().values(
                run_id="r0003", started_at=now - timedelta(days=1), settings_json="{}"
            )
        )
        conn.execute(
            videos.insert().values(video_id=video_id, uri="old", created_at=now, updated_at=now)
        )
        conn.execute(
            status.insert().values(
                video_id=video_id,
                model_id=MODEL,
                config_hash=CONFIG,
                status="pending",
                attempts=0,
                run_id="r0003",
                created_at=now,
                updated_at=now,
            )
        )
    engine.dispose()

    catalog = Catalog(catalog_url)  # upgrades to head on first use
    assert catalog.get_video(video_id).status is VideoStatus.PENDING  # day-old, no beat
    assert catalog.run_summary("r0003").heartbeat_at is None
    catalog.heartbeat("r0003", 1.0, at=now - timedelta(hours=1))
    assert catalog.get_video(video_id).status is VideoStatus.INTERRUPTED
    catalog.close()

    migrate_catalog(catalog_url, "0003_chunk_sets", down=True)
    engine = create_engine(catalog_url)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("indexing_runs")}
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT run_id FROM video_status")).scalars().all()
    engine.dispose()
    assert "heartbeat_at" not in columns and "stale_after" not in columns
    assert kept == ["r0003"]
    catalog = Catalog(catalog_url)  # and up again
    assert catalog.get_video(video_id).status is VideoStatus.PENDING
    catalog.close()
