"""The driver's heartbeat: proof, in the catalog, that an indexing run is still alive.

A driver killed outright (SIGKILL, the OOM killer, a lost node) cannot record its run's end, so
its videos would read `pending` ("still being indexed") forever. While a driver works, a
background thread refreshes its run's heartbeat (`Catalog.heartbeat`) every `heartbeat_s`
seconds; once the heartbeat is `storage.catalog.HEARTBEAT_STALE_INTERVALS` intervals old the run
reads as ended and its pending videos as `interrupted`, which a rerun resumes.

Decision: `DEFAULT_HEARTBEAT_S` = 30 s, so a killed driver's videos read interrupted within about
two minutes (4 intervals) at the cost of one one-row UPDATE per 30 s per driver, and a live run
survives three missed heartbeats (a slow or locked database) before it reads as dead. A
heartbeat that fails (the database briefly unreachable) is logged and the next one tried: a
missed heartbeat must not stop the job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage import Catalog

DEFAULT_HEARTBEAT_S = 30.0
logger = logging.getLogger("tokenreel.index")


@contextmanager
def run_heartbeat(catalog: Catalog, run_id: str, heartbeat_s: float) -> Iterator[None]:
    """Heartbeat run `run_id` every `heartbeat_s` seconds while the block runs: once now (which
    records the interval; a bad interval raises ValueError here), then from a daemon thread,
    stopped and joined when the block ends, however it ends."""
    catalog.heartbeat(run_id, heartbeat_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                catalog.heartbeat(run_id, heartbeat_s)
            except Exception as exc:  # any failure: log it, try again next time
                logger.warning("run %s: heartbeat not recorded: %s", run_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
