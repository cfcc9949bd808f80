"""Chunked indexing of long videos (issue 14): consecutive time windows -> chunk token sets ->
one video-level token set by the hierarchical global pool.

A video whose frames all lie before `chunk_seconds` is ONE chunk and is indexed exactly as
today (`jobs.index.video`: the same decoder, F frames over the whole video, the outer stage at
the video's ratio), so its token set is bit for bit today's; its one chunk row holds that same
set. A longer video is cut into windows [k S, (k + 1) S) of its frames' presentation times; each
window is decoded on its own (only its sampled frames are converted, and only one window's
frames are ever held), encoded, and compressed at the chunk ratio (`CompressionConfig.
chunk_config`: min(1, k r), decision documented there) into a chunk set whose timestamps are the
real times in the video. The video-level set is `compression.hierarchy.pool_token_sets` over all
chunk sets at the video's ratio (t re-based to the union's grid steps; `frame_timestamps` keep
the real times). Chunk sets and the video-level set land in one file and one catalog transaction
(`Store.save_chunks`).

Sampling in a window: `frames` F frames by today's rule (round(linspace(0, n - 1, F)) over the
window's n frames), or, with `fps`, the first frame at or after each start + i / fps (repeats
dropped). Decisions: windows are cut on frame times (a window holds the frames presented in it;
a window without frames is skipped, so window numbers can have gaps); the last window may be
shorter than S; window decoding uses PyAV in this process (seek to the keyframe before the
window's first sample, decode on to its last): decord reads the whole index per open and is kept
for today's one-pass path only. Rotation metadata is not applied to windows (the one-pass path
applies it).

This path runs in the calling process, one video after another, window after window (memory:
one window's frames plus the chunk sets, ~k r of the video's tokens); scale out by running
several commands over disjoint sources. It does not use the Ray pipeline of `jobs.index.job`.

Preview (`storage.previews`): every window's sampled frames, downscaled to panels as soon as the
window is decoded, side by side in time order: one panel per entry of the video-level set's
`frame_timestamps` (the chunks' concatenated, as `pool_token_sets` builds them), so the console's
token grid (sum of the chunks' T) lines up with it. Written after the token sets, quietly.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from jobs.index.decode import DecodeError, DecodeSettings, sample_frame_indices, scaled_size
from jobs.index.heartbeat import DEFAULT_HEARTBEAT_S, run_heartbeat
from jobs.index.planning import register_todo
from jobs.index.sources import iter_sources, local_copy, source_label
from jobs.index.video import sample_video
from storage.ids import video_id_for
from storage.previews import FrameStrip, write_preview_quietly

if TYPE_CHECKING:
    from compression import CompressionConfig, TokenSet
    from compression.models import VideoLLM
    from jobs.index.stages import ModelLoader
    from storage import Store


@dataclass(frozen=True)
class Window:
    """Window `index` of a video: the frames presented in [start_s, end_s)."""

    index: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class WindowFrames:
    """The sampled frames of one window (uint8 [F, H, W, 3]) and their times in seconds."""

    window: Window
    frames: np.ndarray
    timestamps: tuple[float, ...]


@dataclass(frozen=True)
class Chunk:
    """One indexed window: its window and its chunk token set."""

    window: Window
    token_set: TokenSet

    def entry(self) -> tuple[int, float, float, TokenSet]:
        """What `Store.save_chunks` takes."""
        return (self.window.index, self.window.start_s, self.window.end_s, self.token_set)


def frame_times(path: str) -> list[float]:
    """Presentation times (seconds, ascending) of every frame of the first video stream, read
    from the packets without decoding, from the stream's start time (an MPEG-TS stream starts
    past 0); DecodeError when there are none."""
    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a readable video container: {exc}") from exc
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        base, origin = float(stream.time_base), _origin(stream)
        stamps = []
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if packet.size and stamp is not None:
                stamps.append(stamp)
    if not stamps:
        raise DecodeError("the video stream has no frames")
    return [(s - origin) * base for s in sorted(stamps)]


def _origin(stream: Any) -> int:
    """The pts that time 0 of `frame_times` stands for."""
    return int(stream.start_time) if stream.start_time is not None else 0


def plan_windows(times: Sequence[float], chunk_seconds: float) -> list[tuple[Window, list[int]]]:
    """The windows of a video with frames at `times`, each with its frames' indices."""
    windows: dict[int, list[int]] = {}
    for i, t in enumerate(times):
        windows.setdefault(int(t // chunk_seconds), []).append(i)
    last = times[-1]
    return [
        (
            Window(k, k * chunk_seconds, min((k + 1) * chunk_seconds, video_end(times, last))),
            members,
        )
        for k, members in sorted(windows.items())
    ]


def video_end(times: Sequence[float], last: float) -> float:
    """The video's end: the last frame's time plus one frame interval (the median one)."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return last + max(step, 1e-3)


def sampled_indices(
    times: Sequence[float], members: Sequence[int], window: Window, config: CompressionConfig
) -> list[int]:
    """The frame indices sampled in a window (see the module docstring)."""
    if config.fps is None:
        return [members[i] for i in sample_frame_indices(len(members), config.frames)]
    chosen: list[int] = []
    target = window.start_s
    while target < window.end_s:
        i = bisect.bisect_left(times, target - 1e-9)
        if i <= members[-1] and (not chosen or i != chosen[-1]):
            chosen.append(max(i, members[0]))
        target += 1.0 / config.fps
    return chosen or [members[0]]


def decode_window(
    path: str,
    times: Sequence[float],
    window: Window,
    indices: Sequence[int],
    frame_size: int | None,
) -> WindowFrames:
    """Decode the frames `indices` (ascending, repeats allowed) of one window with PyAV: seek to
    the keyframe before the first, decode on to the last. When the seek overshoots (MPEG-TS
    seeks by byte estimates), decode from the start instead."""
    wanted = sorted(set(indices))
    images: dict[int, np.ndarray] = {}
    for seek in (True, False):
        images = _decode_frames(path, times, wanted, frame_size, seek)
        if wanted[0] in images:
            break
    if not images:
        raise DecodeError(f"no frame of window {window.index} could be decoded")
    decoded = sorted(images)
    # A sample that did not decode (a damaged packet) takes the nearest later decoded frame.
    chosen = [decoded[min(bisect.bisect_left(decoded, i), len(decoded) - 1)] for i in indices]
    return WindowFrames(
        window,
        np.ascontiguousarray(np.stack([images[i] for i in chosen])),
        tuple(times[i] for i in chosen),
    )


def _decode_frames(
    path: str, times: Sequence[float], wanted: list[int], frame_size: int | None, seek: bool
) -> dict[int, np.ndarray]:
    """{frame index: RGB image} of the `wanted` frames found decoding from a seek (or from the
    start) on."""
    images: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        base, origin = float(stream.time_base), _origin(stream)
        if seek:
            container.seek(origin + round(times[wanted[0]] / base), stream=stream, backward=True)
        position = 0
        for frame in _frames(container, stream):
            if frame.pts is None:
                continue
            t = (frame.pts - origin) * base
            while position < len(wanted) and times[wanted[position]] < t - 1e-6:
                position += 1  # a frame that never decoded: a later one stands in
            if position == len(wanted):
                break
            if abs(times[wanted[position]] - t) <= 1e-6:
                width, height = scaled_size(frame.width, frame.height, frame_size)
                images[wanted[position]] = frame.to_ndarray(
                    format="rgb24", width=width, height=height
                )
                position += 1
                if position == len(wanted):
                    break
    return images


def _frames(container: Any, stream: Any) -> Iterator[Any]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def windows_of(path: str, config: CompressionConfig) -> Iterator[WindowFrames]:
    """The sampled frames of each window of the video at `path`, one window at a time."""
    assert config.chunk_seconds is not None
    times = frame_times(path)
    for window, members in plan_windows(times, config.chunk_seconds):
        indices = sampled_indices(times, members, window, config)
        yield decode_window(path, times, window, indices, config.frame_size)


def encode_chunk(
    llm: VideoLLM, piece: WindowFrames, config: CompressionConfig, metadata: dict[str, str]
) -> Chunk:
    """Encode one window and compress it into its chunk set (at `config`, a chunk config)."""
    from compression import compress_video

    encoded = llm.encode(piece.frames, piece.timestamps)
    token_set = compress_video(encoded, config).with_metadata(**metadata).to("cpu")
    return Chunk(piece.window, token_set)


def index_long_video(
    llm: VideoLLM,
    uri: str,
    config: CompressionConfig,
    store: Store,
    run_id: str | None = None,
    fingerprint: str | None = None,
) -> tuple[TokenSet, list[Chunk]]:
    """Index one video in windows (see the module docstring); returns its video-level set and
    its chunks, already saved in `store` as ALL the video's chunks (a re-index replaces every
    old chunk row) with `fingerprint`, the one its source was listed with. `config` is the
    video's (with `chunk_seconds`)."""
    from compression import compress_video
    from compression.hierarchy import pool_token_sets

    if config.chunk_seconds is None:
        raise ValueError("chunked indexing needs config.chunk_seconds")
    started = time.perf_counter()
    with local_copy(uri) as copy:
        metadata = {
            "model_id": llm.model_id,
            "video_id": video_id_for(uri),
            "source_uri": uri,
            "content_hash": copy.content_hash,
        }
        times = frame_times(copy.path)
        strip = FrameStrip()
        if times[-1] < config.chunk_seconds and config.fps is None:
            # One chunk: today's path, so the set is bit for bit today's.
            settings = DecodeSettings(num_frames=config.frames, frame_size=config.frame_size)
            video = sample_video(copy.path, settings)
            strip.append(video.frames)
            encoded = llm.encode(video.frames, video.timestamps)
            token_set = compress_video(encoded, config).with_metadata(**metadata).to("cpu")
            chunks = [Chunk(Window(0, 0.0, video_end(times, times[-1])), token_set)]
        else:
            chunk_config = config.chunk_config()
            chunks = []
            for piece in windows_of(copy.path, config):
                strip.append(piece.frames)
                chunks.append(encode_chunk(llm, piece, chunk_config, metadata))
    video_set = pool_token_sets([c.token_set for c in chunks], config).with_metadata(**metadata)
    store.save_chunks(
        video_set,
        [c.entry() for c in chunks],
        run_id=run_id,
        duration_s=time.perf_counter() - started,
        fingerprint=fingerprint,
        all_windows=True,
    )
    write_preview_quietly(store.store_url, video_set, strip.jpeg())
    return video_set, chunks


@dataclass(frozen=True)
class ChunkedRun:
    """What `index_videos_in_chunks` did (`jobs.index.job` reports it as an `IndexSummary`)."""

    run_id: str
    store_url: str
    catalog_url: str
    model_id: str
    config_hash: str
    total: int
    skipped: int
    indexed: int
    tokens_in: int
    tokens_out: int
    bytes_written: int  # row groups of the chunk sets and the video-level sets recorded
    elapsed_s: float
    failures: list[tuple[str, str]]
    skipped_failed: int = 0  # failed before and not retried


def index_videos_in_chunks(
    source: str | os.PathLike[str] | Sequence[str],
    *,
    store_url: str | None,
    catalog_url: str | None,
    loader: ModelLoader,
    config: CompressionConfig,
    retry_failed: bool = False,
    device: str = "cpu",
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
) -> ChunkedRun:
    """`index_videos` with `config.chunk_seconds` set: every video SOURCE names, in windows
    (this process, one video at a time; see the module docstring). A video that cannot be
    decoded is recorded failed with its reason; a rerun skips indexed videos, and re-indexes one
    whose source changed since (listed fingerprints, `jobs.index.planning`), its old video-level
    set and chunks served until the new ones are recorded. The run heartbeats every
    `heartbeat_s` seconds (`jobs.index.heartbeat`) and records its end however it stops, so its
    videos never stay `pending` after it."""
    from storage import open_store
    from storage.catalog import check_heartbeat_interval

    check_heartbeat_interval(heartbeat_s)
    if config.frame_size is None:
        config = dataclasses.replace(config, frame_size=loader.frame_size)
    listing = iter_sources(source)  # SOURCE's own errors before the run starts
    store = open_store(store_url, catalog_url)
    catalog = store.catalog
    model_id, config_hash = loader.model_id, config.stable_hash()
    run_id = catalog.start_run(
        {
            "source": source_label(source),
            "model": model_id,
            "config": config.to_dict(),
            "chunked": True,
        }
    )
    tally = _ChunkedTally()
    started = time.perf_counter()
    with run_heartbeat(catalog, run_id, heartbeat_s):
        try:
            todo = register_todo(
                catalog, listing, model_id, config_hash, run_id=run_id, retry_failed=retry_failed
            )
            started = time.perf_counter()
            try:
                llm = loader.load(device=device) if len(todo.videos) else None
                for uri, fingerprint in todo.videos.rows():
                    _index_one(llm, uri, fingerprint, config, store, run_id, model_id, tally)
            finally:
                todo.videos.close()
        except BaseException:
            # Ctrl-C, a storage error: the end is recorded, the rest reads interrupted (a
            # SIGTERM or SIGKILL ends the process at once: its heartbeat goes stale instead).
            catalog.finish_run(run_id, {**tally.counts(), "interrupted": 1})
            raise
        catalog.finish_run(run_id, tally.counts())
    return ChunkedRun(
        run_id=run_id,
        store_url=store.store_url,
        catalog_url=catalog.url,
        model_id=model_id,
        config_hash=config_hash,
        total=todo.listed,
        skipped=todo.listed - len(todo.videos),
        skipped_failed=todo.skipped_failed,
        indexed=tally.indexed,
        tokens_in=tally.tokens_in,
        tokens_out=tally.tokens_out,
        bytes_written=tally.bytes_written,
        elapsed_s=time.perf_counter() - started,
        failures=tally.failures,
    )


@dataclass
class _ChunkedTally:
    """What a chunked run has done so far (also what it records if it is stopped)."""

    indexed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    bytes_written: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"indexed": self.indexed, "failed": len(self.failures)}


def _index_one(
    llm: VideoLLM,
    uri: str,
    fingerprint: str | None,
    config: CompressionConfig,
    store: Store,
    run_id: str,
    model_id: str,
    tally: _ChunkedTally,
) -> None:
    """Index one listed video in windows into `store`, counting it into `tally`; a video that
    cannot be decoded or read is recorded failed with its reason."""
    catalog, config_hash = store.catalog, config.stable_hash()
    try:
        video_set, _ = index_long_video(llm, uri, config, store, run_id, fingerprint)
    except (DecodeError, OSError) as exc:
        reason = f"decode: {exc}" if isinstance(exc, DecodeError) else f"read: {exc}"
        catalog.record_failed(uri, model_id, config_hash, reason, run_id=run_id)
        tally.failures.append((uri, reason))
        return
    tally.indexed += 1
    tally.tokens_in += video_set.original_count
    tally.tokens_out += video_set.kept_count
    chunks = catalog.list_chunks(video_set.video_id, model_id, config_hash)
    video = catalog.locate(video_set.video_id, model_id, config_hash)
    tally.bytes_written += sum(c.location.length for c in chunks) + (video.length if video else 0)
