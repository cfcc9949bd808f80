"""The indexing job end to end on a local Ray: a corpus with good, awkward and bad videos, a
worker killed mid-job, a killed driver, and S3 in and out.

One shared Ray (the session fixture); the tiny model; 64x48 clips of 12-16 frames, 4 sampled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from video_files import make_awkward_videos, make_bad_videos

from compression.config import CompressionConfig
from compression.models import model_frame_size
from jobs.index import IndexSummary, index_videos
from jobs.index.stages import CHAOS_ENV
from storage import open_store, video_id_for
from storage.previews import FRAME_HEIGHT, facts_of, read_preview_facts, read_preview_jpeg
from storage.token_files import TOKEN_DIR
from tokenreel.sample_videos import make_sample_videos

FRAMES = 4
CONFIG = CompressionConfig(retention_ratio=0.1)
HEARTBEAT_S = 0.5  # a killed driver's run reads as ended 2 s after its last heartbeat
# The key of a token set includes how the video was sampled (frames, the model's frame size).
KEY_HASH = dataclasses.replace(
    CONFIG, frames=FRAMES, frame_size=model_frame_size("tiny-llava-ov")
).stable_hash()

pytestmark = pytest.mark.slow


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_indexed_exactly_once(store_url: str, catalog_url: str, paths: list[Path]) -> None:
    """Every video is one indexed catalog row whose token set loads and belongs to it."""
    store = open_store(store_url, catalog_url)
    key = {"model_id": "tiny-llava-ov", "config_hash": KEY_HASH}
    records = store.catalog.list_videos("indexed", limit=1000, **key)
    assert sorted(r.video_id for r in records) == sorted(video_id_for(str(p)) for p in paths)
    for path in paths:
        token_set = store.load(video_id_for(str(path)), **key)
        assert token_set.source_uri == str(path)
        assert token_set.content_hash == sha256(path)
        assert token_set.frame_count == FRAMES
        assert token_set.kept_count == CONFIG.budget(token_set.original_count)


def test_index_corpus_with_bad_videos_a_killed_worker_and_reruns(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    good = make_sample_videos(corpus, 20, frames=12, width=64, height=48)
    good += sorted(make_awkward_videos(corpus / "awkward").values())
    bad = make_bad_videos(corpus / "bad")
    (corpus / "README.txt").write_text("not listed: no video suffix")
    store_url, catalog_url = str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite"
    chaos = tmp_path / "chaos-flag"
    monkeypatch.setenv(CHAOS_ENV, str(chaos))

    def index(**options: object) -> IndexSummary:
        return index_videos(
            corpus, store_url=store_url, catalog_url=catalog_url, config=CONFIG, frames=FRAMES,
            batch_size=3, progress=False, **options,
        )  # fmt: skip

    progress: list[tuple[int, int]] = []
    first = index(on_progress=lambda done, todo: progress.append((done, todo)))
    # The first encode actor died before its first batch; Ray restarted it and retried.
    assert chaos.exists()
    assert (first.total, first.indexed, first.failed, first.skipped) == (32, 25, 7, 0)
    assert progress[-1] == (32, 32) and progress == sorted(progress)
    check_indexed_exactly_once(store_url, catalog_url, good)
    reasons = dict(first.failures)
    assert set(reasons) == {str(p) for p in bad.values()}
    assert "audio only" in reasons[str(bad["audio_only"])]
    assert "empty file" in reasons[str(bad["zero_bytes"])]
    assert "unsupported video codec" in reasons[str(bad["unsupported_codec"])]
    assert first.tokens_out < first.tokens_in and first.bytes_written > 0
    assert set(first.stage_s) == {"decode", "encode", "compress", "write"}
    files = list((tmp_path / "store" / TOKEN_DIR).glob("*.parquet"))
    assert 25 / 3 <= len(files) <= 25  # batched: several token sets per file

    store = open_store(store_url, catalog_url)
    for record in store.catalog.list_videos("indexed", limit=100):  # each with its preview
        key = (record.video_id, record.model_id, record.config_hash)
        token_set = store.load(*key)
        facts = read_preview_facts(store.store_url, *key)
        assert facts == facts_of(token_set.grid, token_set.frame_timestamps)
        strip = Image.open(io.BytesIO(read_preview_jpeg(store.store_url, *key)))
        assert strip.height == FRAME_HEIGHT and strip.width >= FRAMES
    failed = store.catalog.list_videos("failed", limit=100)
    assert {r.uri: r.error for r in failed} == reasons and all(r.attempts == 1 for r in failed)
    run = store.catalog.run_summary(first.run_id)
    assert run.counts == first.counts() and run.finished_at is not None

    again = index()
    assert (again.indexed, again.failed, again.skipped, again.skipped_failed) == (0, 0, 32, 7)
    assert "--retry-failed" in again.format()

    retried = index(retry_failed=True)
    assert (retried.indexed, retried.failed, retried.skipped) == (0, 7, 25)
    assert all(r.attempts == 2 for r in store.catalog.list_videos("failed", limit=100))
    check_indexed_exactly_once(store_url, catalog_url, good)

    # Another sampling is another key: nothing is skipped, nothing of the first runs replaced.
    resampled = index_videos(
        [str(p) for p in good[:2]], store_url=store_url, catalog_url=catalog_url, config=CONFIG,
        frames=FRAMES + 2, progress=False,
    )  # fmt: skip
    assert (resampled.indexed, resampled.skipped) == (2, 0)
    assert resampled.config_hash != KEY_HASH
    check_indexed_exactly_once(store_url, catalog_url, good)


def test_killed_driver_reads_interrupted_and_a_rerun_finishes_without_duplicates(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from tokenreel.cli import main

    corpus = tmp_path / "corpus"
    videos = make_sample_videos(corpus, 6, frames=12, width=64, height=48, seed=7)
    store_url, catalog_url = str(tmp_path / "store"), f"sqlite:///{tmp_path}/catalog.sqlite"
    arguments = [
        "index", str(corpus), "--store", store_url, "--catalog", catalog_url,
        "--frames", str(FRAMES), "--retention-ratio", str(CONFIG.retention_ratio),
        "--batch-size", "1", "--no-progress",
    ]  # fmt: skip
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenreel",
            *arguments,
            "--ray-address",
            address,
            "--heartbeat-seconds",
            str(HEARTBEAT_S),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    catalog = open_store(store_url, catalog_url).catalog
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and driver.poll() is None:
            if os.path.exists(tmp_path / "catalog.sqlite") and catalog.count_videos("indexed"):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the job finished before it could be interrupted"
        assert catalog.count_videos("indexed") >= 1
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    (killed_run,) = catalog.list_runs()
    assert killed_run.finished_at is None  # it never got to record its end
    assert killed_run.heartbeat_at is not None
    # Once its heartbeat is a few intervals old, its videos no longer read "being indexed" (they
    # used to stay pending forever): interrupted, in the catalog and in `tokenreel runs`.
    deadline = time.monotonic() + 150  # a hung test's bound, not a timing claim
    while catalog.count_videos("pending"):
        assert time.monotonic() < deadline, "the killed run never read as ended"
        time.sleep(0.05)
    assert catalog.count_videos("interrupted") + catalog.count_videos("indexed") == len(videos)
    capsys.readouterr()
    assert main(["runs", "--store", store_url, "--catalog", catalog_url, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["runs"]
    assert row["state"] == "interrupted" and row["finished_at"] is None

    assert main(arguments) == 0
    assert "indexed" in capsys.readouterr().out
    check_indexed_exactly_once(store_url, catalog_url, videos)
    rerun = next(r for r in catalog.list_runs() if r.run_id != killed_run.run_id)
    by_run = {
        run.run_id: run.status_counts.get("indexed", 0)
        for run in (catalog.run_summary(killed_run.run_id), catalog.run_summary(rerun.run_id))
    }
    assert sum(by_run.values()) == len(videos)  # each video indexed by exactly one of the runs
    assert rerun.counts["indexed"] == by_run[rerun.run_id] < len(videos)


def test_index_from_s3_into_s3(ray_session: None, s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    local = make_sample_videos(tmp_path / "in", 3, frames=12, width=64, height=48, seed=3)
    corrupt = make_bad_videos(tmp_path / "bad")["corrupt"]
    fs = fsspec.filesystem("s3")
    for path in [*local, corrupt]:
        fs.put(str(path), f"{s3_bucket}/videos/{path.name}")
    store_url, catalog_url = f"s3://{s3_bucket}/store", f"sqlite:///{tmp_path}/catalog.sqlite"
    # The session's Ray may have started before the S3 endpoint existed: pass its settings on.
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    summary = index_videos(
        f"s3://{s3_bucket}/videos/",
        store_url=store_url,
        catalog_url=catalog_url,
        config=CONFIG,
        frames=FRAMES,
        batch_size=2,
        progress=False,
        runtime_env={"env_vars": aws},
    )
    assert (summary.indexed, summary.failed) == (3, 1)
    assert "no decodable frame" in summary.failures[0][1]
    store = open_store(store_url, catalog_url)
    for path in local:
        uri = f"s3://{s3_bucket}/videos/{path.name}"
        token_set = store.load(video_id_for(uri), "tiny-llava-ov", KEY_HASH)
        assert token_set.source_uri == uri and token_set.content_hash == sha256(path)
    assert fs.glob(f"{s3_bucket}/store/{TOKEN_DIR}/*.parquet")
