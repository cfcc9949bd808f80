"""Chunked indexing of a long video (issue 14): a 20-minute synthetic video, static except for a
5-second event at 13:00, indexed in 40-second windows with the tiny LLaVA-OV."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import torch

from compression import CompressionConfig
from compression.config import MergeConfig
from compression.models import GenerationConfig, load_video_llm
from jobs.index import index_videos
from jobs.index.chunks import frame_times, index_long_video, plan_windows, sampled_indices
from jobs.index.decode import DecodeSettings
from jobs.index.video import index_video, sample_video
from serving.engine import AnswerEngine, AskJob
from serving.time_range import chunks_for_range
from storage import open_store
from storage.previews import read_preview_facts, read_preview_jpeg, strip_panels
from tokenreel.cli import main
from tokenreel.sample_videos import write_long_video, write_video

pytestmark = pytest.mark.usefixtures("single_torch_thread")

EVENT = (780.0, 5.0)  # 13:00-13:05
CHUNK_S = 40.0  # 12:50-13:10 lies inside the window [760, 800)
MODEL = "tiny-llava-ov"


def kept_times(token_set) -> set[float]:
    """The times of the frames the kept tokens come from (one frame per grid step here)."""
    stamps = torch.tensor(token_set.frame_timestamps)
    return set(stamps[token_set.index[:, 0].long()].tolist())


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("long") / "twenty_minutes.mp4"
    return write_long_video(path, 20 * 60, fps=1, size=64, events=[EVENT])


@pytest.fixture(scope="module")
def indexed(long_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    store_url = str(tmp_path_factory.mktemp("store"))
    summary = index_videos(
        str(long_video),
        store_url=store_url,
        model=MODEL,
        config=CompressionConfig(retention_ratio=0.05),
        frames=8,
        chunk_seconds=CHUNK_S,
        progress=False,
    )
    assert (summary.indexed, summary.failed) == (1, 0)
    assert summary.bytes_written > 0
    store = open_store(store_url)
    [record] = store.catalog.list_videos()
    video_set = store.load(record.video_id, record.model_id, record.config_hash)
    return {"store": store, "record": record, "video_set": video_set}


def test_uniform_sampling_of_the_whole_video_misses_the_event(long_video: Path) -> None:
    sampled = sample_video(str(long_video), DecodeSettings(num_frames=32))
    assert len(sampled.timestamps) == 32
    start, length = EVENT
    assert not [t for t in sampled.timestamps if start <= t < start + length]


def test_the_video_level_set_keeps_tokens_from_the_event(indexed: dict) -> None:
    video_set = indexed["video_set"]
    assert video_set.grid[0] == 30 * 8  # 30 windows of 8 frames
    assert video_set.kept_count == CompressionConfig(retention_ratio=0.05).budget(
        video_set.original_count
    )
    start, length = EVENT
    assert [t for t in kept_times(video_set) if start <= t < start + length]
    chunks = indexed["store"].catalog.list_chunks(
        video_set.video_id, video_set.model_id, video_set.config_hash
    )
    assert [(c.window, c.start_s) for c in chunks] == [(k, k * CHUNK_S) for k in range(30)]
    assert chunks[-1].end_s == pytest.approx(1200.0)


def test_the_preview_has_a_panel_for_each_frame_of_the_video_level_set(indexed: dict) -> None:
    from io import BytesIO

    from PIL import Image

    store, video_set = indexed["store"], indexed["video_set"]
    key = (video_set.video_id, video_set.model_id, video_set.config_hash)
    facts = read_preview_facts(store.store_url, *key)
    jpeg = read_preview_jpeg(store.store_url, *key)
    assert facts is not None and jpeg is not None
    # The console draws the grid (sum of the chunks' T, H, W) over the panels: 30 windows x 8.
    assert facts.grid == video_set.grid and facts.frames == len(video_set.frame_timestamps) == 240
    assert facts.frames % video_set.grid[0] == 0
    strip = Image.open(BytesIO(jpeg))
    assert strip_panels(jpeg) == 240 and strip.width == 240 * strip.height  # 64 x 64 frames
    assert facts.duration_s == max(video_set.frame_timestamps)


def test_a_time_range_question_uses_only_that_chunk(indexed: dict) -> None:
    store, record = indexed["store"], indexed["record"]
    location = record.location
    chunks = chunks_for_range(store.catalog, location, (770.0, 790.0))
    assert [(c.start_s, c.end_s) for c in chunks] == [(760.0, 800.0)]
    engine = AnswerEngine(MODEL, device="cpu", cache_bytes=10**7)
    job = AskJob(
        record.video_id,
        location,
        "what happens?",
        None,
        MergeConfig(layer=2),
        GenerationConfig(max_new_tokens=4),
        chunks=tuple(c.location for c in chunks),
        chunks_span=(760.0, 800.0),
    )

    async def ask() -> tuple:
        prepared = await engine.prepare(job)
        return prepared, engine.answer_batch([prepared])

    prepared, [response] = asyncio.run(ask())
    token_set = prepared.question.token_set
    assert kept_times(token_set) <= set(range(760, 800))
    assert token_set.original_count == 8 * 9  # one window of 8 frames of 3 x 3 tokens
    assert token_set.kept_count == CompressionConfig(retention_ratio=0.05).budget(72)
    assert response.tokens.visual_in == token_set.kept_count
    # The tiny word-level tokenizer has no digits: check the text the chat template is given.
    [message] = engine.llm.chat_messages(prepared.question)
    timeline = message["content"][1]["text"]
    assert timeline.startswith("The video spans 12:40-13:20; the frames shown are at ")
    assert message["content"][2]["text"] == "what happens?"


def test_one_chunk_is_todays_token_set_bit_for_bit(tmp_path: Path) -> None:
    from tokenreel.sample_videos import synthetic_frames

    path = write_video(tmp_path / "short.mp4", synthetic_frames(24, 96, 96, seed=3), fps=8)
    llm = load_video_llm(MODEL, device="cpu")
    config = CompressionConfig(retention_ratio=0.1, frames=16, frame_size=70)
    [today] = index_video(llm, str(path), DecodeSettings(16, frame_size=70), [config])
    chunked_config = dataclasses.replace(config, chunk_seconds=60.0)
    video_set, [chunk] = index_long_video(
        llm, str(path), chunked_config, open_store(str(tmp_path / "store"))
    )
    for token_set in (video_set, chunk.token_set):
        for name in ("tokens", "index", "kind", "size", "scores", "assignment"):
            assert torch.equal(getattr(token_set, name), getattr(today, name)), name
        assert token_set.frame_timestamps == today.frame_timestamps
        assert token_set.grid == today.grid


def test_windows_cut_on_frame_times_and_sample_per_window() -> None:
    times = [i * 0.5 for i in range(250)]  # 125 s at 2 fps
    windows = plan_windows(times, 60.0)
    assert [(w.index, w.start_s, len(members)) for w, members in windows] == [
        (0, 0.0, 120),
        (1, 60.0, 120),
        (2, 120.0, 10),
    ]
    assert windows[-1][0].end_s == pytest.approx(125.0)
    window, members = windows[1]
    by_frames = sampled_indices(times, members, window, CompressionConfig(frames=4))
    # round(linspace(0, 119, 4)) = 0, 40, 79, 119 of the window's frames, 0.5 s apart
    assert [times[i] for i in by_frames] == [60.0, 80.0, 99.5, 119.5]
    fps = CompressionConfig(chunk_seconds=60.0, fps=0.1)
    assert [times[i] for i in sampled_indices(times, members, window, fps)] == [
        60.0 + 10 * k for k in range(6)
    ]


def test_frame_times_of_a_written_video(long_video: Path) -> None:
    times = frame_times(str(long_video))
    assert len(times) == 1200 and times[0] == 0.0 and times[-1] == pytest.approx(1199.0)


def test_fps_needs_chunk_seconds(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    video = write_long_video(tmp_path / "v.mp4", 4, fps=1, size=64)
    code = main(["index", str(video), "--store", str(tmp_path / "s"), "--fps", "1"])
    assert code == 2
    assert "chunk_seconds" in capfd.readouterr().err  # the CLI writes to the terminal's fd
