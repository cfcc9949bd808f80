"""Runs as people and scripts see them: a run's state (running, finished, interrupted) and
counts as plain JSON values. Shared by
`tokenreel runs`/`videos` and the HTTP API (`GET /v1/runs`, the console)."""

from __future__ import annotations

from typing import Any

from storage.catalog import RunSummary


def run_row(summary: RunSummary) -> dict[str, Any]:
    """A run as plain JSON values: state running / finished / interrupted, and its counts (the
    final ones when recorded, else the live status counts). A run that never recorded its end
    but whose heartbeat went stale (its driver was killed: `storage.catalog`) is interrupted."""
    final = summary.counts
    if final is None:
        state = "interrupted" if summary.stale else "running"
        counts = dict(summary.status_counts)
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
