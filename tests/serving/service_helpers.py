"""Helpers of the tests that run the service: a store written without Ray, free ports, and the
model replicas of a running Serve application (to kill one and wait for its replacement)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_indexed_videos(root: Path, video_ids: Sequence[str]) -> str:
    """A local store at `root` whose catalog lists `video_ids` as indexed for the tiny LLaVA-OV
    (its tokens of random frames); returns the catalog URL."""
    from compression import CompressionConfig, compress_video
    from compression.models import load_video_llm
    from storage.catalog import Catalog, IndexedVideo
    from storage.store import default_catalog_url
    from storage.token_files import write_token_sets

    llm = load_video_llm("tiny-llava-ov", device="cpu")
    rng = np.random.default_rng(0)
    catalog = Catalog(default_catalog_url(str(root)), store_url=str(root))
    for video_id in video_ids:
        frames = rng.integers(0, 255, (4, 48, 48, 3), dtype=np.uint8)
        token_set = compress_video(llm.encode(frames), CompressionConfig(retention_ratio=0.5))
        uri = f"/srv/archive/{video_id}.mp4"
        token_set = token_set.with_metadata(
            model_id=llm.model_id, video_id=video_id, source_uri=uri
        )
        (location,) = write_token_sets(str(root), [token_set])
        catalog.record_indexed([IndexedVideo(uri, "0" * 16, location)])
    return default_catalog_url(str(root))


@dataclass(frozen=True)
class ConsoleStore:
    """A store as the console shows it: indexed videos with previews, and a failed one."""

    root: Path
    indexed: dict[str, str]  # video id -> outer method
    failed: str
    failed_reason: str
    interrupted: str  # pending: its indexing run was interrupted


CONSOLE_LONG_FRAMES = 72  # more than the video page draws at a time (64 frames)


def write_console_store(root: Path) -> ConsoleStore:
    """A local store with three videos indexed for the tiny LLaVA-OV (one by the paper's method,
    two by VisionZip, whose token sets have all three fates: kept, merged, dropped; one of them
    of `CONSOLE_LONG_FRAMES` frames, more than one page), each with the preview the indexing job
    makes, one video that failed, the run that did it all, and a later run that was interrupted,
    leaving one video pending."""
    from compression import CompressionConfig, compress_video
    from compression.models import load_video_llm
    from storage.ids import video_id_for
    from storage.previews import frame_strip_jpeg, write_preview_quietly
    from storage.store import open_store
    from tokenreel.sample_videos import synthetic_frames

    llm = load_video_llm("tiny-llava-ov", device="cpu")
    store = open_store(str(root))
    run = store.catalog.start_run({"source": "/srv/archive", "model": llm.model_id})
    indexed = {"consoleours01": "ours", "consolevzip02": "visionzip", "consolelong03": "visionzip"}
    for i, (video_id, method) in enumerate(indexed.items()):
        count = CONSOLE_LONG_FRAMES if video_id == "consolelong03" else 4
        frames = synthetic_frames(count, 64, 48, seed=i)
        encoded = llm.encode(frames, [0.5 * f for f in range(count)])
        config = CompressionConfig(retention_ratio=0.25, method=method)
        token_set = compress_video(encoded, config).with_metadata(
            model_id=llm.model_id, video_id=video_id, source_uri=f"/srv/archive/{video_id}.mp4"
        )
        store.save([token_set], run_id=run)
        write_preview_quietly(store.store_url, token_set, frame_strip_jpeg(frames))
    reason = "decode: moov atom not found"
    store.catalog.record_failed(
        "/srv/archive/broken.mp4", llm.model_id, config.stable_hash(), reason, run_id=run
    )
    store.catalog.finish_run(run, {"indexed": len(indexed), "failed": 1})
    stopped = store.catalog.start_run({"source": "/srv/more", "model": llm.model_id})
    [left] = store.catalog.register_pending(
        ["/srv/more/left.mp4"], llm.model_id, config.stable_hash(), run_id=stopped
    )
    store.catalog.finish_run(stopped, {"indexed": 0, "failed": 0, "interrupted": 1})
    failed = video_id_for("/srv/archive/broken.mp4")
    return ConsoleStore(root, indexed, failed, reason, left)


def model_replicas() -> list[tuple[str, str]]:
    """(actor name, namespace) of every running `ModelServer` replica."""
    import ray

    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "ModelServer" in actor["name"] and actor["name"].startswith("SERVE_REPLICA")
    ]


def kill_model_replica() -> str:
    """Kill one model replica (Serve replaces it); returns its name."""
    import ray

    name, namespace = model_replicas()[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return name


def wait_for_replacement(app: str, killed: str, count: int, timeout_s: float = 120) -> None:
    """Until Serve runs `count` healthy model replicas again, none of them the killed one."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [name for name, _ in model_replicas()]
        status = serve.status().applications[app].deployments["ModelServer"]
        running = status.replica_states.get("RUNNING", 0)
        replaced = killed not in names and len(names) == count and running == count
        if replaced and status.status == "HEALTHY":
            return
        time.sleep(0.5)
    raise AssertionError(f"ModelServer did not get back to {count} running replicas")


# -- the real `tokenreel serve` (a subprocess with its own local Ray) ------------------------------

MARKER = "TOKENREEL_SERVE_TEST_MARKER"


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    marker: str  # in the environment of the command and of every Ray process it starts

    def stop(self, timeout_s: float = 120) -> str:
        """SIGTERM; the command's whole output once it exited."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=timeout_s)[0]


@contextmanager
def serving(store: Path, *flags: str, api_key: str | None = None) -> Iterator[Served]:
    """`tokenreel serve` on a free port (with `api_key` as its TOKENREEL_API_KEY, else none);
    whatever it leaves running is killed afterwards."""
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TOKENREEL_API_KEY")}
    env[MARKER] = marker
    if api_key is not None:
        env["TOKENREEL_API_KEY"] = api_key
    port = free_port()
    command = [sys.executable, "-m", "tokenreel", "serve", "--store", str(store)]
    command += ["--port", str(port), "--device", "cpu", *flags]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield Served(process, f"http://127.0.0.1:{port}", marker)
    finally:
        for leftover in [process, *tagged_processes(marker)]:
            with contextlib.suppress(psutil.Error, OSError):
                leftover.kill()


def tagged_processes(marker: str) -> list[psutil.Process]:
    """The processes whose environment carries `marker` (the command and its Ray)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER) == marker:
                found.append(process)
    return found


def wait_for_ok(served: Served, path: str, timeout_s: float = 180) -> None:
    """Until `path` answers 200 (the command must keep running meanwhile)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert served.process.poll() is None, served.process.communicate()[0]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(served.url + path, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise AssertionError(f"{path} never answered 200")
