"""README's first command runs the whole loop: `tokenreel demo` end to end in its own process
(its own local Ray and Serve, as on a fresh machine), on two tiny sample videos."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_indexes_serves_and_answers_each_video(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "tokenreel", "demo", "--workdir", str(tmp_path),
         "--videos", "2", "--frames", "8", "--max-new-tokens", "3"],
        capture_output=True, text=True, timeout=400, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "2 indexed, 0 skipped, 0 failed" in out
    answers = re.findall(r"^tokens: +(\d+) in the video -> (\d+) into the LLM", out, re.M)
    assert len(answers) == 2
    assert all(int(kept) < int(total) for total, kept in answers)
    assert len(re.findall(r"^FLOPs: +[\d.]+% of the uncompressed model", out, re.M)) == 2
    assert (tmp_path / "catalog.sqlite").exists()
    assert list((tmp_path / "store").rglob("*.parquet"))
    # Nothing of Ray's own reaches the terminal, down to the last line at shutdown (issue 16):
    # serve.shutdown() printed "(raylet) Task ServeController.graceful_shutdown failed ...".
    terminal = result.stdout + result.stderr
    for foreign in ("(raylet)", "core_worker", "Traceback", "(ServeController", "(ProxyActor"):
        assert foreign not in terminal, terminal[-3000:]
    # The demo's own story ends the output.
    assert (
        out.rstrip().splitlines()[-1]
        == f"catalog: sqlite:///{tmp_path.resolve() / 'catalog.sqlite'}"
    )


def test_demo_rejects_a_bad_video_count(tmp_path: Path) -> None:
    from tokenreel.cli import main

    assert main(["demo", "--workdir", str(tmp_path), "--videos", "0"]) == 2
    assert not (tmp_path / "videos").exists()
