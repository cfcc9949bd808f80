"""The indexing job on a multi-node Ray cluster on this machine (see multinode_job.py): decode
tasks and encode actors spread over the worker nodes, and a worker node killed mid-job costs
nothing: after the job (and its rerun, if the loss stopped it) every video is indexed exactly
once."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_script import run_cluster_script

pytestmark = pytest.mark.slow


def test_a_multinode_job_spreads_and_survives_a_killed_node(tmp_path: Path) -> None:
    result = run_cluster_script("multinode_job.py", tmp_path, "trmn")

    assert result["killed"], "the job ended before a node could be killed"
    assert set(result["encoder_nodes"]) >= set(result["worker_nodes"][:1])
    assert len(result["encoder_nodes"]) >= 2  # one actor per node holding the stand-in GPU
    assert len(result["decode_nodes"]) >= 2  # decode tasks ran on several nodes
    # Exactly once: one indexed row per video, each token set its own; nothing left over.
    assert result["indexed_ids"] == result["expected_ids"]
    assert result["loaded_uris_match"] and result["statuses"] == ["indexed"]
    first, rerun = result["first"], result["rerun"]
    if "stopped" not in first:
        assert first["indexed"] + first["failed"] == len(result["expected_ids"])
        assert rerun == {"indexed": 0, "failed": 0, "skipped": len(result["expected_ids"])}
