"""Run by test_index_multinode.py in a subprocess: the indexing job on a multi-node Ray cluster
on this machine (`ray.cluster_utils.Cluster`), with a worker node killed mid-job.

A subprocess, because the test session shares one local Ray (tests/conftest.py) that a driver
cannot leave and rejoin safely; and RAY_TMPDIR is set to a private folder by the test, so this
cluster's session files and address file never meet another Ray on the machine.

Nodes: a head that runs only the driver (0 CPUs), and worker nodes of 2 CPUs each carrying the
custom resource `encoder` (1), which stands in for a GPU: the encode pool asks for it, so encode
actors can only run there, one per node. Prints one JSON object: the job's summaries, the nodes
that ran decode tasks and encode actors, and what the catalog holds afterwards.

Then the elastic pool (`workers="1:3"`) on a cluster shrunk to one encoder node: two nodes are
added once the first batch is written (as an autoscaler adds GPU nodes to a busy cluster), and
the pool must grow onto them. The first node's encoder waits after its first batch until an
encoder runs on another node (at most `GROWTH_WAIT_S`), so the job cannot end before the pool
had the chance to grow, whatever the machine's speed; if it never grows, the wait runs out and
the test sees encoders on one node only.

Not Ray's fake multi-node autoscaler (`ray.cluster_utils.AutoscalingCluster`, for a scale-from-
zero test): its start() and shutdown() run `ray stop --force`, which kills every Ray process on
the machine (the test session's and any other user's), and it starts its head with `ray start
--head` on the default port. Nodes are added and removed by hand here instead.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import ray
import ray.util.state
from ray.cluster_utils import Cluster

from compression.config import CompressionConfig
from compression.models import load_video_llm, model_frame_size
from jobs.index import IndexJobStopped, ModelLoader, index_videos
from storage import open_store, video_id_for
from tokenreel.sample_videos import make_sample_videos

MODEL = "tiny-llava-ov"
VIDEOS = 12
GROWTH_WAIT_S = 180.0


def load_recording_node(directory: str, device: str = "cpu"):
    """The tiny model, after noting which node this encode actor runs on."""
    node = ray.get_runtime_context().get_node_id()
    Path(directory, f"encoder-{node}").touch()
    return load_video_llm(MODEL, device=device)


def load_waiting_for_growth(directory: str, first_node: str, device: str = "cpu"):
    """`load_recording_node`; on `first_node`, an encoder that waits for help (see above)."""
    model = load_recording_node(directory, device)
    if ray.get_runtime_context().get_node_id() != first_node:
        return model
    return WaitsForHelp(model, Path(directory), first_node)


class WaitsForHelp:
    """The model, whose `encode_batch` after the first waits until an encoder has started on
    another node than `first_node` (or `GROWTH_WAIT_S` passed)."""

    def __init__(self, model, marks: Path, first_node: str) -> None:
        self.model, self.marks, self.first_node, self.batches = model, marks, first_node, 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def encode_batch(self, frames, stamps):
        self.batches += 1
        deadline = time.monotonic() + GROWTH_WAIT_S
        while self.batches > 1 and time.monotonic() < deadline and not self.helped():
            time.sleep(0.2)
        return self.model.encode_batch(frames, stamps)

    def helped(self) -> bool:
        return any(p.name != f"encoder-{self.first_node}" for p in self.marks.iterdir())


def grow(cluster: Cluster, work: Path, videos: list[Path], worker: dict) -> dict:
    """The elastic pool on one encoder node, two more added mid-job (see the docstring)."""
    for node in list(cluster.worker_nodes)[1:]:
        cluster.remove_node(node)
    [first] = [node.node_id for node in cluster.worker_nodes]
    marks = work / "growth-marks"
    marks.mkdir()
    loader = ModelLoader(
        MODEL,
        functools.partial(load_waiting_for_growth, str(marks), first),
        model_frame_size(MODEL),
    )
    added: list[str] = []

    def add_nodes_once(done: int, todo: int) -> None:
        if not added:
            added.extend(cluster.add_node(**worker).node_id for _ in range(2))

    summary = index_videos(
        [str(v) for v in videos], store_url=str(work / "growth-store"),
        catalog_url=f"sqlite:///{work}/growth.sqlite", model=loader,
        config=CompressionConfig(retention_ratio=0.1), frames=4, batch_size=2, workers="1:3",
        worker_resources={"encoder": 1}, progress=False, on_progress=add_nodes_once,
    )  # fmt: skip
    return {
        "first_node": first,
        "added_nodes": added,
        "encoder_nodes": sorted(p.name.removeprefix("encoder-") for p in marks.iterdir()),
        "indexed": summary.indexed,
        "failed": summary.failed,
    }


def main(work: Path) -> dict:
    videos = make_sample_videos(work / "corpus", VIDEOS, frames=8, width=64, height=48, seed=4)
    marks = work / "marks"
    marks.mkdir()
    store_url, catalog_url = str(work / "store"), f"sqlite:///{work}/catalog.sqlite"
    worker = {"num_cpus": 2, "resources": {"encoder": 1}}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True}
    )
    nodes = [cluster.add_node(**worker) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    loader = ModelLoader(
        MODEL, functools.partial(load_recording_node, str(marks)), model_frame_size(MODEL)
    )
    killed: list[str] = []

    def kill_a_node_once(done: int, todo: int) -> None:
        if not killed and done >= 2:
            victim = nodes[1]
            killed.append(victim.node_id)
            cluster.remove_node(victim, allow_graceful=False)
            cluster.add_node(**worker)  # its replacement (a preempted GPU node comes back)

    def index(**options) -> dict:
        try:
            summary = index_videos(
                [str(v) for v in videos], store_url=store_url, catalog_url=catalog_url,
                model=loader, config=CompressionConfig(retention_ratio=0.1), frames=4,
                batch_size=2, workers="2:2", worker_resources={"encoder": 1}, progress=False,
                **options,
            )  # fmt: skip
        except IndexJobStopped as exc:
            return {"stopped": str(exc)}
        return {"indexed": summary.indexed, "failed": summary.failed, "skipped": summary.skipped}

    first = index(on_progress=kill_a_node_once)
    # This cluster's state API by its own address: never another Ray found on the machine.
    dashboard = cluster.webui_url
    tasks = ray.util.state.list_tasks(
        address=dashboard if "://" in dashboard else f"http://{dashboard}",
        limit=10_000,
        raise_on_missing_output=False,
    )
    decode_nodes = sorted({t.node_id for t in tasks if "decode_videos" in t.name and t.node_id})
    rerun = index()
    catalog = open_store(store_url, catalog_url).catalog
    indexed = catalog.list_videos("indexed", limit=1000)
    loads = {
        r.video_id: open_store(store_url, catalog_url).load(r.video_id).source_uri for r in indexed
    }
    growth = grow(cluster, work, videos, worker)
    ray.shutdown()
    cluster.shutdown()
    return {
        "growth": growth,
        "first": first,
        "rerun": rerun,
        "killed": killed,
        "worker_nodes": [n.node_id for n in nodes],
        "decode_nodes": decode_nodes,
        "encoder_nodes": sorted(p.name.removeprefix("encoder-") for p in marks.iterdir()),
        "indexed_ids": sorted(r.video_id for r in indexed),
        "expected_ids": sorted(video_id_for(str(v)) for v in videos),
        "loaded_uris_match": all(loads[video_id_for(str(v))] == str(v) for v in videos),
        "statuses": sorted({r.status.value for r in catalog.list_videos(limit=1000)}),
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
