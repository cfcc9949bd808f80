"""The indexing job: video URIs -> decoded frames -> tokens -> compressed token sets -> store.

`index_videos` reads as plan -> run -> summarise:

* plan (driver): resolve the model, the compression config and the sampling; record the run
  and start its heartbeat; stream the source's listing with each video's fingerprint (size +
  mtime, or ETag) and, a chunk at a time (`jobs.index.planning`), ask the catalog what is still
  to do (new, pending or interrupted videos, and indexed ones whose source changed; failed ones
  with `retry_failed`), mark those pending and spill them to the run's to-do file. The driver
  holds one chunk at a time whatever the corpus size: 10^6 URIs are never a list in its memory.
* run (after checking the cluster can hold the pools, `jobs.index.resources`): a streaming
  Ray Data pipeline, one row per video, in blocks of up to 64 videos (`videos_per_block`):

      decode_videos       CPU tasks (num_cpus=1 each), one per block, a few videos at a time
                          (threads), F sampled frames per video, each time-limited on its own
      EncodeAndCompress   an elastic actor pool (MIN:MAX): the model loads once per actor;
                          batches of videos; num_gpus per actor on GPU clusters, CPU otherwise
      write_batch         one Parquet file per batch (storage), then its catalog rows
      driver              a progress bar over finished videos

* summarise: the run's counts, tokens, bytes and stage times, also recorded in the catalog.

Decoding is scaled apart from encoding (`decode_workers` vs `workers`), so a GPU worker never
waits on a CPU decode, and Ray Data's backpressure bounds the blocks in flight: memory stays flat
whatever the corpus size (a 2-hour video contributes F frames, never its whole stream).
Writes stream: each batch is written (file, then catalog rows) as soon as it is encoded, while
later videos are still being decoded, so encoded token sets never pile up in the object store
and a crash loses only the batches in flight. That needs the write tasks to reserve no CPU
(`WRITE_TASK_CPUS`): Ray Data gives an operator no CPU budget while the decode tasks and encode
actors hold every CPU, and a write task asking for any would wait for the end of decoding.

Loss-free under failure. Every video ends as a catalog row: `indexed`, or `failed` with a
readable reason (bad videos fail inside their stage, see `jobs.index.stages`); only storage
failures raise, and those leave the videos `pending` for the next run. Killed workers are
replaced: tasks keep Ray Data's `max_retries=-1` (a video whose decoder crashes takes down only
its decoder child process, so no video can loop a decode retry), and encode actors keep
`max_restarts=-1` (a lost GPU node or a preempted worker never ends a long job) but retry any one
batch at most `ENCODE_BATCH_RETRIES` times: a batch that kills its encoder process every time (a
video that crashes the model's native code, say) then stops the job with Ray's error instead of
restarting the encoder forever; its videos stay `pending`, and once the run has recorded its
end (always, also on Ctrl-C or SIGTERM) they read as `interrupted` until a rerun resumes them.
Catalog writes are upserts on (video, model, config), so a retried batch cannot duplicate a row.
A rerun with the same arguments skips what is indexed and resumes the rest (pending or
interrupted); failed videos are retried only with `retry_failed`. A file written by a batch
whose catalog rows never landed (a crash in between) is an orphan that `Store.collect_garbage`
removes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.index.cluster import ray_connection, ray_init_arguments
from jobs.index.decode import VERBOSE_ENV, DecodeSettings
from jobs.index.heartbeat import DEFAULT_HEARTBEAT_S, run_heartbeat
from jobs.index.planning import TodoFile, chunked, register_todo
from jobs.index.resources import DEFAULT_DECODE_THREADS, Pool, Resources, check_fits, cluster_nodes
from jobs.index.sources import iter_sources, source_label
from jobs.index.stages import (
    CHAOS_ENV,
    EncodeAndCompress,
    ModelLoader,
    StageSettings,
    decode_videos,
    rows_of,
    write_batch,
)

if TYPE_CHECKING:  # both import torch or SQLAlchemy: decode workers, which need neither, stay light
    from compression import CompressionConfig
    from storage import Catalog

# Retries of one encode batch whose actor process died (see the module docstring).
ENCODE_BATCH_RETRIES = 3
# Write tasks reserve no CPU. Ray Data's resource budget (2.60: ReservationOpResourceAllocator)
# hands CPUs to operators; while the encode actors and the decode tasks hold every CPU - which
# is the normal state, decode tasks take whatever the actors leave - the write operator's CPU
# budget is 0, so even a fractional request (0.25 did) is never dispatched until decoding ends:
# every token set then waits in the object store and nothing is durable until the last video is
# encoded. A write is I/O plus a little Parquet encoding: it runs beside the CPU-bound stages.
# Two writers per encode actor keep up with it (more would only add worker processes).
WRITE_TASK_CPUS = 0
WRITERS_PER_ENCODE_ACTOR = 2
# A decode worker process is replaced after this many tasks (blocks), bounding whatever its
# libraries leak. Setting it also keeps Ray Data from fusing the decode tasks into the encode
# actors (fusion needs identical remote args): decoding must stay on its own, separately scaled
# CPUs.
DECODE_TASKS_PER_WORKER = 32
# Block sizing (see `videos_per_block`): one block per video made Ray Data's per-block scheduling
# the ceiling (~70 videos/s on 2 cores whatever the encoder); blocks of up to 64 URIs (a few KB)
# amortise it, and at least 4 blocks per decode slot still spread a small corpus over every slot.
MAX_VIDEOS_PER_BLOCK = 64
BLOCKS_PER_DECODE_SLOT = 4
MAX_LISTED_FAILURES = 20
STAGES = ("decode", "encode", "compress", "write")


class IndexJobStopped(RuntimeError):
    """Ray could not finish the pipeline (e.g. a batch kept killing its encoder process)."""


@dataclass(frozen=True)
class IndexSummary:
    """What an indexing run did (also recorded in the catalog's runs table).

    total: videos the source listed; skipped: already indexed (or failed before, without
    `retry_failed`); indexed / failed: done by this run. tokens_in / tokens_out: visual tokens
    before and after compression, over the indexed videos. stage_s: summed worker time per
    stage (decode, encode, compress, write), i.e. where the time goes, not wall time.
    videos_per_second: indexed videos over the pipeline's wall time (pipeline_s).
    """

    run_id: str
    store_url: str
    catalog_url: str
    model_id: str
    config_hash: str
    total: int
    skipped: int
    indexed: int
    failed: int
    tokens_in: int
    tokens_out: int
    bytes_written: int
    pipeline_s: float
    stage_s: dict[str, float]
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped_failed: int = 0

    @property
    def videos_per_second(self) -> float:
        return self.indexed / self.pipeline_s if self.pipeline_s > 0 else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "indexed": self.indexed,
            "failed": self.failed,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "bytes_written": self.bytes_written,
        }

    def format(self) -> str:
        """A few readable lines for a terminal."""
        ratio = f" ({self.tokens_out / self.tokens_in:.2%} kept)" if self.tokens_in else ""
        stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in self.stage_s.items())
        lines = [
            f"run {self.run_id}: {self.indexed} indexed, {self.skipped} skipped, "
            f"{self.failed} failed (of {self.total} listed)",
            f"tokens: {self.tokens_in} in -> {self.tokens_out} out{ratio}; "
            f"{self.bytes_written / 1e6:.2f} MB written",
            f"speed: {self.videos_per_second:.2f} videos/s over {self.pipeline_s:.1f} s; "
            f"worker time: {stages or 'none'}",
            f"model {self.model_id}, config {self.config_hash}",
            f"store: {self.store_url}",
            f"catalog: {self.catalog_url}",
        ]
        if self.skipped_failed:
            lines.append(
                f"{self.skipped_failed} video(s) failed in earlier runs; "
                "--retry-failed retries them"
            )
        for uri, reason in self.failures[:MAX_LISTED_FAILURES]:
            lines.append(f"  failed: {uri}: {reason}")
        if len(self.failures) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(self.failures) - MAX_LISTED_FAILURES} more failures")
        return "\n".join(lines)


@dataclass(frozen=True)
class IndexPlan:
    """What a run will do, decided on the driver before any worker starts."""

    stages: StageSettings
    resources: Resources
    catalog: Catalog
    listed: int  # videos the source names
    todo: TodoFile  # (URI, listed fingerprint) to index now, pending
    skipped_failed: int  # failed before and not retried
    # Closes what the run holds until its end is recorded: its heartbeat, its to-do file.
    resources_held: ExitStack

    def close(self) -> None:
        """Stop the run's heartbeat and delete its to-do file (after its end is recorded)."""
        self.resources_held.close()


def index_videos(
    source: str | os.PathLike[str] | Sequence[str],
    *,
    store_url: str | None = None,
    catalog_url: str | None = None,
    model: str | ModelLoader | None = None,
    config: CompressionConfig | None = None,
    frames: int = 32,
    frame_size: int | None = None,
    ray_address: str | None = None,
    workers: int | str | tuple[int, int] | Pool = 1,
    gpus_per_worker: float = 0.0,
    worker_resources: Mapping[str, float] | None = None,
    decode_workers: int | str | tuple[int, int] | Pool | None = None,
    decode_threads: int = DEFAULT_DECODE_THREADS,
    batch_size: int = 4,
    retry_failed: bool = False,
    decode_timeout_s: float = 120.0,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    skip_resource_check: bool = False,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    chunk_seconds: float | None = None,
    fps: float | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
) -> IndexSummary:
    """Index the videos SOURCE names (see `jobs.index.sources`) into compressed token sets.

    store_url / catalog_url: where token sets and the catalog live (defaults: `storage.open_store`,
    i.e. $TOKENREEL_STORE_URL or ./tokenreel-data, and a SQLite file in a local store).
    model: a plug-in name for `load_video_llm` ($TOKENREEL_MODEL, else the registry's default),
    which is also the model id in the catalog, or a `ModelLoader`. config: the outer compression
    stage (paper defaults).
    frames: F sampled frames per video. frame_size: short side frames are decoded to (default:
    the vision tower's input side for LLaVA-OneVision models, the source size otherwise).
    ray_address: `local`, `auto`, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, else
    `local`; see `jobs.index.cluster`); a Ray already initialised here is used as it is.
    num_cpus: CPUs of a local Ray (default: all). workers: encode actors, N or an elastic
    (MIN, MAX) / "MIN:MAX" (see `jobs.index.resources`); gpus_per_worker: GPUs per actor (0:
    CPU); worker_resources: custom Ray resources per actor (e.g. a node type's marker);
    decode_workers: concurrent decode tasks, N or (MIN, MAX) (None: as many as free CPUs allow);
    decode_threads: videos each decode task decodes at once.
    batch_size: videos per encode batch and per Parquet file. runtime_env: Ray runtime env for
    the job's workers (e.g. storage endpoint variables when joining a running Ray).
    skip_resource_check: start even when the cluster cannot hold the pools now (it autoscales).
    progress: show a progress bar; on_progress(done, todo) is called as videos finish.
    chunk_seconds / fps: index videos longer than chunk_seconds in time windows (`frames` per
    window, or `fps` frames per second), with a video-level set pooled from the chunk sets:
    `jobs.index.chunks` (in this process, without the Ray pipeline).
    heartbeat_s: seconds between the run's heartbeats, by which a driver killed outright is
    told from a live one (`jobs.index.heartbeat`).
    """
    if chunk_seconds is not None or fps is not None:
        return _index_in_chunks(source, store_url, catalog_url, model, config, frames, frame_size,
                                chunk_seconds, fps, retry_failed, gpus_per_worker,
                                heartbeat_s)  # fmt: skip
    from storage.catalog import check_heartbeat_interval  # SQLAlchemy: not at import time

    check_heartbeat_interval(heartbeat_s)
    resources = Resources(
        workers=Pool.of(workers, "workers"),
        gpus_per_worker=gpus_per_worker,
        worker_resources=dict(worker_resources or {}),
        decode_workers=None
        if decode_workers is None
        else Pool.of(decode_workers, "decode_workers"),
        decode_threads=decode_threads,
        ray_address=ray_address,
        num_cpus=num_cpus,
        runtime_env=runtime_env,
        skip_resource_check=skip_resource_check,
    )
    ray_init_arguments(ray_address, num_cpus)  # its errors before any work
    plan = plan_run(
        source,
        store_url=store_url,
        catalog_url=catalog_url,
        model=model,
        config=config,
        decode=DecodeSettings(num_frames=frames, frame_size=frame_size, timeout_s=decode_timeout_s),
        batch_size=batch_size,
        retry_failed=retry_failed,
        resources=resources,
        heartbeat_s=heartbeat_s,
    )
    started = time.perf_counter()
    tally = _Tally()
    try:
        started = run_pipeline(plan, tally, progress=progress, on_progress=on_progress)
    except BaseException as exc:
        # The run's end is recorded whatever stopped it (Ctrl-C, SIGTERM, a storage error): its
        # videos still pending then read as interrupted, not as being indexed (see storage).
        plan.catalog.finish_run(plan.stages.run_id, {**tally.counts(), "interrupted": 1})
        plan.close()
        if _is_ray_error(exc):
            raise IndexJobStopped(
                f"the indexing job stopped after {tally.done} of {len(plan.todo)} videos: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}. Nothing written is "
                "lost; the rest stay pending and a rerun with the same arguments resumes them "
                f"(an encode batch is retried {ENCODE_BATCH_RETRIES} times before the job stops)"
            ) from exc
        raise
    summary = summarise(plan, tally, time.perf_counter() - started)
    plan.catalog.finish_run(plan.stages.run_id, summary.counts())
    plan.close()
    return summary


def _index_in_chunks(
    source: str | os.PathLike[str] | Sequence[str],
    store_url: str | None,
    catalog_url: str | None,
    model: str | ModelLoader | None,
    config: CompressionConfig | None,
    frames: int,
    frame_size: int | None,
    chunk_seconds: float | None,
    fps: float | None,
    retry_failed: bool,
    gpus_per_worker: float,
    heartbeat_s: float,
) -> IndexSummary:
    """The hook to `jobs.index.chunks.index_videos_in_chunks` (see `index_videos`)."""
    from compression import CompressionConfig
    from compression.models import model_name
    from jobs.index.chunks import index_videos_in_chunks

    if chunk_seconds is None:
        raise ValueError("fps sampling needs chunk_seconds (chunked indexing)")
    loader = model if isinstance(model, ModelLoader) else ModelLoader.by_name(model_name(model))
    config = dataclasses.replace(
        config or CompressionConfig(),
        frames=frames,
        frame_size=frame_size,
        chunk_seconds=chunk_seconds,
        fps=fps,
    )
    run = index_videos_in_chunks(
        source,
        store_url=store_url,
        catalog_url=catalog_url,
        loader=loader,
        config=config,
        retry_failed=retry_failed,
        device="cuda" if gpus_per_worker > 0 else "cpu",
        heartbeat_s=heartbeat_s,
    )
    return IndexSummary(
        run_id=run.run_id,
        store_url=run.store_url,
        catalog_url=run.catalog_url,
        model_id=run.model_id,
        config_hash=run.config_hash,
        total=run.total,
        skipped=run.skipped,
        indexed=run.indexed,
        failed=len(run.failures),
        tokens_in=run.tokens_in,
        tokens_out=run.tokens_out,
        bytes_written=run.bytes_written,
        pipeline_s=run.elapsed_s,
        stage_s={},
        failures=run.failures,
        skipped_failed=run.skipped_failed,
    )


def plan_run(
    source: str | os.PathLike[str] | Sequence[str],
    *,
    store_url: str | None,
    catalog_url: str | None,
    model: str | ModelLoader | None,
    config: CompressionConfig | None,
    decode: DecodeSettings,
    batch_size: int,
    retry_failed: bool,
    resources: Resources,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
) -> IndexPlan:
    """Resolve the settings, record the run and start its heartbeat, stream the source's listing
    and register what is to do (`jobs.index.planning`). The plan holds the heartbeat and the
    to-do file until `IndexPlan.close`."""
    from compression import CompressionConfig
    from compression.models import model_name
    from storage import open_store

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    loader = model if isinstance(model, ModelLoader) else ModelLoader.by_name(model_name(model))
    if decode.frame_size is None:
        decode = dataclasses.replace(decode, frame_size=loader.frame_size)
    # The sampling is part of the key (see CompressionConfig): 16- and 32-frame token sets of
    # one video are different entries.
    config = dataclasses.replace(
        config or CompressionConfig(), frames=decode.num_frames, frame_size=decode.frame_size
    )
    listing = iter_sources(source)  # SOURCE's own errors (not found, ...) before the run starts
    store = open_store(store_url, catalog_url)
    catalog = store.catalog
    model_id, config_hash = loader.model_id, config.stable_hash()
    run_id = catalog.start_run(
        {
            "source": source_label(source),
            "model": model_id,
            "config": config.to_dict(),
            "decode": dataclasses.asdict(decode),
            "workers": str(resources.workers),
            "gpus_per_worker": resources.gpus_per_worker,
            "worker_resources": dict(resources.worker_resources),
            "decode_workers": None
            if resources.decode_workers is None
            else str(resources.decode_workers),
            "decode_threads": resources.decode_threads,
            "batch_size": batch_size,
            "retry_failed": retry_failed,
        }
    )
    held = ExitStack()
    try:
        # Heartbeats from the run's start to its recorded end (`jobs.index.heartbeat`): a driver
        # SIGKILLed while planning or running leaves a run that reads as ended once they stop.
        held.enter_context(run_heartbeat(catalog, run_id, heartbeat_s))
        todo = register_todo(
            catalog, listing, model_id, config_hash, run_id=run_id, retry_failed=retry_failed
        )
        held.callback(todo.videos.close)
    except BaseException:
        # A bad manifest entry half-way, Ctrl-C: what was registered reads as interrupted and
        # a rerun resumes it (the run's end is recorded, as for a stopped pipeline).
        catalog.finish_run(run_id, {"indexed": 0, "failed": 0, "interrupted": 1})
        held.close()
        raise
    stages = StageSettings(
        store_url=store.store_url,
        catalog_url=catalog.url,
        model=loader,
        config=config,
        decode=decode,
        run_id=run_id,
        device="cuda" if resources.gpus_per_worker > 0 else "cpu",
        batch_size=batch_size,
    )
    return IndexPlan(
        stages, resources, catalog, todo.listed, todo.videos, todo.skipped_failed, held
    )


def run_pipeline(
    plan: IndexPlan,
    tally: _Tally,
    *,
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
) -> float:
    """Run the pipeline over the plan's videos, counting finished ones into `tally`; returns the
    time.perf_counter() at which the pipeline started (after Ray's start-up).

    Raises `InsufficientResources` (a ValueError) before starting when the cluster cannot hold
    the pools, and `JobInterrupted` on SIGTERM (as Ctrl-C raises KeyboardInterrupt)."""
    started = time.perf_counter()
    if not len(plan.todo):
        return started
    import ray

    resources = plan.resources
    with ray_connection(resources.ray_address, resources.num_cpus), _quiet_data_context():
        if not resources.skip_resource_check:
            check_fits(resources, cluster_nodes())
        started = time.perf_counter()  # the pipeline's time, not Ray's start-up
        dataset = build_dataset(ray.data, plan, decode_slots=_decode_slots(resources))
        with _progress_bar(len(plan.todo), enabled=progress) as bar, _terminate_raises():
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(tally.add(batch))
                bar.set_postfix(failed=len(tally.failures), refresh=False)
                if on_progress is not None:
                    on_progress(tally.done, len(plan.todo))
    return started


@dataclass(frozen=True)
class PipelineStages:
    """What each stage runs (see `jobs.index.stages`); the benchmark swaps in no-ops of the same
    shapes to measure the pipeline's own ceiling."""

    decode: Callable[..., Any] = decode_videos
    encode: type = EncodeAndCompress
    write: Callable[..., Any] = write_batch


def videos_per_block(videos: int, decode_slots: int) -> int:
    """Rows (URIs) per input block: at least `BLOCKS_PER_DECODE_SLOT` blocks per concurrent
    decode task, at most `MAX_VIDEOS_PER_BLOCK` videos per block.

    Decision: a block is one decode task, so its size trades Ray Data's per-block overhead
    (scheduling, one task, one object; one block per video capped the job at ~70 videos/s on 2
    cores) against spreading a small corpus over every CPU from the start and against the time
    a block waits for its slowest video (each is time-limited). Decoded frames need no bound
    here: Ray Data splits a task's output into blocks of its target size."""
    per_slot = math.ceil(videos / (BLOCKS_PER_DECODE_SLOT * max(1, decode_slots)))
    return max(1, min(MAX_VIDEOS_PER_BLOCK, per_slot))


def build_dataset(
    data: Any, plan: IndexPlan, *, decode_slots: int, stages: PipelineStages = PipelineStages()
) -> Any:
    """The lazy Ray Dataset of the job (`data` is the `ray.data` module)."""
    import pyarrow as pa
    import ray

    from storage.ids import video_id_for

    settings, resources = plan.stages, plan.resources
    per_block = videos_per_block(len(plan.todo), decode_slots)
    # Blocks go to the object store as they are made: the driver never holds every row twice.
    blocks = [
        ray.put(
            pa.table(
                {
                    "uri": [uri for uri, _ in chunk],
                    "video_id": [video_id_for(uri) for uri, _ in chunk],
                    "fingerprint": [fingerprint or "" for _, fingerprint in chunk],
                }
            )
        )
        for chunk in chunked(plan.todo.rows(), per_block)
    ]
    env = {"runtime_env": resources.runtime_env} if resources.runtime_env else {}
    decode_cap = None if resources.decode_workers is None else resources.decode_workers.max
    workers = resources.workers
    return (
        data.from_arrow_refs(blocks)
        .map_batches(
            stages.decode,
            fn_kwargs={"settings": settings.decode, "threads": resources.decode_threads},
            batch_size=None,  # the whole block: one task decodes it, several videos at once
            batch_format="numpy",
            num_cpus=1,
            compute=data.TaskPoolStrategy(size=decode_cap),
            max_calls=DECODE_TASKS_PER_WORKER,
            **env,
        )
        .map_batches(
            stages.encode,
            fn_constructor_kwargs={"settings": settings, "chaos_flag": os.environ.get(CHAOS_ENV)},
            batch_size=settings.batch_size,
            batch_format="numpy",
            num_cpus=1,
            num_gpus=resources.gpus_per_worker,
            resources=dict(resources.worker_resources) or None,
            # Elastic: Ray Data starts `min` actors and adds some, up to `max`, while batches
            # queue (e.g. as an autoscaling cluster adds GPU nodes); idle ones go away.
            compute=data.ActorPoolStrategy(min_size=workers.min, max_size=workers.max),
            max_task_retries=ENCODE_BATCH_RETRIES,
            **env,
        )
        .map_batches(
            stages.write,
            fn_kwargs={"settings": settings},
            batch_size=settings.batch_size,
            batch_format="numpy",
            num_cpus=WRITE_TASK_CPUS,
            compute=data.TaskPoolStrategy(size=WRITERS_PER_ENCODE_ACTOR * workers.max),
            **env,
        )
    )


def _decode_slots(resources: Resources) -> int:
    """How many decode tasks may run at once: the cap, else the cluster's CPUs."""
    import ray

    if resources.decode_workers is not None:
        return resources.decode_workers.max
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def summarise(plan: IndexPlan, tally: _Tally, pipeline_s: float) -> IndexSummary:
    return IndexSummary(
        run_id=plan.stages.run_id,
        store_url=plan.stages.store_url,
        catalog_url=plan.stages.catalog_url,
        model_id=plan.stages.model.model_id,
        config_hash=plan.stages.config_hash,
        total=plan.listed,
        skipped=plan.listed - len(plan.todo),
        indexed=tally.indexed,
        failed=len(tally.failures),
        tokens_in=tally.tokens_in,
        tokens_out=tally.tokens_out,
        bytes_written=tally.bytes_written,
        pipeline_s=pipeline_s,
        stage_s=dict(tally.stage_s),
        failures=tally.failures,
        skipped_failed=plan.skipped_failed,
    )


# -- the driver's side ----------------------------------------------------------------------------


@dataclass
class _Tally:
    indexed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    bytes_written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def done(self) -> int:
        return self.indexed + len(self.failures)

    def add(self, batch: dict[str, np.ndarray]) -> int:
        """Count one output batch of the write stage; return how many videos it finished."""
        rows = rows_of(batch)
        for row in rows:
            for stage in self.stage_s:
                self.stage_s[stage] += float(row[f"{stage}_s"])
            if row["error"]:
                self.failures.append((str(row["uri"]), str(row["error"])))
                continue
            self.indexed += 1
            self.tokens_in += int(row["tokens_in"])
            self.tokens_out += int(row["tokens_out"])
            self.bytes_written += int(row["bytes"])
        return len(rows)

    def counts(self) -> dict[str, int]:
        return {"indexed": self.indexed, "failed": len(self.failures)}


def _is_ray_error(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, ray.exceptions.RayError)


class JobInterrupted(KeyboardInterrupt):
    """SIGTERM stopped the job (raised like Ctrl-C's KeyboardInterrupt, and handled the same)."""


@contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM raises `JobInterrupted` in the driver while the pipeline runs (in the main
    thread only: Python runs signal handlers there), so the job records its end as Ctrl-C does
    instead of vanishing with its videos pending. Installed after `ray.init`, which sets a
    SIGTERM handler of its own; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise JobInterrupted(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _quiet_data_context() -> Iterator[None]:
    """Ray Data settings for this job, restored afterwards: our own progress bar instead of
    Ray's, and never a silently dropped block (an error row is the way a video fails)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.enable_progress_bars, context.max_errored_blocks)
    context.enable_progress_bars, context.max_errored_blocks = False, 0
    # Ray Data's console handler prints its execution plan and progress notes at INFO: only
    # its errors reach the terminal unless --verbose (all of it stays in Ray Data's log file).
    console = [
        handler
        for handler in logging.getLogger("ray.data").handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    levels = [handler.level for handler in console]
    if os.environ.get(VERBOSE_ENV) != "1":
        for handler in console:
            handler.setLevel(max(handler.level, logging.ERROR))
    try:
        yield
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved
        for handler, level in zip(console, levels, strict=True):
            handler.setLevel(level)


@contextmanager
def _progress_bar(total: int, *, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    # Videos done / total, elapsed < ETA, videos/s, and the failures so far (the postfix).
    bar_format = (
        "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} videos "
        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    )
    with tqdm(
        total=total, unit=" videos", desc="indexing", disable=not enabled, bar_format=bar_format
    ) as bar:
        bar.set_postfix(failed=0, refresh=False)
        yield bar
