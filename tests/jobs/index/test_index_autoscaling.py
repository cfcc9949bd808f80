"""The indexing job on Ray's fake multi-node autoscaler (see autoscaling_job.py): the encode
node group scales from zero when the job's elastic pool asks for its resource, the pool grows
onto a second node the autoscaler adds while batches queue, and the group scales back down once
the job is done."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def test_the_encode_group_scales_from_zero_the_pool_grows_and_both_shrink(tmp_path: Path) -> None:
    # A private, short Ray temp dir (Unix socket paths stay under 108 bytes; no other Ray finds
    # this cluster, and its processes are told apart by it); no token auth on either side.
    ray_tmp = tempfile.mkdtemp(prefix="tras", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_TMPDIR=ray_tmp,
        RAY_AUTH_MODE="disabled",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("autoscaling_job.py")), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))

    assert len(result["before"]) == 1  # the head only: no encoder node before the job
    assert (result["indexed"], result["failed"]) == (result["videos"], 0)
    # The encoders ran on nodes the autoscaler added for them, none of which existed before,
    # and the pool grew from one actor to two, on two nodes.
    assert len(result["encoder_nodes"]) == 2, result
    assert not set(result["encoder_nodes"]) & set(result["before"])
    # Idle encoder nodes were removed again: back to the head alone.
    assert result["settled"] == result["before"]
