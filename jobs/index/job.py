"""The indexing job: video URIs -> decoded frames -> tokens -> compressed token sets -> store.

`index_videos` reads as plan -> run -> summarise:

* plan (driver): resolve the model, the compression config and the sampling; list the source;
  record the run; ask the catalog what is still to do (minus what it already has for this model
  + config) and mark those videos pending.
* run: a streaming Ray Data pipeline, one row per video (`jobs.index.stages`):

      decode_row          CPU tasks (num_cpus=1 each), F sampled frames per video, time-limited
      EncodeAndCompress   an actor pool: the model loads once per actor; batches of videos;
                          num_gpus per actor on GPU clusters, CPU otherwise
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
restarting the encoder forever; its videos stay `pending`. Catalog writes are upserts on (video,
model, config), so a retried batch cannot duplicate a row. A rerun with the same arguments skips
what is indexed and resumes the rest (`pending`); failed videos are retried only with
`retry_failed`. A file written by a batch whose catalog rows never landed (a crash in between) is
an orphan that `Store.collect_garbage` removes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.index.decode import VERBOSE_ENV, DecodeSettings
from jobs.index.sources import list_sources
from jobs.index.stages import (
    CHAOS_ENV,
    EncodeAndCompress,
    ModelLoader,
    StageSettings,
    decode_row,
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
# A decode worker process is replaced after this many videos, bounding whatever its libraries
# leak. Setting it also keeps Ray Data from fusing the decode tasks into the encode actors
# (fusion needs identical remote args): decoding must stay on its own, separately scaled CPUs.
DECODE_TASKS_PER_WORKER = 200
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
class Resources:
    """How the pipeline is spread over the cluster (see `index_videos` for each field)."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    decode_workers: int | None = None
    ray_address: str | None = None
    num_cpus: int | None = None
    runtime_env: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "decode_workers", "num_cpus"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")


@dataclass(frozen=True)
class IndexPlan:
    """What a run will do, decided on the driver before any worker starts."""

    stages: StageSettings
    resources: Resources
    catalog: Catalog
    listed: int  # videos the source names
    todo: list[str]  # URIs to index now (registered pending)
    skipped_failed: int  # failed before and not retried


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
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    decode_workers: int | None = None,
    batch_size: int = 4,
    retry_failed: bool = False,
    decode_timeout_s: float = 120.0,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> IndexSummary:
    """Index the videos SOURCE names (see `jobs.index.sources`) into compressed token sets.

    store_url / catalog_url: where token sets and the catalog live (defaults: `storage.open_store`,
    i.e. $TOKENREEL_STORE_URL or ./tokenreel-data, and a SQLite file in a local store).
    model: a plug-in name for `load_video_llm` ($TOKENREEL_MODEL, else the registry's default),
    which is also the model id in the catalog, or a `ModelLoader`. config: the outer compression
    stage (paper defaults).
    frames: F sampled frames per video. frame_size: short side frames are decoded to (default:
    the vision tower's input side for LLaVA-OneVision models, the source size otherwise).
    ray_address: a cluster to join; default: reuse an initialised Ray, else start a local one
    with `num_cpus`. workers: encode actors; gpus_per_worker: GPUs per actor (0: CPU);
    decode_workers: concurrent decode tasks (None: as many as free CPUs allow).
    batch_size: videos per encode batch and per Parquet file. runtime_env: Ray runtime env for
    the job's workers (e.g. storage endpoint variables when joining a running Ray).
    progress: show a progress bar; on_progress(done, todo) is called as videos finish.
    """
    resources = Resources(
        workers, gpus_per_worker, decode_workers, ray_address, num_cpus, runtime_env
    )
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
    )
    started = time.perf_counter()
    tally = _Tally()
    try:
        started = run_pipeline(plan, tally, progress=progress, on_progress=on_progress)
    except BaseException as exc:
        plan.catalog.finish_run(plan.stages.run_id, {**tally.counts(), "interrupted": 1})
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
    return summary


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
) -> IndexPlan:
    """Resolve the settings, list the source, record the run and register what is to do."""
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
    uris = list_sources(source)
    store = open_store(store_url, catalog_url)
    catalog = store.catalog
    model_id, config_hash = loader.model_id, config.stable_hash()
    run_id = catalog.start_run(
        {
            "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<list>",
            "model": model_id,
            "config": config.to_dict(),
            "decode": dataclasses.asdict(decode),
            "workers": resources.workers,
            "gpus_per_worker": resources.gpus_per_worker,
            "decode_workers": resources.decode_workers,
            "batch_size": batch_size,
            "retry_failed": retry_failed,
        }
    )
    todo = catalog.not_indexed(uris, model_id, config_hash, retry_failed=retry_failed)
    failed_before = catalog.not_indexed(uris, model_id, config_hash, retry_failed=True)
    catalog.register_pending(todo, model_id, config_hash, run_id=run_id)
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
    return IndexPlan(stages, resources, catalog, len(uris), todo, len(failed_before) - len(todo))


def run_pipeline(
    plan: IndexPlan,
    tally: _Tally,
    *,
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
) -> float:
    """Run the pipeline over the plan's videos, counting finished ones into `tally`; returns the
    time.perf_counter() at which the pipeline started (after Ray's start-up)."""
    started = time.perf_counter()
    if not plan.todo:
        return started
    import ray

    resources = plan.resources
    with _ray_connection(resources.ray_address, resources.num_cpus), _quiet_data_context():
        started = time.perf_counter()  # the pipeline's time, not Ray's start-up
        dataset = build_dataset(ray.data, plan)
        with _progress_bar(len(plan.todo), enabled=progress) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(tally.add(batch))
                bar.set_postfix(failed=len(tally.failures), refresh=False)
                if on_progress is not None:
                    on_progress(tally.done, len(plan.todo))
    return started


def build_dataset(data: Any, plan: IndexPlan) -> Any:
    """The lazy Ray Dataset of the job (`data` is the `ray.data` module)."""
    from storage.ids import video_id_for

    settings, resources = plan.stages, plan.resources
    rows = [{"uri": uri, "video_id": video_id_for(uri)} for uri in plan.todo]
    env = {"runtime_env": resources.runtime_env} if resources.runtime_env else {}
    return (
        # One block per video: decode tasks then spread over the cluster from the start.
        data.from_items(rows, override_num_blocks=len(rows))
        .map(
            decode_row,
            fn_kwargs={"settings": settings.decode},
            num_cpus=1,
            compute=data.TaskPoolStrategy(size=resources.decode_workers),
            max_calls=DECODE_TASKS_PER_WORKER,
            **env,
        )
        .map_batches(
            EncodeAndCompress,
            fn_constructor_kwargs={"settings": settings, "chaos_flag": os.environ.get(CHAOS_ENV)},
            batch_size=settings.batch_size,
            batch_format="numpy",
            num_cpus=1,
            num_gpus=resources.gpus_per_worker,
            compute=data.ActorPoolStrategy(size=resources.workers),
            max_task_retries=ENCODE_BATCH_RETRIES,
            **env,
        )
        .map_batches(
            write_batch,
            fn_kwargs={"settings": settings},
            batch_size=settings.batch_size,
            batch_format="numpy",
            num_cpus=WRITE_TASK_CPUS,
            compute=data.TaskPoolStrategy(size=WRITERS_PER_ENCODE_ACTOR * resources.workers),
            **env,
        )
    )


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


@contextmanager
def _ray_connection(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Reuse an initialised Ray (a notebook, a test, another Ray job); else join `address` or
    start a local Ray, and shut it down afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    else:
        ray.init(address=address)
    try:
        yield
    finally:
        ray.shutdown()


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
