"""Running a script that starts its own Ray cluster on this machine (multinode_job.py,
autoscaling_job.py) in a subprocess, and reading the JSON result it prints.

A subprocess, because the test session shares one local Ray (tests/conftest.py) that a driver
cannot leave and rejoin safely; RAY_TMPDIR is a private, short folder (Unix socket paths stay
under 108 bytes), so the script's cluster never meets another Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run_cluster_script(script: str, work: Path, prefix: str, **env: str) -> dict:
    """Run `script` (beside this file) with `work` as its argument and `env` added; the object
    on its last `RESULT {...}` line. Fails the test with the script's stderr if it did not
    print one or exited non-zero."""
    ray_tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environ.update(
        RAY_TMPDIR=ray_tmp,
        PYTHONPATH=os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]),
        **env,
    )
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name(script)), str(work)],
            capture_output=True,
            text=True,
            timeout=600,
            env=environ,
            cwd=ROOT,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))
