"""The indexing job's Ray Data stages: what runs on the workers (`jobs.index.job` arranges them).

    decode_videos       map_batches, tasks  a block of videos -> their sampled frames (or errors)
    EncodeAndCompress   map_batches, actors a batch of videos -> token-set columns (or errors)
    write_batch         map_batches, tasks  a batch -> one Parquet file, then its catalog rows

A video that cannot be decoded or encoded becomes an error row inside the stage that failed and
travels on (a raised exception would make Ray Data drop or abort the block); the write stage
records it `failed` with its reason. Token sets travel as plain columns (`TokenSet.to_columns`),
never as pickled objects.

Fault injection: when the environment variable TOKENREEL_CHAOS_EXIT_ONCE names a file path, the
first encode actor to claim that path (exclusive create) ends its process abruptly before its
first batch; Ray must restart it and retry the batch. Tests and failure drills use it to check
that a worker lost mid-job costs nothing and duplicates nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.index.decode import DecodeError, DecodeSettings
from jobs.index.video import compress_encoded, sample_video
from storage.previews import frame_strip_jpeg, write_preview_quietly

if TYPE_CHECKING:  # torch and the store: the decode workers, which need neither, stay light
    from compression import CompressionConfig
    from storage import Store

CHAOS_ENV = "TOKENREEL_CHAOS_EXIT_ONCE"


@dataclass(frozen=True)
class ModelLoader:
    """How each encode actor gets its model, for models `load_video_encoder` does not know by
    name (a notebook's own checkpoint, a benchmark's random-weight model).

    model_id: the id the catalog and the token sets carry; `load(device=...)` must return a
    `VideoEncoder` (a whole `VideoLLM` is one too) with that `model_id` (checked in every
    actor). load must be picklable (a module function or a functools.partial of one).
    frame_size: the short side to decode frames to (None: source size).
    """

    model_id: str
    load: Callable[..., Any]
    frame_size: int | None = None

    @classmethod
    def by_name(cls, model: str) -> ModelLoader:
        """A built-in tiny model, a hub id or a local checkpoint, via `load_video_encoder`: the
        actors load only the model's vision side (no language model weights on the workers)."""
        import functools

        from compression.models import load_video_encoder, model_frame_size

        return cls(model, functools.partial(load_video_encoder, model), model_frame_size(model))


@dataclass(frozen=True)
class StageSettings:
    """What every stage needs, resolved once on the driver."""

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


# -- decode -----------------------------------------------------------------------------------

_decode_pools: dict[int, ThreadPoolExecutor] = {}  # per worker process, by thread count


def decode_videos(
    batch: dict[str, np.ndarray], settings: DecodeSettings, threads: int
) -> Iterator[dict[str, list]]:
    """Decode stage: the videos of one block, `threads` at a time; yields the rows decoded so
    far whenever one finishes, so Ray Data sizes the output blocks (not one block per video).

    Each thread decodes in a child process of its own under the video's time limit
    (`shared_decoder`), and each video's failure is its row's error: one bad video fails alone,
    never its block. The threads mostly wait (on the child, on the network for a remote video),
    which is why a task holding one CPU runs a few of them: fetching overlaps decoding.
    """
    pool = _decode_pools.get(threads)
    if pool is None:  # kept for the worker's life, so its decoder children are reused
        pool = _decode_pools[threads] = ThreadPoolExecutor(threads, "decode")
    waiting = {pool.submit(decode_row, row, settings) for row in rows_of(batch)}
    while waiting:
        done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
        yield columns_of([future.result() for future in done])


def decode_row(row: dict[str, Any], settings: DecodeSettings) -> dict[str, Any]:
    """Fetch, hash and decode one video (time-limited); any failure is the row's `error`."""
    started = time.perf_counter()
    out = {
        "uri": row["uri"],
        "video_id": row["video_id"],
        "fingerprint": row["fingerprint"],
        "content_hash": "",
        "frames": np.zeros((0, 1, 1, 3), np.uint8),
        "timestamps": np.zeros(0),
        "error": "",
        "thumbnail": b"",  # the preview's frame strip (storage.previews)
    }
    try:
        video = sample_video(row["uri"], settings)
        out.update(
            content_hash=video.content_hash,
            frames=video.frames,
            timestamps=np.asarray(video.timestamps, np.float64),
            thumbnail=frame_strip_jpeg(video.frames),
        )
    except DecodeError as exc:
        out["error"] = f"decode: {exc}"
    except OSError as exc:  # missing file, permission, network: the video's, not the job's
        out["error"] = f"read: {type(exc).__name__}: {exc}"
    except Exception as exc:  # anything else is still this video's failure, not its block's
        out["error"] = f"decode: {type(exc).__name__}: {exc}"
    out["decode_s"] = time.perf_counter() - started
    return out


# -- encode + compress ------------------------------------------------------------------------

# The token-set columns of a video that has no token set (it failed): same names, same array
# ranks and dtypes as `TokenSet.to_columns`, so every row of a batch has one shape of columns.
_NO_TOKEN_SET: dict[str, Any] = {
    "tokens": np.zeros((0, 0), np.uint8),
    "dtype": "",
    "index": np.zeros((0, 3), np.int32),
    "kind": np.zeros(0, np.int8),
    "size": np.zeros(0, np.int32),
    "assignment": np.zeros(0, np.int32),
    "scores": np.zeros(0, np.float32),
    "grid": np.zeros(0, np.int64),
    "config_json": "",
    "model_id": "",
    "video_id": "",
    "source_uri": "",
    "content_hash": "",
    "frame_timestamps": np.zeros(0, np.float64),
    "extras_json": "",
}


class EncodeAndCompress:
    """Encode stage: the vision tower + projector over a batch of videos, then the outer
    compression of each. The model loads once per actor."""

    def __init__(self, settings: StageSettings, chaos_flag: str | None = None) -> None:
        self.settings = settings
        self.chaos_flag = chaos_flag
        self.llm = settings.model.load(device=settings.device)
        if self.llm.model_id != settings.model.model_id:
            raise RuntimeError(
                f"the loaded model reports id {self.llm.model_id!r}, expected "
                f"{settings.model.model_id!r}: the catalog would key its token sets wrongly"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        self._maybe_exit_for_chaos()
        rows = rows_of(batch)
        encoded = self._encode([row for row in rows if not row["error"]])
        return columns_of([self._compressed(row, encoded.get(row["video_id"])) for row in rows])

    def _compressed(self, row: dict[str, Any], encoded: Any) -> dict[str, Any]:
        """The row's token-set columns, or its error (from decoding, encoding or compressing)."""
        out = {
            "uri": row["uri"],
            "fingerprint": row["fingerprint"],
            "error": row["error"],
            "tokens_in": 0,
            "decode_s": float(row["decode_s"]),
            "encode_s": 0.0,
            "compress_s": 0.0,
            "thumbnail": row["thumbnail"],
            **_NO_TOKEN_SET,
        }
        if out["error"]:
            return out
        if isinstance(encoded, str):
            out["error"] = encoded
            return out
        started = time.perf_counter()
        try:
            [token_set] = compress_encoded(
                encoded,
                [self.settings.config],
                model_id=self.llm.model_id,
                uri=row["uri"],
                content_hash=row["content_hash"],
            )
            out.update(token_set.to_columns())
            out.update(tokens_in=int(encoded.tokens.shape[0]), encode_s=encoded.encode_s)
        except Exception as exc:  # this video's tokens, not the actor, are at fault
            out["error"] = f"compress: {type(exc).__name__}: {exc}"
        out["compress_s"] = time.perf_counter() - started
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


# -- write ------------------------------------------------------------------------------------

_stores: dict[tuple[str, str], Store] = {}  # per worker process


def write_batch(batch: dict[str, np.ndarray], settings: StageSettings) -> dict[str, list]:
    """Write stage: the batch's token sets into one Parquet file, then their catalog rows
    (`Store.save` orders the two); failed videos get a `failed` row with their reason."""
    from compression import TokenSet
    from storage import open_store

    key = (settings.store_url, settings.catalog_url)
    if key not in _stores:  # one engine per worker process, not one per batch
        _stores[key] = open_store(*key)
    store = _stores[key]
    rows = rows_of(batch)
    good = [row for row in rows if not row["error"]]
    started = time.perf_counter()
    written: dict[str, tuple[int, int]] = {}
    if good:
        token_sets = [TokenSet.from_columns(row) for row in good]
        durations = [float(r["decode_s"] + r["encode_s"] + r["compress_s"]) for r in good]
        # The fingerprint the source was listed with ("": unknown) is recorded with its token
        # set, so that the next run re-indexes the video if the source changes.
        fingerprints = [str(row["fingerprint"]) or None for row in good]
        locations = store.save(
            token_sets, run_id=settings.run_id, durations_s=durations, fingerprints=fingerprints
        )
        for row, location, token_set in zip(good, locations, token_sets, strict=True):
            written[row["uri"]] = (location.kept_count, location.length)
            write_preview_quietly(settings.store_url, token_set, row["thumbnail"])
    write_s = (time.perf_counter() - started) / max(1, len(good))
    for row in rows:
        if row["error"]:
            store.catalog.record_failed(
                row["uri"],
                settings.model.model_id,
                settings.config_hash,
                row["error"],
                run_id=settings.run_id,
                duration_s=float(row["decode_s"]),
            )
    return columns_of(
        [
            {
                "uri": row["uri"],
                "error": row["error"],
                "tokens_in": int(row["tokens_in"]),
                "tokens_out": written.get(row["uri"], (0, 0))[0],
                "bytes": written.get(row["uri"], (0, 0))[1],
                "decode_s": float(row["decode_s"]),
                "encode_s": float(row["encode_s"]),
                "compress_s": float(row["compress_s"]),
                "write_s": write_s if not row["error"] else 0.0,
            }
            for row in rows
        ]
    )


# -- batches as rows ----------------------------------------------------------------------------


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy batch (columns) as a list of row dicts."""
    columns = list(batch)
    count = len(batch[columns[0]]) if columns else 0
    return [{name: batch[name][i] for name in columns} for i in range(count)]


def columns_of(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Row dicts (all with the same keys) as a batch of columns."""
    return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}
