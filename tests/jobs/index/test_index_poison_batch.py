"""A batch that kills its encoder process every time stops the job instead of restarting the
encoder forever, and loses nothing: its videos stay resumable (interrupted) for a later run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from ray import cloudpickle

from compression.models import model_frame_size
from jobs.index import IndexJobStopped, ModelLoader, index_videos
from storage import open_store
from tokenreel.sample_videos import make_sample_videos

pytestmark = pytest.mark.slow

# Ray workers cannot import test modules: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class EncoderThatDies:
    """The tiny model, except that encoding ends the worker process, as a native crash would."""

    def __init__(self, device: str = "cpu") -> None:
        from compression.models import load_video_llm

        self.inner = load_video_llm("tiny-llava-ov", device=device)
        self.model_id = self.inner.model_id

    def encode_batch(self, *args: Any, **kwargs: Any) -> Any:
        os._exit(3)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        os._exit(3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def load_encoder_that_dies(device: str = "cpu") -> EncoderThatDies:
    return EncoderThatDies(device)


def test_a_batch_that_always_kills_the_encoder_stops_the_job(
    ray_session: None, tmp_path: Path
) -> None:
    videos = make_sample_videos(tmp_path / "corpus", 2, frames=8, width=64, height=48)
    store_url, catalog_url = str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite"
    loader = ModelLoader("tiny-llava-ov", load_encoder_that_dies, model_frame_size("tiny-llava-ov"))
    with pytest.raises(IndexJobStopped) as raised:
        index_videos(
            [str(v) for v in videos], store_url=store_url, catalog_url=catalog_url,
            model=loader, frames=4, batch_size=2, progress=False,
        )  # fmt: skip
    message = str(raised.value)
    assert "No module named" not in message  # the encoder did load: it died encoding
    assert "after 0 of 2 videos" in message and "rerun" in message
    catalog = open_store(store_url, catalog_url).catalog
    # The run recorded its end: its videos read as interrupted (resumable), not as in progress.
    assert {r.status.value for r in catalog.list_videos(limit=10)} == {"interrupted"}
    assert len(catalog.list_videos("interrupted", limit=10)) == 2
    [run] = catalog.list_runs()
    assert run.counts.get("interrupted") == 1
