"""Decode the F uniformly sampled frames of one video: decord first, PyAV as the fallback.

Sampling: F frame indices spread uniformly over the video's n frames, round(linspace(0, n-1, F)).
A video with fewer than F frames therefore yields repeated frames (each about F/n times), so every
video gives exactly the F frames the model expects. Timestamps are the presentation times of the
chosen frames, so they stay exact under a variable frame rate.

Memory: only the sampled frames are decoded into memory (decord's `get_batch` on the sampled
indices; PyAV seeks to the keyframe before a sample unless that sample is reached sooner by
decoding on), and each is resized while it is converted so that its short side is `frame_size`
(downscale only, aspect kept; the model's processor makes the final resize). A 2-hour 4K video
never has more than F small frames in memory.

Rotation: frames are turned upright by the stream's display-matrix rotation (multiples of 90
degrees), as a player shows them. decord 0.6 mishandles rotated streams (wrong shapes, or an
error), so rotated videos go straight to PyAV.

Time limit: decord can deadlock while holding the GIL (decord #373), which no thread can interrupt.
Decision: each decode runs in a child process (`DecoderProcess`) that is kept between videos
(starting one costs ~0.3 s of imports) and killed when a decode overruns its time limit. A child
process rather than a Ray task per video: it works the same inside and outside Ray, and a decoder
crash (a segfault in FFmpeg) ends the child only, never the Ray worker that owns other rows. The
child is also replaced every `recycle_after` videos, which bounds decord's known leaks (#157, #208).
When decord fails or times out, the video is tried once more with PyAV, under a fresh time limit.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

Backend = Literal["auto", "decord", "pyav"]
BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav")


class DecodeError(Exception):
    """The video cannot be decoded; the message is the readable reason stored in the catalog."""


class DecodeTimeout(DecodeError):
    """Decoding ran past its time limit (the child process was killed)."""


@dataclass(frozen=True)
class DecodeSettings:
    """F frames, short side `frame_size` (None keeps the size), a time limit, a backend."""

    num_frames: int = 32
    frame_size: int | None = None
    timeout_s: float = 120.0
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {self.num_frames!r}")
        if self.frame_size is not None and (
            not isinstance(self.frame_size, int) or self.frame_size < 1
        ):
            raise ValueError(f"frame_size must be a positive int or None, got {self.frame_size!r}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number, got {self.timeout_s!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


@dataclass
class DecodedVideo:
    """The sampled frames of one video.

    frames: uint8 [F, H, W, 3], upright, short side at most `frame_size`.
    timestamps: presentation time in seconds of each frame in the source.
    frame_indices: index of each frame among the source's n frames (repeats when n < F).
    source_frame_count: n.
    source_size: (width, height) of the source as displayed (after rotation).
    backend: "decord" or "pyav", whichever decoded it.
    """

    frames: np.ndarray
    timestamps: tuple[float, ...]
    frame_indices: tuple[int, ...]
    source_frame_count: int
    source_size: tuple[int, int]
    backend: str


def sample_frame_indices(frame_count: int, num_frames: int) -> list[int]:
    """round(linspace(0, n-1, F)): uniform over the video, repeating frames when n < F."""
    if frame_count < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame, got n={frame_count}, F={num_frames}")
    return np.rint(np.linspace(0, frame_count - 1, num_frames)).astype(int).tolist()


def scaled_size(width: int, height: int, frame_size: int | None) -> tuple[int, int]:
    """(width, height) with the short side brought down to `frame_size`; never upscales."""
    short = min(width, height)
    if frame_size is None or short <= frame_size:
        return width, height
    scale = frame_size / short
    return max(1, round(width * scale)), max(1, round(height * scale))


# Set by `tokenreel --verbose` (tokenreel.cli); only then does ffmpeg's own chatter about a bad
# file reach stderr: otherwise the reason is what DecodeError says (and the catalog keeps).
VERBOSE_ENV = "TOKENREEL_VERBOSE"


def _set_ffmpeg_log_level() -> None:
    """Both decoders' ffmpeg libraries log errors only with --verbose, else nothing."""
    import decord

    verbose = os.environ.get(VERBOSE_ENV) == "1"
    decord.logging.set_level(decord.logging.ERROR if verbose else decord.logging.QUIET)
    av.logging.set_level(av.logging.ERROR if verbose else None)


def decode_video(path: str | os.PathLike[str], settings: DecodeSettings) -> DecodedVideo:
    """Decode in this process, without a time limit (see `DecoderProcess` for the guarded form)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    _set_ffmpeg_log_level()
    info = _probe(path)
    use_decord = settings.backend == "decord" or (settings.backend == "auto" and not info.rotation)
    if use_decord:
        try:
            return _decode_with_decord(path, info, settings)
        except Exception as exc:  # decord raises its own untyped errors; PyAV gets a try
            if settings.backend == "decord":
                raise DecodeError(f"decord: {_one_line(exc)}") from exc
    return _decode_with_pyav(path, info, settings)


# -- probing and the two backends --------------------------------------------------------------


@dataclass(frozen=True)
class _StreamInfo:
    width: int  # coded size, before rotation
    height: int
    rotation: int  # counter-clockwise degrees, a multiple of 90


def _probe(path: str) -> _StreamInfo:
    """Open with PyAV and decode the first frame: readable reasons for files that cannot work."""
    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a readable video container: {_one_line(exc)}") from exc
    with container:
        if not container.streams.video:
            kind = "audio only" if container.streams.audio else "no streams FFmpeg can use"
            raise DecodeError(f"no video stream ({kind})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise DecodeError("unsupported video codec: no decoder for this stream")
        first = next(_decoded_frames(container, stream), None)
        if first is None:
            raise DecodeError("the video stream has no decodable frame")
        rotation = round(first.rotation / 90) * 90 % 360
        return _StreamInfo(width=first.width, height=first.height, rotation=rotation)


def _decode_with_decord(path: str, info: _StreamInfo, settings: DecodeSettings) -> DecodedVideo:
    import decord

    width, height = scaled_size(info.width, info.height, settings.frame_size)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    count = len(reader)
    if count < 1:
        raise DecodeError("the video stream has no frames")
    wanted = sample_frame_indices(count, settings.num_frames)
    unique = sorted(set(wanted))
    frames = reader.get_batch(unique).asnumpy()
    if info.rotation:  # only when forced: `decode_video` sends rotated streams to PyAV
        frames = np.rot90(frames, k=info.rotation // 90, axes=(1, 2))
    starts = reader.get_frame_timestamp(unique)[:, 0]
    reader.seek(0)  # releases decoder buffers that get_batch keeps (decord #208)
    row = {index: i for i, index in enumerate(unique)}
    picks = [row[index] for index in wanted]
    return DecodedVideo(
        frames=np.ascontiguousarray(frames[picks]),
        timestamps=tuple(float(starts[i]) for i in picks),
        frame_indices=tuple(wanted),
        source_frame_count=count,
        source_size=_displayed_size(info),
        backend="decord",
    )


def _decode_with_pyav(path: str, info: _StreamInfo, settings: DecodeSettings) -> DecodedVideo:
    width, height = scaled_size(info.width, info.height, settings.frame_size)
    turns = info.rotation // 90
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one CPU per decode task; scale out, not up
        # Packet timestamps (no decoding) give n and each frame's presentation time exactly.
        presentation, keyframes = _packet_times(container, stream)
        if not presentation:
            raise DecodeError("the video stream has no frames")
        wanted = sample_frame_indices(len(presentation), settings.num_frames)
        targets = sorted({presentation[i] for i in wanted})
        images: dict[int, np.ndarray] = {}
        for target, frame in _frames_at(container, stream, targets, keyframes):
            image = frame.to_ndarray(format="rgb24", width=width, height=height)
            images[target] = np.rot90(image, k=turns) if turns else image
        if not images:
            raise DecodeError("no sampled frame could be decoded")
        time_base = float(stream.time_base)
    # A target past the last decodable frame (a damaged tail) takes the last frame decoded.
    decoded = sorted(images)
    chosen = [
        decoded[min(bisect.bisect_left(decoded, presentation[i]), len(decoded) - 1)] for i in wanted
    ]
    return DecodedVideo(
        frames=np.ascontiguousarray(np.stack([images[t] for t in chosen])),
        timestamps=tuple(t * time_base for t in chosen),
        frame_indices=tuple(wanted),
        source_frame_count=len(presentation),
        source_size=_displayed_size(info),
        backend="pyav",
    )


def _displayed_size(info: _StreamInfo) -> tuple[int, int]:
    quarter_turn = info.rotation in (90, 270)
    return (info.height, info.width) if quarter_turn else (info.width, info.height)


def _packet_times(container: Any, stream: Any) -> tuple[list[int], list[int]]:
    """Sorted presentation timestamps of all packets of `stream`, and those of its keyframes."""
    times, keys = [], []
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if packet.size and stamp is not None:
            times.append(stamp)
            if packet.is_keyframe:
                keys.append(stamp)
    return sorted(times), sorted(keys)


def _decoded_frames(container: Any, stream: Any) -> Iterator[Any]:
    """Frames from the current position on; a damaged packet is skipped, not fatal."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _frames_at(
    container: Any, stream: Any, targets: Sequence[int], keyframes: Sequence[int]
) -> Iterator[tuple[int, Any]]:
    """(target, first frame at or after it) for ascending targets, seeking only when it pays:
    when a keyframe lies between the last decoded frame and the target."""
    frames: Iterator[Any] | None = None
    position: int | None = None
    for target in targets:
        keyframe_ahead = position is not None and bisect.bisect_right(
            keyframes, target
        ) > bisect.bisect_right(keyframes, position)
        if frames is None or keyframe_ahead:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            frames = _decoded_frames(container, stream)
        for frame in frames:
            if frame.pts is None:
                continue
            position = frame.pts
            if frame.pts >= target:
                yield target, frame
                break
        else:
            return  # the stream ended early: later targets cannot be reached either


def _one_line(exc: BaseException) -> str:
    """A reason is one readable line, not FFmpeg's whole log (the catalog bounds its length)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# -- the guarded form: a child process with a time limit ----------------------------------------

_HEADER_BYTES = 8
_READY = "ready"
_CHILD_START_TIMEOUT_S = 120.0


class DecoderProcess:
    """Decodes in a long-lived child process and kills it when a decode overruns its limit.

    Not thread-safe: one per thread (see `shared_decoder`).
    """

    def __init__(self, recycle_after: int = 64) -> None:
        if recycle_after < 1:
            raise ValueError(f"recycle_after must be >= 1, got {recycle_after}")
        self.recycle_after = recycle_after
        self._child: subprocess.Popen[bytes] | None = None
        self._served = 0

    def decode(self, path: str | os.PathLike[str], settings: DecodeSettings) -> DecodedVideo:
        """Decode under `settings.timeout_s`; on a decord timeout, retry once with PyAV."""
        attempts: tuple[Backend, ...] = (
            ("auto", "pyav") if settings.backend == "auto" else (settings.backend,)
        )
        for backend in attempts:
            try:
                request = dataclasses.replace(settings, backend=backend)
                return self._request(os.fspath(path), request)
            except DecodeTimeout:
                if backend == attempts[-1]:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process dies: its stdin closes) and
        close its pipes (a recycled child must not leave two open files behind)."""
        child, self._child = self._child, None
        self._served = 0
        if child is None:
            return
        if child.poll() is None:
            child.kill()
            child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def _request(self, path: str, settings: DecodeSettings) -> DecodedVideo:
        # A child that dies may have died of something else (killed between videos, out of
        # memory); only a second death in a row, on a fresh child, is this video's doing.
        for attempt in range(2):
            child = self._running_child()
            assert child.stdin is not None and child.stdout is not None
            try:
                _send(child.stdin.fileno(), (path, settings))
                deadline = time.monotonic() + settings.timeout_s
                status, payload = _receive(child.stdout.fileno(), deadline)
                break
            except TimeoutError:
                self.close()
                backend = "PyAV" if settings.backend == "pyav" else "decord"
                raise DecodeTimeout(
                    f"decoding took longer than {settings.timeout_s:g} s ({backend})"
                ) from None
            except (EOFError, BrokenPipeError):
                code = child.wait()
                self._child = None
                if attempt == 1:
                    reason = f"the decoder process died ({_describe_exit(code)})"
                    raise DecodeError(reason) from None
        self._served += 1
        if self._served >= self.recycle_after:
            self.close()
        if status == "ok":
            return payload
        raise DecodeError(payload)

    def _running_child(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self.close()  # a dead child's pipes
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # importable even when not installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # `-c` with an import, not `-m jobs.index.decode`: the package imports this module before
        # runpy would run it as __main__, which made every child print a RuntimeWarning; and
        # pickled classes are `jobs.index.decode.*` on both sides.
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        try:
            ready = _receive(child.stdout.fileno(), time.monotonic() + _CHILD_START_TIMEOUT_S)
        except (TimeoutError, EOFError):
            child.kill()
            child.wait()
            raise RuntimeError("the decoder process did not start") from None
        if ready != _READY:
            raise RuntimeError(f"the decoder process said {ready!r} instead of {_READY!r}")
        self._child, self._served = child, 0
        return child


_per_thread = threading.local()


def shared_decoder() -> DecoderProcess:
    """This thread's `DecoderProcess`, kept for the thread's life: a Ray worker reuses its
    children across tasks, and the threads of a decode task (`jobs.index.stages`) each decode
    in a child of their own, so a video that hangs or crashes its child costs only itself."""
    decoder = getattr(_per_thread, "decoder", None)
    if decoder is None:
        decoder = _per_thread.decoder = DecoderProcess()
        atexit.register(decoder.close)
    return decoder


def _describe_exit(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _send(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(_HEADER_BYTES, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int, deadline: float | None) -> Any:
    size = int.from_bytes(_read_exactly(fd, _HEADER_BYTES, deadline), "big")
    return pickle.loads(_read_exactly(fd, size, deadline))


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(size - len(buffer), 1 << 20))
        if not chunk:
            raise EOFError
        buffer += chunk
    return bytes(buffer)


_CHILD_MAIN = "from jobs.index.decode import serve_requests; serve_requests()"


def serve_requests() -> None:
    """The child's loop: read (path, settings), answer ("ok", DecodedVideo) or ("error", reason)."""
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = sys.stdin.fileno()
    _send(out_fd, _READY)
    while True:
        try:
            path, settings = _receive(in_fd, None)
        except EOFError:
            return  # the parent closed the pipe or died
        try:
            answer: tuple[str, object] = ("ok", decode_video(path, settings))
        except DecodeError as exc:
            answer = ("error", _one_line(exc))
        except Exception as exc:  # any other failure is still this video's, not the child's
            answer = ("error", f"{type(exc).__name__}: {_one_line(exc)}")
        _send(out_fd, answer)
