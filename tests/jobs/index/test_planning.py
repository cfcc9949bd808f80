"""Planning a run on the driver (`jobs.index.job.plan_run`): the listing is streamed in chunks
and the to-do list spilled, so the driver never holds the corpus's list; repeats are found in
the catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import jobs.index.job as job
import jobs.index.planning as planning
from jobs.index.decode import DecodeSettings
from jobs.index.resources import Resources
from storage import VideoStatus, open_store
from storage.catalog import Catalog

MODEL = "tiny-llava-ov"


def plan(source: object, tmp_path: Path, **kwargs: object) -> job.IndexPlan:
    return job.plan_run(
        source,  # type: ignore[arg-type]
        store_url=str(tmp_path / "store"),
        catalog_url=f"sqlite:///{tmp_path}/catalog.sqlite",
        model=MODEL,
        config=None,
        decode=DecodeSettings(num_frames=4),
        batch_size=2,
        retry_failed=False,
        resources=Resources(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_listing_is_consumed_one_chunk_ahead_of_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: planning listed the whole source into a dict before the first catalog call
    (10^6 URIs: hundreds of MB on the driver). Now each chunk is registered before the listing
    goes on: when the catalog first registers, at most one chunk has been read."""
    monkeypatch.setattr(planning, "PLAN_CHUNK", 3)
    consumed: list[str] = []

    def listing() -> Iterator[str]:
        for i in range(10):
            uri = f"s3://bucket/v/{i:02d}.mp4"
            consumed.append(uri)
            yield uri

    registered_after: list[int] = []
    original = Catalog.register_pending

    def spy(self: Catalog, uris: object, *args: object, **kwargs: object) -> list[str]:
        registered_after.append(len(consumed))
        return original(self, uris, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Catalog, "register_pending", spy)
    planned = plan(listing(), tmp_path)
    assert registered_after == [3, 6, 9, 10]
    # The run heartbeats from its start, planning included (a driver killed while planning
    # leaves a run that goes stale, not videos pending forever).
    [run] = planned.catalog.list_runs()
    assert run.heartbeat_at is not None and run.finished_at is None
    assert planned.listed == len(planned.todo) == 10
    assert [uri for uri, _ in planned.todo.rows()] == consumed  # the listing's order
    planned.close()


def test_the_to_do_list_is_spilled_and_streamed_back_in_order() -> None:
    todo = planning.TodoFile()
    todo.add([("s3://b/1.mp4", "etag:1"), ("/v/2.mp4", None)])
    todo.add([])
    todo.add([("/v/3.mp4", "local:9:9")])
    assert len(todo) == 3
    assert list(todo.rows()) == [
        ("s3://b/1.mp4", "etag:1"),
        ("/v/2.mp4", None),
        ("/v/3.mp4", "local:9:9"),
    ]
    assert list(todo.rows()) == list(todo.rows())  # read again from the start
    todo.close()


def test_a_video_named_twice_in_different_chunks_is_planned_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeats are dropped without holding the listing: a later chunk's repeat is found pending
    under this run in the catalog (`Catalog.triage`'s `repeated`)."""
    monkeypatch.setattr(planning, "PLAN_CHUNK", 2)
    manifest = tmp_path / "videos.txt"
    manifest.write_text("s3://b/a.mp4\ns3://b/b.mp4\ns3://b/a.mp4\ns3://b/c.mp4\ns3://b/a.mp4\n")
    planned = plan(str(manifest), tmp_path)
    assert [uri for uri, _ in planned.todo.rows()] == [
        "s3://b/a.mp4",
        "s3://b/b.mp4",
        "s3://b/c.mp4",
    ]
    assert planned.listed == 3
    planned.close()
    # A second run over the same manifest plans the same three: the first run's pending rows are
    # not "repeats" of the second run.
    again = plan(str(manifest), tmp_path)
    assert len(again.todo) == 3 and again.listed == 3
    again.close()


def test_a_bad_manifest_entry_half_way_ends_the_run_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after some chunks were registered: the run records its end, so what it
    registered reads as interrupted (a rerun resumes it) instead of pending forever."""
    monkeypatch.setattr(planning, "PLAN_CHUNK", 2)
    manifest = tmp_path / "videos.txt"
    manifest.write_text("s3://b/a.mp4\ns3://b/b.mp4\ns3://b/c.mp4\ngopher://x/y.mp4\n")
    with pytest.raises(ValueError, match="entry 4: unsupported URI scheme"):
        plan(str(manifest), tmp_path)
    catalog = open_store(str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite").catalog
    videos = catalog.list_videos()
    assert {v.uri for v in videos} == {"s3://b/a.mp4", "s3://b/b.mp4"}
    assert {v.status for v in videos} == {VideoStatus.INTERRUPTED}
    [run] = catalog.list_runs()
    assert run.finished_at is not None


def test_a_manifest_without_a_uri_column_fails_before_the_run_starts(tmp_path: Path) -> None:
    manifest = tmp_path / "videos.csv"
    manifest.write_text("path\n/v/a.mp4\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        plan(str(manifest), tmp_path)
    catalog = open_store(str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite").catalog
    assert catalog.list_runs() == []
