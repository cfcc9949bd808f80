"""The indexing API's checks and its summary, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.index import IndexSummary, ModelLoader, index_videos
from tokenreel.cli import main


def test_tiny_llava_decodes_to_its_vision_tower_side() -> None:
    loader = ModelLoader.by_name("tiny-llava-ov")
    assert loader.model_id == "tiny-llava-ov"
    assert loader.frame_size == 70  # the tiny SigLIP reads 70 x 70 frames
    assert ModelLoader.by_name("tiny-qwen2.5-vl").frame_size is None  # keeps the aspect


@pytest.mark.parametrize(
    "options",
    [
        {"workers": 0},
        {"workers": "4:2"},
        {"batch_size": 0},
        {"decode_workers": 0},
        {"decode_workers": "x"},
        {"decode_threads": 0},
        {"gpus_per_worker": -1},
        {"ray_address": "auto", "num_cpus": 2},
    ],
)
def test_bad_options_fail_before_any_work(tmp_path: Path, options: dict) -> None:
    with pytest.raises(ValueError):
        index_videos(tmp_path, store_url=str(tmp_path / "store"), **options)
    assert not (tmp_path / "store").exists()


def test_command_reports_a_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["index", str(tmp_path / "missing"), "--store", str(tmp_path / "store")])
    assert code == 2
    assert "SOURCE not found" in capsys.readouterr().err


def test_summary_text_names_counts_speed_and_failures() -> None:
    summary = IndexSummary(
        run_id="r1",
        store_url="/data/store",
        catalog_url="sqlite:////data/store/catalog.sqlite",
        model_id="tiny-llava-ov",
        config_hash="abc",
        total=5,
        skipped=1,
        indexed=3,
        failed=1,
        tokens_in=300,
        tokens_out=6,
        bytes_written=2_000_000,
        pipeline_s=2.0,
        stage_s={"decode": 1.0, "encode": 2.0, "compress": 0.5, "write": 0.25},
        failures=[("/v/bad.mp4", "decode: empty file (0 bytes)")],
    )
    assert summary.videos_per_second == 1.5
    text = summary.format()
    for expected in ("3 indexed, 1 skipped, 1 failed", "2.00% kept", "2.00 MB", "1.50 videos/s",
                     "/data/store", "/v/bad.mp4: decode: empty file"):  # fmt: skip
        assert expected in text
    assert summary.counts()["bytes_written"] == 2_000_000
