"""Fixtures of the engine and scheduler tests: the tiny LLaVA-OV's engine and three stored
token sets."""

from __future__ import annotations

import numpy as np
import pytest

from compression import CompressionConfig, compress_video
from serving.engine import AnswerEngine
from storage.token_files import write_token_sets


@pytest.fixture(scope="module")
def engine() -> AnswerEngine:
    return AnswerEngine("tiny-llava-ov", device="cpu", cache_bytes=10**6)


@pytest.fixture(scope="module")
def locations(engine: AnswerEngine, tmp_path_factory: pytest.TempPathFactory) -> list:
    store = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    token_sets = []
    for i in range(3):
        frames = rng.integers(0, 255, (4 + 2 * i, 48, 48, 3), dtype=np.uint8)
        encoded = engine.llm.encode(frames, [0.5 * t for t in range(len(frames))])
        token_set = compress_video(encoded, CompressionConfig(retention_ratio=0.25))
        token_sets.append(token_set.with_metadata(model_id=engine.info.model_id, video_id=f"v{i}"))
    return write_token_sets(str(store), token_sets)
