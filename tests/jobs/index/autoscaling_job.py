"""Run by test_index_autoscaling.py in a subprocess: the indexing job on Ray's fake multi-node
autoscaler on this machine, whose encode node group starts at zero nodes.

Ray's fake provider (`RAY_FAKE_CLUSTER=1`, provider type `fake_multinode`) launches "nodes" as
raylets on this machine when the autoscaler asks for them. Its test helper
`ray.cluster_utils.AutoscalingCluster` cannot be used here: its start() and shutdown() run
`ray stop --force`, which kills every Ray process on the machine (the test session's too), its
head takes the default port (6379, Redis's here), and it reads `fake_multi_node/example.yaml`,
which the Ray 2.60 wheel does not ship. So the cluster is started the way that helper does it,
with what it lacks: its own config (written here), a free port (the provider's `gcs_address`),
a private RAY_TMPDIR (set by the test), and a stop that ends only this cluster's processes
(those whose command line names that folder), never `ray stop`.

The job: `--ray-address HOST:PORT`, an elastic encode pool 1:2 asking for the custom resource
`encoder` (a GPU's stand-in) that only the `encoder` node type has (0 to 2 nodes, one actor
each), and `skip_resource_check` (the cluster cannot hold the pool until it scales). The pool's
first actor makes the autoscaler add a first node; while batches queue, Ray Data adds a second
actor, for which the autoscaler adds a second node. The first encoder waits after its first
batch until an encoder has started on another node (at most `GROWTH_WAIT_S`), so the job cannot
end before the pool had the chance to grow onto the added node, whatever the machine's speed;
if it never grows, the wait runs out and the test sees one encoder node. Prints one JSON object:
the nodes alive before, the nodes the encoders ran on, the job's counts, and the nodes alive
once the cluster settled after the job (the autoscaler removes idle encoder nodes after
`idle_timeout_minutes`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from compression.config import CompressionConfig
from compression.models import load_video_llm, model_frame_size
from tokenreel.sample_videos import make_sample_videos

MODEL = "tiny-llava-ov"
VIDEOS = 8
IDLE_TIMEOUT_MINUTES = 0.1  # 6 s: an encoder node idle this long is removed
SCALE_DOWN_WAIT_S = 180.0
GROWTH_WAIT_S = 180.0


def fake_cluster_config(port: int) -> dict:
    """The autoscaler's cluster config: a head with 1 CPU, and 0-2 `encoder` nodes."""
    return {
        "cluster_name": "tokenreel-fake",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "encoder": {
                "resources": {"CPU": 1, "encoder": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_head(work: Path, ray_tmp: str) -> int:
    port = free_port()
    config = work / "autoscaler.json"
    config.write_text(json.dumps(fake_cluster_config(port)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    ray = Path(sys.executable).with_name("ray")
    subprocess.run(
        [str(ray), "start", "--head", f"--port={port}", f"--autoscaling-config={config}",
         "--num-cpus=1", f"--temp-dir={ray_tmp}", "--include-dashboard=false",
         "--disable-usage-stats"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return port


def stop_cluster(ray_tmp: str) -> None:
    """End the processes of this cluster only: those whose command line names its folder."""
    mine = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid != os.getpid() and ray_tmp in " ".join(process.info["cmdline"] or []):
            mine.append(process)
    for process in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(mine, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def load_recording_node(directory: str, device: str = "cpu"):
    """The tiny model, after noting which node this encode actor runs on; the first actor's
    model waits for help (see the module docstring)."""
    import ray

    marks = Path(directory)
    node = ray.get_runtime_context().get_node_id()
    (marks / f"encoder-{node}").touch()
    model = load_video_llm(MODEL, device=device)
    try:  # exactly one actor creates the "first" file
        (marks / "first").open("x").close()
    except FileExistsError:
        return model
    return WaitsForHelp(model, marks, node)


class WaitsForHelp:
    """The model, whose `encode_batch` after the first waits until an encoder has started on
    another node than `node` (or `GROWTH_WAIT_S` passed)."""

    def __init__(self, model, marks: Path, node: str) -> None:
        self.model, self.marks, self.node, self.batches = model, marks, node, 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def encode_batch(self, frames, stamps):
        self.batches += 1
        deadline = time.monotonic() + GROWTH_WAIT_S
        while self.batches > 1 and time.monotonic() < deadline and not self.helped():
            time.sleep(0.2)
        return self.model.encode_batch(frames, stamps)

    def helped(self) -> bool:
        others = {f"encoder-{self.node}", "first"}
        return any(p.name not in others for p in self.marks.iterdir())


def alive_nodes() -> list[str]:
    import ray

    return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])


def main(work: Path) -> dict:
    ray_tmp = os.environ["RAY_TMPDIR"]
    videos = make_sample_videos(work / "corpus", VIDEOS, frames=8, width=64, height=48, seed=5)
    marks = work / "marks"
    marks.mkdir()
    port = start_head(work, ray_tmp)
    try:
        import ray

        from jobs.index import ModelLoader, index_videos

        address = f"127.0.0.1:{port}"
        ray.init(address=address, log_to_driver=False)
        before = alive_nodes()
        ray.shutdown()
        loader = ModelLoader(
            MODEL, functools.partial(load_recording_node, str(marks)), model_frame_size(MODEL)
        )
        summary = index_videos(
            [str(v) for v in videos], ray_address=address, store_url=str(work / "store"),
            catalog_url=f"sqlite:///{work}/catalog.sqlite", model=loader,
            config=CompressionConfig(retention_ratio=0.1), frames=4, batch_size=2,
            workers="1:2", worker_resources={"encoder": 1}, skip_resource_check=True,
            progress=False,
        )  # fmt: skip
        ray.init(address=address, log_to_driver=False)
        deadline = time.monotonic() + SCALE_DOWN_WAIT_S
        while len(alive_nodes()) > len(before) and time.monotonic() < deadline:
            time.sleep(1)
        settled = alive_nodes()
        ray.shutdown()
    finally:
        stop_cluster(ray_tmp)
    return {
        "before": before,
        "settled": settled,
        "encoder_nodes": sorted(
            p.name.removeprefix("encoder-") for p in marks.iterdir() if p.name != "first"
        ),
        "indexed": summary.indexed,
        "failed": summary.failed,
        "videos": VIDEOS,
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
