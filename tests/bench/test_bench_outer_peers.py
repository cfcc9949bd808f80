"""bench/bench_outer_peers.py: its plumbing (never its speed): ours alone on a tiny video, and
FastVID's block taken from its file by the markers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_outer_peers.py"


def test_ours_alone_on_a_tiny_video(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPT), "--frames", "2", "--dim", "8", "--repeat", "1"]
    done = subprocess.run(
        [*command, "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    [row] = json.loads(out.read_text())
    assert set(row["median_s"]) == {"matmul", "ours", "ours dpc"}
    assert row["N"] == 2 * 196 and row["skipped"] == []
    jaccard, same = row["agreement"]["ours exclude_self"]
    assert 0.0 <= jaccard <= 1.0 and 0.0 <= same <= 1.0
    assert "| 2 | 392 |" in done.stdout


def test_fastvid_block_is_compiled_from_between_its_markers(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_outer_peers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / bench.FASTVID_FILE
    path.parent.mkdir(parents=True)
    path.write_text(
        "def forward(self, hidden_states):\n"
        f"        {bench.FASTVID_START}\n"
        "        if seq_length > 1:\n"
        "            token_filtered = hidden_states[0]\n"
        "            frame_context_num = 1\n"
        "            tmp_frm_hidden_states = token_filtered\n"
        "            sampled_indexs = torch.topk(tmp_frm_hidden_states[..., 0], k=1).indices\n"
        "            keep_indexs = torch.arange(self.frame_num)\n"
        f"        {bench.FASTVID_END}\n"
        "        return hidden_states\n"
    )
    block, density, where = bench.load_fastvid(tmp_path)
    tokens = torch.arange(12.0).reshape(6, 2)
    kept = bench.run_fastvid_block(block, tokens, torch.ones(6), frames=3)
    assert kept.tolist() == [0, 1, 2]
    assert bench.run_fastvid_density(density, tokens, 1).tolist() == [5]
    assert "lines 3-8 (block), 6-7 (density)" in where
