"""The driver's heartbeat thread: it beats at once (recording the interval), keeps beating
through a failed heartbeat (a missed one must not stop the job) and stops with its block."""

from __future__ import annotations

import threading

import pytest

from jobs.index.heartbeat import run_heartbeat
from storage.catalog import check_heartbeat_interval


class _Catalog:
    """Records heartbeats; the second one fails, as an unreachable database would."""

    def __init__(self, wanted: int) -> None:
        self.beats: list[tuple[str, float]] = []
        self.enough = threading.Event()
        self.wanted = wanted

    def heartbeat(self, run_id: str, interval_s: float) -> None:
        self.beats.append((run_id, interval_s))
        if len(self.beats) >= self.wanted:
            self.enough.set()
        if len(self.beats) == 2:
            raise OSError("database unreachable")


def test_heartbeats_go_on_through_a_failure_and_stop_with_the_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog = _Catalog(wanted=4)
    with run_heartbeat(catalog, "run1", 0.01):  # type: ignore[arg-type]
        assert catalog.beats[0] == ("run1", 0.01)  # the first one before the block runs
        assert catalog.enough.wait(timeout=60)  # a deadline for a hung test, not a timing claim
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat-run1")]  # joined
    assert "heartbeat not recorded: database unreachable" in caplog.text


@pytest.mark.parametrize("interval", [0, -1, float("inf"), float("nan"), True, "30"])
def test_bad_intervals_are_refused_before_anything_is_recorded(interval: object) -> None:
    with pytest.raises(ValueError):
        check_heartbeat_interval(interval)  # type: ignore[arg-type]
