"""The indexing job on Ray's fake multi-node autoscaler (see autoscaling_job.py): the encode
node group scales from zero when the job's elastic pool asks for its resource, the pool grows
onto a second node the autoscaler adds while batches queue, and the group scales back down once
the job is done."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_script import run_cluster_script

pytestmark = pytest.mark.slow


def test_the_encode_group_scales_from_zero_the_pool_grows_and_both_shrink(tmp_path: Path) -> None:
    # No token auth on either side of this cluster (the script starts it with `ray start`).
    result = run_cluster_script("autoscaling_job.py", tmp_path, "tras", RAY_AUTH_MODE="disabled")

    assert len(result["before"]) == 1  # the head only: no encoder node before the job
    assert (result["indexed"], result["failed"]) == (result["videos"], 0)
    # The encoders ran on nodes the autoscaler added for them, none of which existed before,
    # and the pool grew from one actor to two, on two nodes.
    assert len(result["encoder_nodes"]) == 2, result
    assert not set(result["encoder_nodes"]) & set(result["before"])
    # Idle encoder nodes were removed again: back to the head alone.
    assert result["settled"] == result["before"]
