"""`tokenreel videos` and `tokenreel runs` over a real local store, and the previews they read
tokens-in from."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from storage_factory import make_token_set

from storage.previews import (
    FRAME_HEIGHT,
    frame_strip_jpeg,
    read_preview_facts,
    read_preview_jpeg,
    write_preview_quietly,
)
from storage.store import open_store
from storage.videos_command import human_bytes
from tokenreel.cli import build_parser


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """Two indexed videos (one with a preview), one failed, in a finished and an interrupted
    run."""
    root = tmp_path / "store"
    store = open_store(str(root))
    catalog = store.catalog
    finished = catalog.start_run({"source": "/srv/clips", "model": "test-model"})
    with_preview, without = make_token_set(1), make_token_set(2)
    store.save([with_preview, without], run_id=finished)
    frames = np.zeros((4, 30, 40, 3), np.uint8)
    write_preview_quietly(store.store_url, store.load(_id(with_preview)), frame_strip_jpeg(frames))
    catalog.record_failed(
        "/srv/clips/broken.mp4",
        "test-model",
        with_preview.config_hash,
        "decode: moov atom not found",
        run_id=finished,
    )
    catalog.finish_run(finished, {"indexed": 2, "failed": 1})
    interrupted = catalog.start_run({"source": "/srv/more", "model": "test-model"})
    catalog.register_pending(
        ["/srv/more/left.mp4"], "test-model", with_preview.config_hash, run_id=interrupted
    )
    catalog.finish_run(interrupted, {"indexed": 0, "failed": 0, "interrupted": 1})
    return root


def _id(token_set) -> str:
    from storage.ids import video_id_for

    return video_id_for(token_set.source_uri)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = build_parser(argv[0]).parse_args(list(argv))
    from importlib import import_module

    code = import_module(args._module).run(args)
    return code, capsys.readouterr().out


def test_videos_lists_status_reason_tokens_and_bytes(store_dir: Path, capsys) -> None:
    code, out = _run(capsys, "videos", "--store", str(store_dir), "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["total"] == 4
    by_status = {}
    for video in listing["videos"]:
        by_status.setdefault(video["status"], []).append(video)
    [left] = by_status["interrupted"]  # its run stopped before it: a rerun resumes it
    assert left["tokens_kept"] is None
    [failed] = by_status["failed"]
    assert failed["reason"] == "decode: moov atom not found" and failed["bytes"] is None
    indexed = {v["video_id"]: v for v in by_status["indexed"]}
    first, second = indexed[_id(make_token_set(1))], indexed[_id(make_token_set(2))]
    assert (first["tokens_in"], first["tokens_kept"]) == (36, 12)  # grid 4x3x3, 12 kept
    assert second["tokens_in"] is None  # no preview: unknown, not invented
    assert first["bytes"] > 0

    code, out = _run(capsys, "videos", "--store", str(store_dir))
    assert code == 0 and "36 -> 12" in out and "moov atom not found" in out
    assert "interrupted" in out and "1-4 of 4" in out


def test_videos_filters_by_status_and_inspects_one(store_dir: Path, capsys) -> None:
    code, out = _run(capsys, "videos", "--store", str(store_dir), "--status", "failed", "--json")
    assert [v["status"] for v in json.loads(out)["videos"]] == ["failed"]
    video = _id(make_token_set(1))
    code, out = _run(capsys, "videos", video, "--store", str(store_dir))
    assert code == 0 and f"video_id: {video}" in out and "tokens_in: 36" in out
    code, _ = _run(capsys, "videos", "0123456789abcdef", "--store", str(store_dir))
    assert code == 1


def test_runs_lists_counts_state_and_settings(store_dir: Path, capsys) -> None:
    code, out = _run(capsys, "runs", "--store", str(store_dir), "--json")
    runs = json.loads(out)["runs"]
    assert [r["state"] for r in runs] == ["interrupted", "finished"]  # newest first
    assert runs[1]["counts"] == {"indexed": 2, "failed": 1}
    assert runs[1]["settings"]["source"] == "/srv/clips"
    code, out = _run(capsys, "runs", "--store", str(store_dir))
    assert code == 0 and "interrupted" in out and "/srv/more" in out


def test_a_preview_is_the_frame_strip_and_the_facts(tmp_path: Path) -> None:
    frames = np.zeros((3, 20, 40, 3), np.uint8)
    frames[1, ..., 0] = 255  # the middle frame red
    token_set = make_token_set(3, grid=(3, 2, 2), kept=3).with_metadata(video_id="clip3")
    write_preview_quietly(str(tmp_path), token_set, frame_strip_jpeg(frames))
    key = ("clip3", token_set.model_id, token_set.config_hash)
    strip = Image.open(io.BytesIO(read_preview_jpeg(str(tmp_path), *key)))
    assert strip.size == (3 * 2 * FRAME_HEIGHT, FRAME_HEIGHT)  # aspect kept: 2:1 panels
    red = strip.getpixel((3 * FRAME_HEIGHT, FRAME_HEIGHT // 2))
    black = strip.getpixel((FRAME_HEIGHT, FRAME_HEIGHT // 2))
    assert red[0] > 200 and red[1] < 60 and max(black) < 40
    facts = read_preview_facts(str(tmp_path), *key)
    assert facts is not None and facts.tokens_in == 12 and facts.frames == 3
    assert facts.duration_s == pytest.approx(max(token_set.frame_timestamps))
    assert read_preview_facts(str(tmp_path), "other", *key[1:]) is None


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (None, 999, 6167, 2_500_000)] == [
        "-",
        "999 B",
        "6.2 KB",
        "2.5 MB",
    ]


def test_search_matches_uris_only_when_asked(store_dir: Path) -> None:
    """A server that hides source URIs searches video ids only (no oracle on the URIs)."""
    catalog = open_store(str(store_dir)).catalog
    assert catalog.count_videos(search="broken") == 1  # the failed /srv/clips/broken.mp4
    assert catalog.count_videos(search="broken", search_uris=False) == 0
    assert catalog.list_videos(search="broken", search_uris=False) == []
    video = _id(make_token_set(1))
    [found] = catalog.list_videos(search=video[3:9].upper(), search_uris=False)
    assert found.video_id == video
