"""Planning an indexing run at 10^4 / 10^5 / 10^6 URIs: the driver's time and peak memory for
listing, the catalog checks and the pending registration (everything before Ray starts).

Synthetic listing: a manifest file naming N object-store URIs (`s3://bench/videos/NNNNNNN.mp4`;
no listing request, no stat), written before the measurement, a fresh SQLite catalog, the tiny
model's key. Two schemes, each N in its own process (peak RSS is per process):

* old (baseline, as the job planned before issue 13): the whole listing, `not_indexed` over it
  twice, then one `register_pending` of every URI in one transaction;
* new: `jobs.index.job.plan_run` (the listing streamed in chunks of `PLAN_CHUNK` URIs: checks,
  registration and the spilled to-do list each; the driver holds one chunk).

Figures: seconds, peak RSS minus the RSS after imports (MiB), both per N.

    .venv/bin/python bench/bench_planning.py --sizes 10000 100000 1000000 --old-max 100000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20


def rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(size: int, scheme: str) -> dict:
    """Plan `size` URIs with `scheme` in this process; its figures."""
    from compression.models import model_frame_size
    from jobs.index.decode import DecodeSettings
    from jobs.index.job import plan_run
    from jobs.index.resources import Resources
    from storage import open_store

    model_frame_size("tiny-llava-ov")  # the model registry's imports (torch) outside the figures

    with tempfile.TemporaryDirectory() as tmp:
        manifest = f"{tmp}/videos.txt"
        with open(manifest, "w") as handle:
            handle.writelines(f"s3://bench/videos/{i:07d}.mp4\n" for i in range(size))
        store_url, catalog_url = f"{tmp}/store", f"sqlite:///{tmp}/catalog.sqlite"
        open_store(store_url, catalog_url).catalog.close()  # schema created outside the timing
        base = rss_now()
        started = time.perf_counter()
        if scheme == "new":
            plan = plan_run(
                manifest, store_url=store_url, catalog_url=catalog_url, model="tiny-llava-ov",
                config=None, decode=DecodeSettings(num_frames=4), batch_size=4,
                retry_failed=False, resources=Resources(),
            )  # fmt: skip
            todo = len(plan.todo)
            plan.close()
        else:
            from jobs.index.sources import list_sources

            listed = list_sources(manifest)
            catalog = open_store(store_url, catalog_url).catalog
            key = ("tiny-llava-ov", "0" * 16)
            run_id = catalog.start_run({})
            pending = catalog.not_indexed(listed, *key)
            catalog.not_indexed(listed, *key, retry_failed=True)
            catalog.register_pending(pending, *key, run_id=run_id)
            todo = len(pending)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert todo == size
    return {"uris": size, "scheme": scheme, "seconds": seconds, "driver_mib": (peak - base) / MIB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--old-max", type=int, default=100_000, help="largest N for the baseline")
    parser.add_argument("--one", nargs=2, metavar=("N", "SCHEME"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1])))
        return 0
    rows = []
    for size in args.sizes:
        for scheme in ("old", "new"):
            if scheme == "old" and size > args.old_max:
                continue
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(size), scheme],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{scheme} {size:>9,} URIs: {row['seconds']:7.1f} s, "
                f"driver +{row['driver_mib']:.0f} MiB",
                flush=True,
            )
    report = {
        "bench": "planning",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
