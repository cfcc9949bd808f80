"""Helpers of the tests that run the service: a store written without Ray, free ports, and the
model replicas of a running Serve application (to kill one and wait for its replacement)."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
