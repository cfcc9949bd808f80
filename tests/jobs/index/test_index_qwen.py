"""The indexing job with the other plug-in family: Qwen2.5-VL's token sets (3D grid, seconds
per temporal step) go through Ray Data, storage and back into the model's answer path."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.config import CompressionConfig, MergeConfig
from compression.models import Question, load_video_llm
from jobs.index import index_videos
from storage import open_store, video_id_for
from tokenreel.sample_videos import make_sample_videos

pytestmark = pytest.mark.slow


def test_qwen_token_sets_round_trip_through_the_job(ray_session: None, tmp_path: Path) -> None:
    videos = make_sample_videos(tmp_path / "corpus", 2, frames=8, width=64, height=48, seed=11)
    store_url, catalog_url = str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite"
    summary = index_videos(
        [str(v) for v in videos], store_url=store_url, catalog_url=catalog_url,
        model="tiny-qwen2.5-vl", config=CompressionConfig(retention_ratio=0.05), frames=4,
        progress=False,
    )  # fmt: skip
    assert (summary.indexed, summary.failed) == (2, 0), summary.format()

    store = open_store(store_url, catalog_url)
    llm = load_video_llm("tiny-qwen2.5-vl")
    for video in videos:
        token_set = store.load(video_id_for(str(video)), "tiny-qwen2.5-vl", summary.config_hash)
        grid_t, grid_h, grid_w = token_set.grid
        assert grid_t == 2  # 4 frames, two per temporal step
        assert token_set.kept_count == CompressionConfig(retention_ratio=0.05).budget(
            grid_t * grid_h * grid_w
        )
        assert token_set.extras["seconds_per_grid_t"] > 0
        [answer] = llm.answer(
            [Question(token_set, "what moves?")], MergeConfig(layer=2, keep_ratio=0.5)
        )
        assert answer.visual_tokens_in == token_set.kept_count
        assert answer.visual_tokens_after_merge == MergeConfig(keep_ratio=0.5).kept_count(
            token_set.kept_count
        )
