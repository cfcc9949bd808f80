"""`tokenreel index --follow` (issue 14): a directory receiving segments, a follower killed and
restarted, a growing HLS playlist on the loopback S3 endpoint. Waits poll the catalog (with a
deadline that only bounds a hang); nothing asserts on time."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from compression import CompressionConfig
from compression.hierarchy import pool_token_sets
from compression.models import load_video_llm
from jobs.index.follow import follow_source
from storage import open_store
from storage.ids import video_id_for
from storage.previews import read_preview_facts, read_preview_jpeg, strip_panels
from storage.token_files import read_token_set
from tokenreel.cli import main
from tokenreel.sample_videos import write_long_video

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL = "tiny-llava-ov"
SEGMENT_S = 6
CONFIG = CompressionConfig(retention_ratio=0.1, frames=4, frame_size=70, chunk_seconds=60.0)
HANG_S = 120.0  # a deadline against hangs only


def write_segment(path: Path, seed: int) -> Path:
    """A 6-second segment (1 fps), written elsewhere and renamed into place, as segmenters do."""
    staging = path.parent.parent / "staging"
    staging.mkdir(exist_ok=True)
    partial = write_long_video(staging / path.name, SEGMENT_S, fps=1, size=64, seed=seed)
    os.replace(partial, path)
    return path


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def preview_panels(store, source: str) -> tuple[int | None, int | None]:
    """(frames in the preview's facts, panels in its strip) of the source's video-level set."""
    key = (video_id_for(source), MODEL, CONFIG.stable_hash())
    facts = read_preview_facts(store.store_url, *key)
    jpeg = read_preview_jpeg(store.store_url, *key)
    return (facts and facts.frames), (jpeg and strip_panels(jpeg))


def chunk_windows(store, source: str) -> list[tuple[int, float, float]]:
    chunks = store.catalog.list_chunks(video_id_for(source), MODEL, CONFIG.stable_hash())
    return [(c.window, c.start_s, c.end_s) for c in chunks]


@pytest.fixture(scope="module")
def llm():
    return load_video_llm(MODEL, device="cpu")


@pytest.fixture
def follower(llm) -> Iterator[Callable[..., threading.Thread]]:
    """Start follow_source in a thread; every one started is stopped and joined at the end."""
    started: list[tuple[threading.Thread, threading.Event]] = []

    def start(source: str, store, **kwargs) -> threading.Thread:
        stop = threading.Event()
        result: dict = {}

        def run() -> None:
            config = kwargs.pop("config", CONFIG)
            result["summary"] = follow_source(
                source, store=store, llm=llm, config=config, stop=stop, poll_s=0.1, **kwargs
            )

        thread = threading.Thread(target=run, daemon=True)
        thread.stop, thread.result = stop, result  # type: ignore[attr-defined]
        thread.start()
        started.append((thread, stop))
        return thread

    yield start
    for thread, stop in started:
        stop.set()
        thread.join(HANG_S)


def test_follow_a_directory_receiving_segments(tmp_path: Path, follower) -> None:
    segments = tmp_path / "live"
    segments.mkdir()
    store = open_store(str(tmp_path / "store"))
    updates: list = []
    previews: list = []

    def on_chunk(chunk, video) -> None:
        updates.append(video)
        previews.append(preview_panels(store, str(segments)))

    thread = follower(str(segments), store, settle_s=0.5, on_chunk=on_chunk)
    for k in range(3):
        write_segment(segments / f"seg{k:05d}.mp4", seed=k)
        wait_for(lambda k=k: len(chunk_windows(store, str(segments))) == k + 1, f"chunk {k}")
    # A truncated last segment (an MP4 without its index) is retried, not recorded ...
    whole = write_segment(tmp_path / "whole.mp4", seed=3)
    (segments / "seg00003.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    time.sleep(1.0)  # several polls past settle_s
    assert len(chunk_windows(store, str(segments))) == 3
    # ... and indexed once it is whole.
    os.replace(whole, segments / "seg00003.mp4")
    wait_for(lambda: len(chunk_windows(store, str(segments))) == 4, "the repaired segment")
    thread.stop.set()
    thread.join(HANG_S)
    assert not thread.is_alive()

    windows = chunk_windows(store, str(segments))
    assert [w for w, _, _ in windows] == [0, 1, 2, 3]
    for (_, _, end), (_, start, _) in itertools.pairwise(windows):
        assert start == pytest.approx(end)  # each segment starts where the previous ended
    assert windows[-1][2] == pytest.approx(4 * SEGMENT_S)
    # The video-level set was updated incrementally: previous video-level set + new chunk set.
    chunks = store.catalog.list_chunks(video_id_for(str(segments)), MODEL, CONFIG.stable_hash())
    chunk_sets = [read_token_set(c.location) for c in chunks]
    expected = pool_token_sets(chunk_sets[:1], CONFIG)
    for chunk_set in chunk_sets[1:]:
        expected = pool_token_sets([expected, chunk_set], CONFIG)
    video_set = store.load(video_id_for(str(segments)), MODEL, CONFIG.stable_hash())
    assert torch.equal(video_set.tokens, expected.tokens)
    assert torch.equal(video_set.index, expected.index)
    assert video_set.frame_timestamps == tuple(t for c in chunk_sets for t in c.frame_timestamps)
    assert len(updates) == 4 and updates[-1].kept_count == video_set.kept_count
    # The preview grew with the video-level set: one panel per frame after every segment.
    assert previews == [(4 * k, 4 * k) for k in range(1, 5)]


def _follow_in_child(source: str, store_dir: str, llm) -> None:
    """A follower in a forked process (the model is already loaded: no start-up to wait for)."""
    stop = threading.Event()
    follow_source(
        source, store=open_store(store_dir), llm=llm, config=CONFIG, stop=stop, poll_s=0.1
    )


def test_a_killed_follower_resumes_without_loss_or_duplicates(
    tmp_path: Path, llm, capsys: pytest.CaptureFixture
) -> None:
    segments = tmp_path / "live"
    segments.mkdir()
    store_dir = tmp_path / "store"
    store = open_store(str(store_dir))

    def recorded() -> list[int]:
        return [w for w, _, _ in chunk_windows(store, str(segments))]

    for k in range(3):
        write_segment(segments / f"seg{k:05d}.mp4", seed=k)
    first = multiprocessing.get_context("fork").Process(
        target=_follow_in_child, args=(str(segments), str(store_dir), llm), daemon=True
    )
    first.start()
    try:
        wait_for(lambda: len(recorded()) >= 2, "two chunks before the kill")
    finally:
        first.kill()  # SIGKILL: no chance to finish anything
        first.join()
    after_kill = recorded()
    assert after_kill == list(range(len(after_kill)))
    for k in range(3, 5):
        write_segment(segments / f"seg{k:05d}.mp4", seed=k)

    # The restart is the command, stopped by SIGINT once everything is indexed.
    def interrupt_when_done() -> None:
        wait_for(lambda: len(recorded()) == 5, "all five chunks")
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_when_done, daemon=True)
    interrupter.start()
    code = main(
        ["index", str(segments), "--follow", "--store", str(store_dir), "--model", MODEL,
         "--frames", str(CONFIG.frames), "--retention-ratio", str(CONFIG.retention_ratio),
         "--chunk-seconds", "60", "--poll-seconds", "0.1"]
    )  # fmt: skip
    interrupter.join(HANG_S)
    assert code == 0  # a clean stop, not a KeyboardInterrupt
    # The restart indexed only what the killed follower had not recorded.
    assert f"{5 - len(after_kill)} chunk(s) indexed" in capsys.readouterr().out
    windows = chunk_windows(store, str(segments))
    assert [w for w, _, _ in windows] == [0, 1, 2, 3, 4]
    video_set = store.load(video_id_for(str(segments)), MODEL, CONFIG.stable_hash())
    stamps = video_set.frame_timestamps
    assert len(stamps) == 5 * CONFIG.frames and list(stamps) == sorted(set(stamps))
    assert max(stamps) < 5 * SEGMENT_S <= windows[-1][2] + 1e-6
    # The restart appended to the strip the killed follower left: one panel per frame.
    assert preview_panels(store, str(segments)) == (len(stamps), len(stamps))


def test_follow_a_growing_hls_playlist_on_s3(s3_bucket: str, tmp_path: Path, follower) -> None:
    import fsspec

    fs = fsspec.filesystem("s3")
    playlist = f"s3://{s3_bucket}/live/stream.m3u8"

    def publish(count: int, ended: bool) -> None:
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{SEGMENT_S}",
                 "#EXT-X-MEDIA-SEQUENCE:0"]  # fmt: skip
        for k in range(count):
            lines += [f"#EXTINF:{SEGMENT_S}.0,", f"seg{k}.mp4"]
        if ended:
            lines.append("#EXT-X-ENDLIST")
        fs.pipe_file(playlist, ("\n".join(lines) + "\n").encode())

    for k in range(3):
        local = write_segment(tmp_path / f"seg{k}.mp4", seed=k)
        fs.put_file(str(local), f"{s3_bucket}/live/seg{k}.mp4")
    store = open_store(str(tmp_path / "store"))
    publish(2, ended=False)
    thread = follower(playlist, store)
    wait_for(lambda: len(chunk_windows(store, playlist)) == 2, "the first two segments")
    publish(3, ended=True)
    thread.join(HANG_S)  # the playlist ended: the follower stops once it has indexed all
    assert not thread.is_alive()
    assert [w for w, _, _ in chunk_windows(store, playlist)] == [0, 1, 2]
    assert thread.result["summary"].indexed == 3


def test_a_growing_file_is_indexed_in_its_complete_windows(tmp_path: Path, follower) -> None:
    stream = write_long_video(tmp_path / "camera.ts", 20, fps=1, size=64)  # frames at 0..19 s
    config = CompressionConfig(retention_ratio=0.1, frames=4, frame_size=70, chunk_seconds=6.0)
    store = open_store(str(tmp_path / "store"))
    thread = follower(str(stream), store, config=config)

    def windows() -> list[tuple[int, float, float]]:
        chunks = store.catalog.list_chunks(video_id_for(str(stream)), MODEL, config.stable_hash())
        return [(c.window, c.start_s, c.end_s) for c in chunks]

    wait_for(lambda: len(windows()) == 3, "three complete windows")
    time.sleep(0.5)  # more polls: the window [18, 24) has no frame at or after 24 s yet
    thread.stop.set()
    thread.join(HANG_S)
    assert windows() == [(0, 0.0, 6.0), (1, 6.0, 12.0), (2, 12.0, 18.0)]
    video_set = store.load(video_id_for(str(stream)), MODEL, config.stable_hash())
    assert max(video_set.frame_timestamps) < 18.0
