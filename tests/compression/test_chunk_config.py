"""The chunked-indexing settings of `CompressionConfig` (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compression.config import CompressionConfig

STORED = Path(__file__).parents[1] / "storage" / "data" / "token_set_v1.location.json"


def test_keys_made_before_chunking_are_unchanged() -> None:
    # The stored fixture was written with the default config of its day: before the chunk fields
    # existed, and when DPC-KNN excluded each token from its own neighbours.
    then = CompressionConfig(dpc_knn_convention="exclude_self")
    assert then.stable_hash() == json.loads(STORED.read_text())["config_hash"]
    stored = {k: v for k, v in then.to_dict().items() if k not in ("chunk_seconds", "fps")}
    assert CompressionConfig.from_dict(stored) == then


def test_chunking_is_part_of_the_key_and_round_trips() -> None:
    chunked = CompressionConfig(chunk_seconds=60.0, fps=0.5)
    assert chunked.stable_hash() != CompressionConfig().stable_hash()
    assert chunked.stable_hash() != CompressionConfig(chunk_seconds=30.0, fps=0.5).stable_hash()
    assert CompressionConfig.from_dict(chunked.to_dict()) == chunked
    assert CompressionConfig.from_dict(CompressionConfig().to_dict()) == CompressionConfig()


def test_chunk_sets_keep_k_times_the_video_ratio() -> None:
    config = CompressionConfig(retention_ratio=0.02, chunk_seconds=60.0)
    assert config.chunk_config().retention_ratio == pytest.approx(0.08)
    assert config.chunk_config().tau == config.tau
    capped = CompressionConfig(retention_ratio=0.5, chunk_seconds=60.0)
    assert capped.chunk_config().retention_ratio == 1.0


@pytest.mark.parametrize(
    "settings",
    [
        {"fps": 1.0},
        {"chunk_ratio_factor": 2.0},
        {"chunk_seconds": 0.0},
        {"chunk_seconds": float("inf")},
        {"chunk_seconds": 60.0, "fps": -1.0},
        {"chunk_seconds": 60.0, "fps": 30.0},  # 1,800 frames a window
        {"chunk_seconds": 60.0, "chunk_ratio_factor": 0.5},
        {"chunk_seconds": 60.0, "method": "random"},
    ],
)
def test_bad_chunk_settings_are_refused(settings: dict) -> None:
    with pytest.raises(ValueError):
        CompressionConfig(**settings)
