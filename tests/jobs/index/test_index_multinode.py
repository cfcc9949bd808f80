"""The indexing job on a multi-node Ray cluster on this machine (see multinode_job.py): decode
tasks and encode actors spread over the worker nodes, and a worker node killed mid-job costs
nothing: after the job (and its rerun, if the loss stopped it) every video is indexed exactly
once."""

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


def test_a_multinode_job_spreads_and_survives_a_killed_node(tmp_path: Path) -> None:
    # A short private Ray temp dir: Unix socket paths must stay under 108 bytes, and this
    # cluster's address file must not be found by any other Ray on the machine.
    ray_tmp = tempfile.mkdtemp(prefix="trmn", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_TMPDIR=ray_tmp, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    )
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("multinode_job.py")), str(tmp_path)],
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
