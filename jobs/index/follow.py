"""Live and growing sources (issue 14): `tokenreel index SOURCE --follow`.

SOURCE is one of:

* an HLS playlist (`.m3u8`, local or on S3): its media segments, numbered by their media
  sequence number (EXT-X-MEDIA-SEQUENCE + position), are complete as soon as they are listed
  (the HLS contract); `#EXT-X-ENDLIST` ends the stream, and the follower stops once it has
  indexed every segment;
* a directory (local or an object-store prefix) receiving segment files (video suffixes),
  numbered by their position in name order (writers name segments so that they sort): a
  segment is complete once a later one exists, or once its size and modification time have not
  changed for `settle_s` (the last segment of a paused stream);
* a growing file (MPEG-TS or any container readable while written): windows of chunk_seconds
  of its frames' times; window k is complete once the file holds a frame at or after its end.

Each complete unit (a segment, or a window of the growing file) is one chunk: sampled (F frames,
or `fps`), encoded, compressed at the chunk ratio into a chunk set whose times are real times
in the stream (a segment starts where the previous chunk ended), and the video-level set is
updated INCREMENTALLY: `pool_token_sets([previous video-level set, new chunk set])` at the
video's config; old chunks are never decoded, encoded or pooled again. The chunk row and the new
video-level set are recorded in one catalog transaction (`Store.save_chunks`), so the service
answers over exactly what is indexed so far, and a killed follower loses at most the chunk it
was working on.

Decisions:
* Resume: the next unit is the one after the highest window recorded for (SOURCE, model,
  config), starting at that chunk's end time, from the recorded video-level set; a unit at or
  below it is never indexed again (never recorded twice).
* A unit that cannot be decoded (a truncated segment still being written, a playlist entry
  whose object is not there yet) is retried at the next poll; once a later unit is complete and
  the unit has failed `max_attempts` times, it is skipped (logged, its number left as a gap, its
  length not counted: later chunks start where the last indexed one ended), so that one broken
  segment cannot stall a live stream forever; a restart tries it again.
* A segment is one chunk whatever its length (segments are a few seconds in practice);
  `chunk_seconds` is still part of the config key, and is the window length of a growing file.
* Stopping: `stop` (a threading.Event; the command sets it on SIGINT/SIGTERM) is checked
  between units and while waiting; the unit in progress is finished and recorded first.
* The video id is that of SOURCE's URI; the content hash is empty (the bytes keep changing).
* Preview (`storage.previews`): after each chunk is recorded, its frames (downscaled to panels)
  are appended to the strip of the previous video-level set and the preview is rewritten, so it
  always has one panel per frame of the recorded set. The strip is kept in memory (bounded, see
  `FrameStrip`) and, on a restart, read back from the store (the JPEG records its panel count);
  panels a killed follower did not write (killed between the chunk and its preview) are grey.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import fsspec

from jobs.index.chunks import (
    Chunk,
    Window,
    WindowFrames,
    decode_window,
    encode_chunk,
    frame_times,
    plan_windows,
    sampled_indices,
    video_end,
)
from jobs.index.decode import DecodeError
from jobs.index.sources import VIDEO_SUFFIXES, local_copy, normalize_uri
from storage.ids import video_id_for
from storage.previews import FrameStrip, read_preview_jpeg, write_preview_quietly
from storage.urls import is_local

if TYPE_CHECKING:
    from compression import CompressionConfig, TokenSet
    from compression.models import VideoLLM
    from storage import Store

logger = logging.getLogger("tokenreel.follow")


@dataclass(frozen=True)
class Unit:
    """One chunk-to-be: a segment (`uri`, numbered `number`) or a window of a growing file."""

    number: int
    uri: str
    window: Window | None = None  # a growing file's window (absolute times); None: a segment
    members: tuple[int, ...] = ()  # the window's frame indices in the growing file


@dataclass
class FollowSummary:
    """What a follower did: chunks indexed, units skipped (number, reason), the last window."""

    video_id: str
    indexed: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    last_window: int | None = None


# -- what is complete -----------------------------------------------------------------------------


class _Playlist:
    """An HLS media playlist: its segments are complete once listed."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.ended = False

    def complete(self) -> list[Unit]:
        fs, path = fsspec.core.url_to_fs(self.uri)
        fs.invalidate_cache()  # s3fs caches listings and sizes: a live playlist changes
        text = fs.cat_file(path).decode("utf-8")
        sequence, units, pending_segment = 0, [], False
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                sequence = int(line.split(":", 1)[1])
            elif line.startswith("#EXTINF"):
                pending_segment = True
            elif line == "#EXT-X-ENDLIST":
                self.ended = True
            elif line and not line.startswith("#") and pending_segment:
                uri = normalize_uri(line, base=self.uri.rsplit("/", 1)[0])
                units.append(Unit(sequence + len(units), uri))
                pending_segment = False
        return units


class _Directory:
    """A directory receiving segment files (see the module docstring)."""

    ended = False

    def __init__(self, uri: str, settle_s: float) -> None:
        self.uri = uri
        self.settle_s = settle_s
        self._seen: dict[str, tuple[object, float]] = {}  # path -> (size, mtime), first seen at

    def complete(self) -> list[Unit]:
        fs, path = fsspec.core.url_to_fs(self.uri)
        fs.invalidate_cache()
        found = fs.find(path, detail=True)
        names = sorted(p for p in found if PurePosixPath(p).suffix.lower() in VIDEO_SUFFIXES)
        units = []
        now = time.monotonic()
        for number, name in enumerate(names):
            uri = name if is_local(self.uri) else f"{self.uri.partition('://')[0]}://{name}"
            info = found[name]
            state = (info.get("size"), info.get("mtime") or info.get("LastModified"))
            if self._seen.get(name, (None, 0.0))[0] != state:
                self._seen[name] = (state, now)
            later_exists = number < len(names) - 1
            settled = now - self._seen[name][1] >= self.settle_s
            if not (later_exists or settled):
                break
            units.append(Unit(number, uri))
        return units


class _GrowingFile:
    """A file being written: its complete windows of chunk_seconds."""

    ended = False

    def __init__(self, uri: str, chunk_seconds: float) -> None:
        if not is_local(uri):
            raise ValueError(f"a growing file must be local, got {uri}")
        self.uri = uri
        self.chunk_seconds = chunk_seconds
        self.times: list[float] = []

    def complete(self) -> list[Unit]:
        try:
            self.times = frame_times(self.uri)
        except DecodeError:
            return []  # nothing readable yet
        last = self.times[-1]
        return [
            Unit(window.index, self.uri, window, tuple(members))
            for window, members in plan_windows(self.times, self.chunk_seconds)
            if last >= window.start_s + self.chunk_seconds  # a frame at or after its end
        ]


def _source(
    uri: str, config: CompressionConfig, settle_s: float
) -> _Playlist | _Directory | _GrowingFile:
    if PurePosixPath(uri).suffix.lower() == ".m3u8":
        return _Playlist(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        return _Directory(uri, settle_s)
    assert config.chunk_seconds is not None
    return _GrowingFile(uri, config.chunk_seconds)


# -- one chunk -------------------------------------------------------------------------------------


def _frames_of(
    unit: Unit, offset_s: float, config: CompressionConfig, source: object
) -> WindowFrames:
    """The sampled frames of a unit, with times in the stream."""
    if unit.window is not None:  # a window of the growing file: its times are the stream's
        times = source.times  # type: ignore[attr-defined]
        indices = sampled_indices(times, list(unit.members), unit.window, config)
        return decode_window(unit.uri, times, unit.window, indices, config.frame_size)
    with local_copy(unit.uri) as copy:
        times = frame_times(copy.path)
        window = Window(unit.number, 0.0, video_end(times, times[-1]))
        indices = sampled_indices(times, list(range(len(times))), window, config)
        piece = decode_window(copy.path, times, window, indices, config.frame_size)
    shifted = Window(unit.number, offset_s, offset_s + window.end_s)
    return WindowFrames(shifted, piece.frames, tuple(offset_s + t for t in piece.timestamps))


# -- the follower ----------------------------------------------------------------------------------


def follow_source(
    source: str,
    *,
    store: Store,
    llm: VideoLLM,
    config: CompressionConfig,
    stop: threading.Event,
    poll_s: float = 2.0,
    settle_s: float | None = None,
    max_attempts: int = 3,
    on_chunk: Callable[[Chunk, TokenSet], None] | None = None,
) -> FollowSummary:
    """Index SOURCE's complete units as they come until `stop` is set (or an HLS playlist
    ends and is fully indexed); see the module docstring. `config` is the video's (with
    chunk_seconds); on_chunk(chunk, new video-level set) is called after each is recorded."""
    from compression.hierarchy import pool_token_sets

    if config.chunk_seconds is None:
        raise ValueError("following a source needs chunk_seconds (chunked indexing)")
    if poll_s <= 0 or max_attempts < 1:
        raise ValueError(f"need poll_s > 0 and max_attempts >= 1, got {poll_s}, {max_attempts}")
    uri = normalize_uri(source)
    video_id = video_id_for(uri)
    watched = _source(uri, config, 2 * poll_s if settle_s is None else settle_s)
    chunk_config = config.chunk_config()
    metadata = {"model_id": llm.model_id, "video_id": video_id, "source_uri": uri}
    summary = FollowSummary(video_id)
    video_set, last_window, offset = _resume(store, video_id, llm.model_id, config)
    strip = _resume_strip(store, video_set)
    summary.last_window = last_window
    attempts: dict[int, int] = {}
    while not stop.is_set():
        units = [u for u in watched.complete() if last_window is None or u.number > last_window]
        caught_up = True
        for position, unit in enumerate(units):
            if stop.is_set():
                caught_up = False
                break
            try:
                piece = _frames_of(unit, offset, config, watched)
            except (DecodeError, OSError) as exc:
                attempts[unit.number] = attempts.get(unit.number, 0) + 1
                later = position < len(units) - 1
                if later and attempts[unit.number] >= max_attempts:
                    logger.warning("skipping unit %d of %s: %s", unit.number, uri, exc)
                    summary.skipped.append((unit.number, str(exc)))
                    last_window = unit.number
                    continue
                caught_up = False
                break  # retried at the next poll; later units wait for it (times are cumulative)
            chunk = encode_chunk(llm, piece, chunk_config, metadata)
            inputs = [chunk.token_set] if video_set is None else [video_set, chunk.token_set]
            video_set = pool_token_sets(inputs, config).with_metadata(**metadata)
            store.save_chunks(video_set, [chunk.entry()])
            strip.append(piece.frames)
            write_preview_quietly(store.store_url, video_set, strip.jpeg())
            last_window, offset = unit.number, chunk.window.end_s
            summary.indexed += 1
            summary.last_window = last_window
            if on_chunk is not None:
                on_chunk(chunk, video_set)
        if watched.ended and caught_up:
            break
        stop.wait(poll_s)
    return summary


def _resume(
    store: Store, video_id: str, model_id: str, config: CompressionConfig
) -> tuple[TokenSet | None, int | None, float]:
    """(video-level set, last window, its end) recorded for the source; (None, None, 0.0) new."""
    config_hash = config.stable_hash()
    chunks = store.catalog.list_chunks(video_id, model_id, config_hash)
    if not chunks:
        return None, None, 0.0
    video_set = store.load(video_id, model_id, config_hash)
    return video_set, chunks[-1].window, chunks[-1].end_s


def _resume_strip(store: Store, video_set: TokenSet | None) -> FrameStrip:
    """The preview strip of the recorded video-level set, to append to: read back from the
    store, grey panels for frames it lacks (module docstring); empty for a new video."""
    if video_set is None:
        return FrameStrip()
    key = (video_set.video_id, video_set.model_id, video_set.config_hash)
    try:
        strip = FrameStrip.from_jpeg(read_preview_jpeg(store.store_url, *key))
    except OSError as exc:
        logger.warning("preview of %s not readable, its frames start grey: %s", key[0], exc)
        strip = FrameStrip()
    frames = len(video_set.frame_timestamps)
    if strip.count > frames:  # not this set's strip: nothing in it can be placed
        strip = FrameStrip()
    strip.pad(frames)
    return strip


def run_follow_command(args: argparse.Namespace, config: CompressionConfig) -> int:
    """`tokenreel index SOURCE --follow` (see `jobs.index.command`): until SIGINT/SIGTERM,
    which set a stop flag (never raise inside Ray's or torch's C calls); exit status 0 after a
    clean stop, 2 on invalid arguments."""
    from compression.models import model_name
    from jobs.index.stages import ModelLoader
    from storage import open_store

    if args.poll_seconds <= 0:
        print("tokenreel index: --poll-seconds must be > 0", file=sys.stderr)
        return 2
    loader = ModelLoader.by_name(model_name(args.model))
    chunk_seconds = args.chunk_seconds or DEFAULT_FOLLOW_CHUNK_SECONDS
    config = dataclasses.replace(
        config,
        frames=args.frames,
        frame_size=args.frame_size or loader.frame_size,
        chunk_seconds=chunk_seconds,
        fps=args.fps,
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        store = open_store(args.store, args.catalog)
        llm = loader.load(device="cuda" if args.gpus_per_worker > 0 else "cpu")
        print(f"following {args.source} (Ctrl-C stops)", file=sys.stderr, flush=True)
        summary = follow_source(
            args.source, store=store, llm=llm, config=config, stop=stop, poll_s=args.poll_seconds
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(
        f"video {summary.video_id}: {summary.indexed} chunk(s) indexed, last window "
        f"{summary.last_window}, {len(summary.skipped)} skipped; config {config.stable_hash()}"
    )
    return 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Segment sources cut chunks at segments; the key still records a window length (docstring).
DEFAULT_FOLLOW_CHUNK_SECONDS = 60.0
