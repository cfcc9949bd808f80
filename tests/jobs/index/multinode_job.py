"""Run by test_index_multinode.py in a subprocess: the indexing job on a multi-node Ray cluster
on this machine (`ray.cluster_utils.Cluster`), with a worker node killed mid-job.

A subprocess, because the test session shares one local Ray (tests/conftest.py) that a driver
cannot leave and rejoin safely; and RAY_TMPDIR is set to a private folder by the test, so this
cluster's session files and address file never meet another Ray on the machine.

Nodes: a head that runs only the driver (0 CPUs), and worker nodes of 2 CPUs each carrying the
custom resource `encoder` (1), which stands in for a GPU: the encode pool asks for it, so encode
actors can only run there, one per node. Prints one JSON object: the job's summaries, the nodes
that ran decode tasks and encode actors, and what the catalog holds afterwards.

Not Ray's fake multi-node autoscaler (`ray.cluster_utils.AutoscalingCluster`, for a scale-from-
zero test): its start() and shutdown() run `ray stop --force`, which kills every Ray process on
the machine (the test session's and any other user's), and it starts its head with `ray start
--head` on the default port. Nodes are added and removed by hand here instead.
"""

from __future__ import annotations

import functools
import json
import sys
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


def load_recording_node(directory: str, device: str = "cpu"):
    """The tiny model, after noting which node this encode actor runs on."""
    node = ray.get_runtime_context().get_node_id()
    Path(directory, f"encoder-{node}").touch()
    return load_video_llm(MODEL, device=device)


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
    ray.shutdown()
    cluster.shutdown()
    return {
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
