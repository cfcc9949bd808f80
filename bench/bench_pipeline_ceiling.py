"""The indexing pipeline's own ceiling: videos per second through the Ray Data job with every
stage's work replaced by a no-op of the same shape (no decoding, no model, no writes), so what is
left is the pipeline: blocks, tasks, the actor pool, object transfers, the driver's tally.

Two layouts in the same run, on the same URIs and the same local Ray:

* old (the baseline, reproduced here as the job built it before issue 13): one block per video
  (`from_items(rows, override_num_blocks=len(rows))`), a `map` decode task per video, the
  encode actor pool of fixed size 1, batches of 4, writes in batches of 4;
* new: `jobs.index.job.build_dataset` itself with `PipelineStages` of no-ops: blocks of up to
  64 videos, one decode task per block (its videos on a few threads), the elastic actor pool.

Both drive the real driver loop (`iter_batches` + the job's tally). Goal (issue 13): new >= 10x
old on this machine.

The old layout runs on the first --old-videos URIs (default 1,000), twice: before and after the
new layout's run over all --videos, so that a change of the machine's load during the run shows
as a difference between the two old figures instead of passing for a speed-up. Its rate per
video does not depend on the count (one block, one task per video: nothing amortises), and its
start-up costs weigh more on fewer videos, so the prefix does not flatter the new layout.

    .venv/bin/python bench/bench_pipeline_ceiling.py --videos 10000 --json /tmp/ceiling.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.config import CompressionConfig
from jobs.index.decode import DecodeSettings
from jobs.index.job import (
    DECODE_TASKS_PER_WORKER,
    ENCODE_BATCH_RETRIES,
    IndexPlan,
    PipelineStages,
    _Tally,
    build_dataset,
    videos_per_block,
)
from jobs.index.planning import TodoFile
from jobs.index.resources import Pool, Resources
from jobs.index.stages import ModelLoader, StageSettings, columns_of, rows_of
from storage.ids import video_id_for

BATCH = 4
OLD_BLOCK_DECODE_CALLS = 200  # the old DECODE_TASKS_PER_WORKER
FRAMES = np.zeros((1, 2, 2, 3), np.uint8)  # a token frame: the bench moves rows, not pixels


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "uri": row["uri"],
        "video_id": row["video_id"],
        "content_hash": "0" * 64,
        "frames": FRAMES,
        "timestamps": np.zeros(1),
        "error": "",
        "decode_s": 0.0,
    }


def noop_decode_row(row: dict[str, Any], settings: DecodeSettings) -> dict[str, Any]:
    """The old layout's decode stage (a `map` over single rows), doing nothing."""
    return _decoded(row)


def noop_decode_videos(batch: dict[str, np.ndarray], settings: DecodeSettings, threads: int):
    """The new layout's decode stage (`decode_videos`' signature), doing nothing."""
    return columns_of([_decoded(row) for row in rows_of(batch)])


class NoopEncode:
    """`EncodeAndCompress`' signature and output columns, without a model."""

    def __init__(self, settings: StageSettings, chaos_flag: str | None = None) -> None:
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return columns_of(
            [
                {
                    "uri": row["uri"],
                    "error": "",
                    "tokens_in": 1,
                    "decode_s": 0.0,
                    "encode_s": 0.0,
                    "compress_s": 0.0,
                }
                for row in rows_of(batch)
            ]
        )


def noop_write(batch: dict[str, np.ndarray], settings: StageSettings) -> dict[str, list]:
    """`write_batch`' signature and output columns, writing nothing."""
    return columns_of(
        [
            {
                "uri": row["uri"],
                "error": "",
                "tokens_in": 1,
                "tokens_out": 1,
                "bytes": 0,
                "decode_s": 0.0,
                "encode_s": 0.0,
                "compress_s": 0.0,
                "write_s": 0.0,
            }
            for row in rows_of(batch)
        ]
    )


def old_dataset(data: Any, plan: IndexPlan) -> Any:
    """The job's dataset as it was built before issue 13 (one block per video), no-op stages."""
    settings = plan.stages
    rows = [{"uri": uri, "video_id": video_id_for(uri)} for uri, _ in plan.todo.rows()]
    return (
        data.from_items(rows, override_num_blocks=len(rows))
        .map(
            noop_decode_row,
            fn_kwargs={"settings": settings.decode},
            num_cpus=1,
            compute=data.TaskPoolStrategy(size=None),
            max_calls=OLD_BLOCK_DECODE_CALLS,
        )
        .map_batches(
            NoopEncode,
            fn_constructor_kwargs={"settings": settings, "chaos_flag": None},
            batch_size=settings.batch_size,
            batch_format="numpy",
            num_cpus=1,
            num_gpus=0,
            compute=data.ActorPoolStrategy(size=1),
            max_task_retries=ENCODE_BATCH_RETRIES,
        )
        .map_batches(
            noop_write,
            fn_kwargs={"settings": settings},
            batch_size=settings.batch_size,
            batch_format="numpy",
            num_cpus=0,
            compute=data.TaskPoolStrategy(size=2),
        )
    )


def plan_for(uris: list[str], workers: Pool) -> IndexPlan:
    settings = StageSettings(
        store_url="/nonexistent",
        catalog_url="sqlite:///nonexistent",
        model=ModelLoader("noop", print),
        config=CompressionConfig(),
        decode=DecodeSettings(num_frames=1),
        run_id="bench",
        device="cpu",
        batch_size=BATCH,
    )
    todo = TodoFile()
    todo.add([(uri, None) for uri in uris])
    held = ExitStack()
    held.callback(todo.close)
    return IndexPlan(settings, Resources(workers=workers), None, len(uris), todo, 0, held)


def drive(dataset: Any, total: int) -> dict:
    """Run the dataset through the job's driver loop; videos per second over its wall time."""
    tally = _Tally()
    started = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        tally.add(batch)
    seconds = time.perf_counter() - started
    assert tally.done == total == tally.indexed, (tally.done, total)
    return {"videos": total, "seconds": seconds, "videos_per_second": total / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--old-videos", type=int, default=1_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import ray
    from ray.data import DataContext

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    uris = [f"/bench/videos/{i:07d}.mp4" for i in range(args.videos)]
    results = {}
    new_stages = PipelineStages(decode=noop_decode_videos, encode=NoopEncode, write=noop_write)
    old_uris = uris[: args.old_videos]
    for name in ("old_before", "new", "old_after"):
        if name == "new":
            plan = plan_for(uris, Pool(1, 1))
            dataset = build_dataset(ray.data, plan, decode_slots=args.cpus, stages=new_stages)
            results[name] = drive(dataset, len(uris))
        else:
            results[name] = drive(
                old_dataset(ray.data, plan_for(old_uris, Pool(1, 1))), len(old_uris)
            )
        row = results[name]
        print(f"{name}: {row['videos_per_second']:.1f} videos/s over {row['videos']} videos "
              f"({row['seconds']:.1f} s)", flush=True)  # fmt: skip
    ray.shutdown()
    old_rate = (
        results["old_before"]["videos_per_second"] + results["old_after"]["videos_per_second"]
    ) / 2
    ratio = results["new"]["videos_per_second"] / old_rate
    report = {
        "bench": "pipeline_ceiling",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, Ray with {args.cpus}",
        "videos": args.videos,
        "videos_per_block_new": videos_per_block(args.videos, args.cpus),
        "decode_tasks_per_worker_new": DECODE_TASKS_PER_WORKER,
        **results,
        "new_over_old_mean": ratio,
    }
    print(f"new / mean(old) = {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
