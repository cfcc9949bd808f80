"""`tokenreel demo`: the whole loop on embedded defaults, end to end, printed as it goes.

1. write a few small sample videos (PyAV) into WORKDIR/videos;
2. index them with the Ray Data job (local Ray, local Parquet store, SQLite catalog in WORKDIR);
3. start the question-answering service (Ray Serve) on a free loopback port;
4. ask one question per video over HTTP and print the answer with its timings, token counts
   and FLOPs ratio; then stop the service.

With the default tiny random-weight model the answers are noise (random weights answer nothing);
the figures are real measurements of the pipeline. `--model` names real weights (a hub id or a
local directory).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = "./tokenreel-demo"
DEMO_APP = "tokenreel-demo"  # the Serve application's name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compression.models import DEFAULT_MODEL, TINY_MODELS

    add = parser.add_argument
    add("--workdir", default=DEFAULT_WORKDIR, help=f"videos, store and catalog ({DEFAULT_WORKDIR})")
    tiny = ", ".join(TINY_MODELS)
    add("--model", default=DEFAULT_MODEL, help=f"{tiny}, a hub id or a checkpoint directory")
    add("--videos", type=int, default=3, help="sample videos to generate (1-20)")
    add("--frames", type=int, default=32, help="frames sampled per video (the paper's 32)")
    add(
        "--retention-ratio",
        type=float,
        default=0.02,
        help="share of tokens kept by the outer stage",
    )
    add("--question", default="What happens in this video?", help="asked about each video")
    add("--max-new-tokens", type=int, default=12, help="answer length in tokens")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the service at {url} did not become ready in {timeout_s:.0f} s")


def _quiet_library_chatter() -> None:
    """The demo prints its own story; Ray's deprecation notices and INFO logs would bury it."""
    for category in (DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"ray\.")
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.videos <= 20:
        print("tokenreel demo: --videos must be between 1 and 20")
        return 2
    import httpx
    import ray
    from ray import serve

    from compression.config import CompressionConfig
    from jobs.index import index_videos
    from serving.app import build_app
    from serving.ask_command import format_answer
    from tokenreel.sample_videos import make_sample_videos

    workdir = Path(args.workdir).resolve()
    store_url = str(workdir / "store")
    catalog_url = f"sqlite:///{workdir / 'catalog.sqlite'}"
    videos = make_sample_videos(workdir / "videos", args.videos, frames=24, width=96, height=72)
    print(f"[1/4] {len(videos)} sample videos in {workdir / 'videos'}")

    _quiet_library_chatter()
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    serving = False
    try:
        print("[2/4] indexing (Ray Data: decode -> encode + compress -> Parquet + catalog)")
        summary = index_videos(
            [str(v) for v in videos],
            store_url=store_url,
            catalog_url=catalog_url,
            model=args.model,
            config=CompressionConfig(retention_ratio=args.retention_ratio),
            frames=args.frames,
        )
        print(summary.format())

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        print(f"[3/4] starting the service at {url}")
        serving = True
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app_args: dict[str, Any] = {
            "model": args.model,
            "store_url": store_url,
            "catalog_url": catalog_url,
            "expose_source_uris": True,  # a local demo: the URIs are its own sample files
        }
        serve.run(build_app(app_args), name=DEMO_APP, route_prefix="/", blocking=False)
        _wait_ready(url)

        print(f"[4/4] asking {args.question!r} about each video")
        listing = httpx.get(f"{url}/v1/videos", params={"limit": 100}, timeout=30).json()
        for video in listing["data"]:
            response = httpx.post(
                f"{url}/v1/videos/{video['video_id']}/ask",
                json={"question": args.question, "max_new_tokens": args.max_new_tokens},
                timeout=600,
            )
            print(f"\n== {video['uri']} (video id {video['video_id']}, {video['status']})")
            if response.status_code == 200:
                print(format_answer(response.json()))
            else:
                print(f"HTTP {response.status_code}: {response.json().get('error')}")
        print(f"\nstore: {store_url}\ncatalog: {catalog_url}")
    finally:
        _stop(ray, serve if serving else None)
    return 0


def _stop(ray: Any, serve: Any) -> None:
    """Stop the service (`serve`: None when it was never started) and the demo's own local Ray.

    Not `serve.shutdown()`: it asks Serve's controller to stop and waits on that call until the
    controller kills itself; the call is a retriable actor task, so Ray reports it on the
    driver's terminal as failed and to be retried ("(raylet) Task
    ServeController.graceful_shutdown failed ..."), a Ray internal that issue 16 keeps off the
    terminal. The demo's Ray is a local cluster of its own: deleting the application (its
    replicas drain and stop) and then stopping Ray (which ends the controller and the proxy
    with every other process of the cluster) leaves nothing running and no call in flight."""
    if serve is not None and ray.is_initialized() and serve.status().applications:
        serve.delete(DEMO_APP)
    ray.shutdown()
