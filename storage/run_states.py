"""Runs as people and scripts see them: a run's state (running, finished, interrupted) and
counts as plain JSON values, and which pending videos an interrupted run left behind. Shared by
`tokenreel runs`/`videos` and the HTTP API (`GET /v1/runs`, the console)."""

from __future__ import annotations

from typing import Any

from storage.catalog import Catalog, RunSummary, VideoRecord, VideoStatus


def run_row(summary: RunSummary) -> dict[str, Any]:
    """A run as plain JSON values: state running / finished / interrupted, and its counts (the
    final ones when recorded, else the live status counts)."""
    final = summary.counts
    if final is None:
        state, counts = "running", dict(summary.status_counts)
    else:
        state = "interrupted" if final.get("interrupted") else "finished"
        counts = {k: v for k, v in final.items() if k != "interrupted"}
    return {
        "run_id": summary.run_id,
        "state": state,
        "started_at": summary.started_at.isoformat(),
        "finished_at": None if summary.finished_at is None else summary.finished_at.isoformat(),
        "counts": counts,
        "settings": summary.settings,
    }


def interrupted_videos(catalog: Catalog, records: list[VideoRecord]) -> set[str]:
    """The video ids among `records` that are pending because the run that last touched them
    was interrupted (a rerun of the same command resumes them): the catalog keeps no such
    status, so it is read off the run."""
    runs = {r.run_id for r in records if r.status == VideoStatus.PENDING and r.run_id}
    stopped = set()
    for run_id in runs:
        summary = catalog.run_summary(run_id)
        if summary is not None and run_row(summary)["state"] == "interrupted":
            stopped.add(run_id)
    return {r.video_id for r in records if r.status == VideoStatus.PENDING and r.run_id in stopped}
