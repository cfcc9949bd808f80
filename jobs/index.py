"""The indexing job: video URIs -> decoded frames -> tokens -> compressed token sets -> store.

A streaming Ray Data pipeline, one row per video:

    read URIs (minus what the catalog already has for this model + config; the rest marked pending)
      -> decode        CPU tasks (num_cpus=1 each), F sampled frames per video, time-limited
      -> encode+compress  an actor pool: the model loads once per actor; batches of videos;
                       num_gpus per actor on GPU clusters, CPU otherwise
      -> write         one Parquet file per batch (storage), then its catalog rows
      -> driver        a progress bar over finished videos, and the run's summary

Decoding is scaled apart from encoding (`decode_workers` vs `workers`), so a GPU worker never
waits on a CPU decode, and Ray Data's backpressure bounds the blocks in flight: memory stays flat
whatever the corpus size (a 2-hour video contributes F frames, never its whole stream).
Writes stream: each batch is written (file, then catalog rows) as soon as it is encoded, while
later videos are still being decoded, so encoded token sets never pile up in the object store
and a crash loses only the batches in flight. That needs the write tasks to reserve no CPU
(`WRITE_TASK_CPUS`): Ray Data gives an operator no CPU budget while the decode tasks and encode
actors hold every CPU, and a write task asking for any would wait for the end of decoding.

Loss-free under failure. Every video ends as a catalog row: `indexed`, or `failed` with a
readable reason. A video that cannot be decoded or encoded is caught inside the stage that
failed and travels on as an error row (a raised exception would make Ray Data drop or abort the
block); only storage failures raise, and those leave the videos `pending` for the next run.
Killed workers are replaced: tasks keep Ray Data's `max_retries=-1` (a video whose decoder crashes
takes down only its decoder child process, so no video can loop a decode retry), and encode actors
keep `max_restarts=-1` (a lost GPU node or a preempted worker never ends a long job) but retry any
one batch at most `ENCODE_BATCH_RETRIES` times: a batch that kills its encoder process every time
(a video that crashes the model's native code, say) then stops the job with Ray's error instead of
restarting the encoder forever; its videos stay `pending`. Catalog writes are upserts on (video,
model, config), so a retried batch cannot duplicate a row. A rerun with the same arguments skips
what is indexed and resumes the rest (`pending`); failed videos are retried only with
`retry_failed`. A file written by a batch whose catalog rows never landed (a crash in between) is
an orphan that `Store.collect_garbage` removes.

Fault injection: when the environment variable TOKENREEL_CHAOS_EXIT_ONCE names a file path, the
first encode actor to claim that path (exclusive create) ends its process abruptly before its
first batch; Ray must restart it and retry the batch. Tests and failure drills use it to check
that a worker lost mid-job costs nothing and duplicates nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.decode import DecodeError, DecodeSettings, shared_decoder
from jobs.sources import list_sources, local_copy

if TYPE_CHECKING:  # both import torch: decode workers, which need neither, stay light
    from compression.config import CompressionConfig
    from storage import Store

DEFAULT_MODEL = "tiny-llava-ov"
MODEL_ENV = "TOKENREEL_MODEL"
CHAOS_ENV = "TOKENREEL_CHAOS_EXIT_ONCE"
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


class IndexJobStopped(RuntimeError):
    """Ray could not finish the pipeline (e.g. a batch kept killing its encoder process)."""


@dataclass(frozen=True)
class IndexSummary:
    """What an indexing run did (also recorded in the catalog's runs table).

    total: videos the source listed; skipped: already indexed (or failed before, without
    `retry_failed`); indexed / failed: done by this run. tokens_in / tokens_out: visual tokens
    before and after compression, over the indexed videos. stage_seconds: summed worker time per
    stage (decode, encode, compress, write), i.e. where the time goes, not wall time.
    videos_per_second: indexed videos over the pipeline's wall time.
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
    pipeline_seconds: float
    stage_seconds: dict[str, float]
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped_failed: int = 0

    @property
    def videos_per_second(self) -> float:
        return self.indexed / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

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
        stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in self.stage_seconds.items())
        lines = [
            f"run {self.run_id}: {self.indexed} indexed, {self.skipped} skipped, "
            f"{self.failed} failed (of {self.total} listed)",
            f"tokens: {self.tokens_in} in -> {self.tokens_out} out{ratio}; "
            f"{self.bytes_written / 1e6:.2f} MB written",
            f"speed: {self.videos_per_second:.2f} videos/s over {self.pipeline_seconds:.1f} s; "
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
class ModelLoader:
    """How each encode actor gets its model, for models `load_video_llm` does not know by name
    (a notebook's own checkpoint, a benchmark's random-weight model).

    model_id: the id the catalog and the token sets carry; `load(device=...)` must return a
    `VideoLLM` with that `model_id` (checked in every actor). load must be picklable (a module
    function or a functools.partial of one). frame_size: the short side to decode frames to
    (None: source size).
    """

    model_id: str
    load: Callable[..., Any]
    frame_size: int | None = None

    @classmethod
    def by_name(cls, model: str) -> ModelLoader:
        """A built-in tiny model, a hub id or a local checkpoint, via `load_video_llm`."""
        from compression.video_llm import load_video_llm

        return cls(model, functools.partial(load_video_llm, model), model_frame_size(model))


@dataclass(frozen=True)
class _Job:
    """The settings every stage needs, resolved once on the driver."""

    store_url: str
    catalog_url: str
    model: ModelLoader
    config: CompressionConfig
    decode: DecodeSettings
    run_id: str
    device: str
    batch_size: int

    @property
    def config_hash(self) -> str:
        return self.config.stable_hash()


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
    """Index the videos SOURCE names (see `jobs.sources`) into compressed token sets.

    store_url / catalog_url: where token sets and the catalog live (defaults: `storage.open_store`,
    i.e. $TOKENREEL_STORE_URL or ./tokenreel-data, and a SQLite file in a local store).
    model: a plug-in name for `load_video_llm` ($TOKENREEL_MODEL, else "tiny-llava-ov"), which
    is also the model id in the catalog, or a `ModelLoader`. config: the outer compression
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
    import ray

    from compression.config import CompressionConfig
    from storage import open_store

    _check_counts(workers=workers, batch_size=batch_size, decode_workers=decode_workers)
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
    model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    loader = model if isinstance(model, ModelLoader) else ModelLoader.by_name(model)
    config = config or CompressionConfig()
    decode = DecodeSettings(
        num_frames=frames,
        frame_size=frame_size if frame_size is not None else loader.frame_size,
        timeout_s=decode_timeout_s,
    )
    # The sampling is part of the key (see CompressionConfig): 16- and 32-frame token sets of
    # one video are different entries.
    config = dataclasses.replace(config, frames=frames, frame_size=decode.frame_size)
    uris = list_sources(source)
    store = open_store(store_url, catalog_url)
    catalog = store.catalog
    model_id, config_hash = loader.model_id, config.stable_hash()
    settings = {
        "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<list>",
        "model": model_id,
        "config": config.to_dict(),
        "decode": dataclasses.asdict(decode),
        "workers": workers,
        "gpus_per_worker": gpus_per_worker,
        "decode_workers": decode_workers,
        "batch_size": batch_size,
        "retry_failed": retry_failed,
    }
    run_id = catalog.start_run(settings)
    todo = catalog.not_indexed(uris, model_id, config_hash, retry_failed=retry_failed)
    failed_before = catalog.not_indexed(uris, model_id, config_hash, retry_failed=True)
    catalog.register_pending(todo, model_id, config_hash, run_id=run_id)
    job = _Job(
        store_url=store.store_url,
        catalog_url=catalog.url,
        model=loader,
        config=config,
        decode=decode,
        run_id=run_id,
        device="cuda" if gpus_per_worker > 0 else "cpu",
        batch_size=batch_size,
    )
    tally = _Tally()
    started = time.perf_counter()
    try:
        if todo:
            with _ray_connection(ray_address, num_cpus), _quiet_data_context():
                started = time.perf_counter()  # the pipeline's time, not Ray's start-up
                dataset = _pipeline(
                    ray.data, todo, job, workers, gpus_per_worker, decode_workers, runtime_env
                )
                with _progress_bar(len(todo), enabled=progress) as bar:
                    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                        bar.update(tally.add(batch))
                        if on_progress is not None:
                            on_progress(tally.done, len(todo))
    except ray.exceptions.RayError as exc:
        catalog.finish_run(run_id, {**tally.counts(), "interrupted": 1})
        raise IndexJobStopped(
            f"the indexing job stopped after {tally.done} of {len(todo)} videos: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}. Nothing written is lost; "
            "the rest stay pending and a rerun with the same arguments resumes them "
            f"(an encode batch is retried {ENCODE_BATCH_RETRIES} times before the job stops)"
        ) from exc
    except BaseException:
        catalog.finish_run(run_id, {**tally.counts(), "interrupted": 1})
        raise
    summary = IndexSummary(
        run_id=run_id,
        store_url=store.store_url,
        catalog_url=catalog.url,
        model_id=model_id,
        config_hash=config_hash,
        total=len(uris),
        skipped=len(uris) - len(todo),
        indexed=tally.indexed,
        failed=len(tally.failures),
        tokens_in=tally.tokens_in,
        tokens_out=tally.tokens_out,
        bytes_written=tally.bytes_written,
        pipeline_seconds=time.perf_counter() - started,
        stage_seconds=dict(tally.stage_seconds),
        failures=tally.failures,
        skipped_failed=len(failed_before) - len(todo),
    )
    catalog.finish_run(run_id, summary.counts())
    return summary


def model_frame_size(model: str) -> int | None:
    """The frame side a model's processor resizes to, when it is one fixed square (LLaVA-OV's
    SigLIP): decoding straight to it saves memory. None for models that keep the aspect and
    size by a pixel budget (Qwen2.5-VL): they get the source size."""
    from compression.tiny_models import (
        TINY_LLAVA_OV,
        TINY_QWEN2_5_VL,
        tiny_llava_onevision_config,
    )

    if model == TINY_LLAVA_OV:
        return int(tiny_llava_onevision_config().vision_config.image_size)
    if model == TINY_QWEN2_5_VL:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    if config.model_type == "llava_onevision":
        return int(config.vision_config.image_size)
    return None


# -- the pipeline ---------------------------------------------------------------------------------


def _pipeline(
    data: Any,
    uris: Sequence[str],
    job: _Job,
    workers: int,
    gpus_per_worker: float,
    decode_workers: int | None,
    runtime_env: dict[str, Any] | None,
) -> Any:
    """The lazy Ray Dataset of the job (`data` is the `ray.data` module)."""
    from storage import video_id_for

    rows = [{"uri": uri, "video_id": video_id_for(uri)} for uri in uris]
    env = {"runtime_env": runtime_env} if runtime_env else {}
    return (
        # One block per video: decode tasks then spread over the cluster from the start.
        data.from_items(rows, override_num_blocks=len(rows))
        .map_batches(
            decode_batch,
            fn_kwargs={"settings": job.decode},
            batch_size=1,
            batch_format="numpy",
            num_cpus=1,
            compute=data.TaskPoolStrategy(size=decode_workers),
            max_calls=DECODE_TASKS_PER_WORKER,
            **env,
        )
        .map_batches(
            EncodeAndCompress,
            fn_constructor_kwargs={"job": job, "chaos_flag": os.environ.get(CHAOS_ENV)},
            batch_size=job.batch_size,
            batch_format="numpy",
            num_cpus=1,
            num_gpus=gpus_per_worker,
            compute=data.ActorPoolStrategy(size=workers),
            max_task_retries=ENCODE_BATCH_RETRIES,
            **env,
        )
        .map_batches(
            write_batch,
            fn_kwargs={"job": job},
            batch_size=job.batch_size,
            batch_format="numpy",
            num_cpus=WRITE_TASK_CPUS,
            compute=data.TaskPoolStrategy(size=WRITERS_PER_ENCODE_ACTOR * workers),
            **env,
        )
    )


def decode_batch(batch: dict[str, np.ndarray], settings: DecodeSettings) -> dict[str, list]:
    """Decode stage: fetch + hash each video's bytes, decode its sampled frames (time-limited)."""
    out: dict[str, list] = {
        key: [] for key in ("uri", "video_id", "content_hash", "frames", "timestamps")
    }
    out.update(error=[], decode_s=[])
    for row in _rows(batch):
        started = time.perf_counter()
        content_hash, error = "", ""
        frames, stamps = np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0)
        try:
            with local_copy(row["uri"]) as copy:
                content_hash = copy.content_hash
                video = shared_decoder().decode(copy.path, settings)
            frames, stamps = video.frames, np.asarray(video.timestamps, dtype=np.float64)
        except DecodeError as exc:
            error = f"decode: {exc}"
        except OSError as exc:  # missing file, permission, network: the video's, not the job's
            error = f"read: {type(exc).__name__}: {exc}"
        for key, value in (
            ("uri", row["uri"]),
            ("video_id", row["video_id"]),
            ("content_hash", content_hash),
            ("frames", frames),
            ("timestamps", stamps),
            ("error", error),
            ("decode_s", time.perf_counter() - started),
        ):
            out[key].append(value)
    return out


class EncodeAndCompress:
    """Encode stage: the vision tower + projector, then the outer compression, per batch."""

    def __init__(self, job: _Job, chaos_flag: str | None = None) -> None:
        self.job = job
        self.chaos_flag = chaos_flag
        self.llm = job.model.load(device=job.device)
        if self.llm.model_id != job.model.model_id:
            raise RuntimeError(
                f"the loaded model reports id {self.llm.model_id!r}, expected "
                f"{job.model.model_id!r}: the catalog would key its token sets wrongly"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        self._maybe_exit_for_chaos()
        rows = _rows(batch)
        out: dict[str, list] = {key: [] for key in _ENCODED_COLUMNS}
        good = [row for row in rows if not row["error"]]
        encoded = self._encode(good)
        for row in rows:
            token_set, tokens_in, encode_s, compress_s, error = b"", 0, 0.0, 0.0, row["error"]
            if not error:
                result = encoded[row["video_id"]]
                if isinstance(result, str):
                    error = result
                else:
                    started = time.perf_counter()
                    try:
                        compressed = self._compress(row, result)
                        token_set = pickle.dumps(compressed, protocol=pickle.HIGHEST_PROTOCOL)
                        tokens_in = int(result.tokens.shape[0])
                        encode_s = result.encode_seconds
                    except Exception as exc:  # this video's tokens, not the actor, are at fault
                        error = f"compress: {type(exc).__name__}: {exc}"
                    compress_s = time.perf_counter() - started
            for key, value in (
                ("uri", row["uri"]),
                ("video_id", row["video_id"]),
                ("error", error),
                ("token_set", token_set),
                ("tokens_in", tokens_in),
                ("decode_s", float(row["decode_s"])),
                ("encode_s", encode_s),
                ("compress_s", compress_s),
            ):
                out[key].append(value)
        return out

    def _encode(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """video_id -> EncodedVideo, or the reason it could not be encoded.

        The batch goes through the model together; if that fails, each video alone, so one bad
        video fails by itself instead of taking its batch with it."""
        if not rows:
            return {}
        frames = [row["frames"] for row in rows]
        stamps = [row["timestamps"].tolist() for row in rows]
        try:
            videos = self.llm.encode_batch(frames, stamps)
        except Exception:
            return {row["video_id"]: self._encode_alone(row) for row in rows}
        return {row["video_id"]: video for row, video in zip(rows, videos, strict=True)}

    def _encode_alone(self, row: dict[str, Any]) -> Any:
        try:
            return self.llm.encode(row["frames"], row["timestamps"].tolist())
        except Exception as exc:
            return f"encode: {type(exc).__name__}: {exc}"

    def _compress(self, row: dict[str, Any], encoded: Any) -> Any:
        from compression import compress_video

        token_set = compress_video(encoded, self.job.config).with_metadata(
            model_id=self.llm.model_id,
            video_id=row["video_id"],
            source_uri=row["uri"],
            content_hash=row["content_hash"],
        )
        return token_set.to("cpu")

    def _maybe_exit_for_chaos(self) -> None:
        if not self.chaos_flag:
            return
        try:
            fd = os.open(self.chaos_flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another actor (or an earlier life of this one) already took the fall
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(77)


_ENCODED_COLUMNS = (
    "uri",
    "video_id",
    "error",
    "token_set",
    "tokens_in",
    "decode_s",
    "encode_s",
    "compress_s",
)
_stores: dict[tuple[str, str], Store] = {}  # per worker process


def write_batch(batch: dict[str, np.ndarray], job: _Job) -> dict[str, list]:
    """Write stage: the batch's token sets into one Parquet file, then their catalog rows
    (`Store.save` orders the two); failed videos get a `failed` row with their reason."""
    from storage import open_store

    key = (job.store_url, job.catalog_url)
    if key not in _stores:  # one engine per worker process, not one per batch
        _stores[key] = open_store(*key)
    store = _stores[key]
    rows = _rows(batch)
    good = [row for row in rows if not row["error"]]
    started = time.perf_counter()
    written: dict[str, tuple[int, int]] = {}
    if good:
        token_sets = [pickle.loads(row["token_set"]) for row in good]
        durations = [float(r["decode_s"] + r["encode_s"] + r["compress_s"]) for r in good]
        locations = store.save(token_sets, run_id=job.run_id, durations_s=durations)
        for row, location in zip(good, locations, strict=True):
            written[row["video_id"]] = (location.kept_count, location.length)
    write_s = (time.perf_counter() - started) / max(1, len(good))
    for row in rows:
        if row["error"]:
            store.catalog.record_failed(
                row["uri"],
                job.model.model_id,
                job.config_hash,
                row["error"],
                run_id=job.run_id,
                duration_s=float(row["decode_s"]),
            )
    return {
        "uri": [row["uri"] for row in rows],
        "error": [row["error"] for row in rows],
        "tokens_in": [int(row["tokens_in"]) for row in rows],
        "tokens_out": [written.get(row["video_id"], (0, 0))[0] for row in rows],
        "bytes": [written.get(row["video_id"], (0, 0))[1] for row in rows],
        "decode_s": [float(row["decode_s"]) for row in rows],
        "encode_s": [float(row["encode_s"]) for row in rows],
        "compress_s": [float(row["compress_s"]) for row in rows],
        "write_s": [write_s if not row["error"] else 0.0 for row in rows],
    }


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy batch (columns) as a list of row dicts."""
    columns = list(batch)
    count = len(batch[columns[0]]) if columns else 0
    return [{name: batch[name][i] for name in columns} for i in range(count)]


# -- the driver's side ----------------------------------------------------------------------------


@dataclass
class _Tally:
    indexed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    bytes_written: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "encode", "compress", "write"), 0.0)
    )

    @property
    def done(self) -> int:
        return self.indexed + len(self.failures)

    def add(self, batch: dict[str, np.ndarray]) -> int:
        """Count one output batch of the write stage; return how many videos it finished."""
        for row in _rows(batch):
            for stage in self.stage_seconds:
                self.stage_seconds[stage] += float(row[f"{stage}_s"])
            if row["error"]:
                self.failures.append((str(row["uri"]), str(row["error"])))
                continue
            self.indexed += 1
            self.tokens_in += int(row["tokens_in"])
            self.tokens_out += int(row["tokens_out"])
            self.bytes_written += int(row["bytes"])
        return len(batch["uri"])

    def counts(self) -> dict[str, int]:
        return {"indexed": self.indexed, "failed": len(self.failures)}


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
    try:
        yield
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved


@contextmanager
def _progress_bar(total: int, *, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="video", desc="indexing", disable=not enabled) as bar:
        yield bar


def _check_counts(**counts: int | None) -> None:
    for name, value in counts.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
