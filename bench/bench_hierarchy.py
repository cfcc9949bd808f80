"""The hierarchical global pool against the flat outer stage on the same tokens (issue 14).

For F frames x 196 tokens at d = 3584, retention 2%, the video split into C consecutive chunks:

* flat: one `compress_video` over all F frames (what indexing does today);
* hierarchical: each chunk's tokens made, compressed (`compress_video`, at the video's ratio
  times --chunk-factors) and dropped, then `pool_token_sets` over the chunk sets: the whole
  chunked indexing of the video, encoder excluded;
* pool: the `pool_token_sets` call alone; update: one incremental step (the video-level set of
  the first C - 1 chunks plus the last chunk set), what a live video pays per new chunk;
* peak: a fresh subprocess per variant reports its peak RSS (VmHWM) minus its RSS (VmRSS) before
  making any token: the tokens each path must hold are included (all F frames for flat, one
  chunk at a time for hierarchical), as in indexing;
* agreement of the hierarchical set with the flat one (`compression.hierarchy.agreement`:
  Jaccard of kept positions, of selected positions, of the rows' sources).

Flat and hierarchical runs alternate (each repeat: flat once, then every chunking once), --repeat
times each; times are medians (update: one run). Tokens are
synthetic with video-like redundancy as in bench_compress.py (a 196-token scene that changes
every 8 frames, noise), made frame by frame from per-frame seeds, so a chunk's tokens do not
depend on how the video was split.

    .venv/bin/python bench/bench_hierarchy.py [--frames 64 128] [--chunks 4 8 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression import CompressionConfig, TokenSet, compress_video
from compression.hierarchy import agreement, pool_token_sets
from compression.token_set import EncodedVideo, grid_index

SIDE = 14
PER_FRAME = SIDE * SIDE
RATIO = 0.02


def frames_of(start: int, stop: int, dim: int) -> EncodedVideo:
    """Frames start..stop-1 of the synthetic video (each frame from its own seed)."""
    tokens = torch.empty((stop - start) * PER_FRAME, dim)
    scores = torch.empty((stop - start) * PER_FRAME)
    for t in range(start, stop):
        scene = torch.randn(PER_FRAME, dim, generator=torch.Generator().manual_seed(t // 8))
        gen = torch.Generator().manual_seed(1_000_003 + t)
        rows = slice((t - start) * PER_FRAME, (t - start + 1) * PER_FRAME)
        tokens[rows] = scene + 0.5 * torch.randn(PER_FRAME, dim, generator=gen)
        scores[rows] = torch.rand(PER_FRAME, generator=gen)
    grid = (stop - start, SIDE, SIDE)
    return EncodedVideo(
        tokens=tokens,
        index=grid_index(grid),
        scores=scores,
        grid=grid,
        frame_timestamps=tuple(0.5 * t for t in range(start, stop)),
    )


def bounds(frames: int, chunks: int) -> list[tuple[int, int]]:
    edges = [round(i * frames / chunks) for i in range(chunks + 1)]
    return list(itertools.pairwise(edges))


def flat(frames: int, dim: int) -> TokenSet:
    return compress_video(frames_of(0, frames, dim), CompressionConfig(retention_ratio=RATIO))


def chunk_sets(frames: int, chunks: int, dim: int, factor: int) -> list[TokenSet]:
    chunk_config = CompressionConfig(retention_ratio=RATIO * factor)
    return [compress_video(frames_of(a, b, dim), chunk_config) for a, b in bounds(frames, chunks)]


def hierarchical(frames: int, chunks: int, dim: int, factor: int) -> TokenSet:
    config = CompressionConfig(retention_ratio=RATIO)
    return pool_token_sets(chunk_sets(frames, chunks, dim, factor), config)


def seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def peak_extra_mib(variant: str, frames: int, chunks: int, dim: int, factor: int) -> float:
    """Peak RSS of one run of `variant` in a fresh process, minus its RSS before it."""
    command = [
        sys.executable,
        __file__,
        "--_peak-child",
        variant,
        *map(str, (frames, chunks, dim, factor)),
    ]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def _peak_child(variant: str, frames: int, chunks: int, dim: int, factor: int) -> None:
    compress_video(frames_of(0, 2, 64), CompressionConfig(retention_ratio=RATIO))  # load kernels
    before = _proc_status_kib("VmRSS")
    if variant == "flat":
        flat(frames, dim)
    else:
        hierarchical(frames, chunks, dim, factor)
    print((_proc_status_kib("VmHWM") - before) / 1024)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_frames(frames: int, args: argparse.Namespace) -> list[dict]:
    """Rows for every (chunks, chunk factor) at `frames`; each repeat runs flat once, then every
    hierarchical variant once, so load changes hit all alike."""
    config = CompressionConfig(retention_ratio=RATIO)
    variants = [(c, f) for c in args.chunks for f in args.chunk_factors]
    flat_times: list[float] = []
    times: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    pools: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    last: dict[tuple[int, int], tuple[list[TokenSet], TokenSet]] = {}
    for _ in range(args.repeat):
        elapsed, flat_set = seconds(lambda: flat(frames, args.dim))
        flat_times.append(elapsed)
        for chunks, factor in variants:
            elapsed, sets = seconds(lambda c=chunks, f=factor: chunk_sets(frames, c, args.dim, f))
            pool_s, pooled = seconds(lambda sets=sets: pool_token_sets(sets, config))
            times[chunks, factor].append(elapsed + pool_s)
            pools[chunks, factor].append(pool_s)
            last[chunks, factor] = sets, pooled
    flat_peak = peak_extra_mib("flat", frames, 1, args.dim, 1)
    rows = []
    for chunks, factor in variants:
        sets, pooled = last[chunks, factor]
        update = [pool_token_sets(sets[:-1], config), sets[-1]]
        update_s, _ = seconds(lambda update=update: pool_token_sets(update, config))
        rows.append(
            {
                "frames": frames,
                "chunks": chunks,
                "chunk_factor": factor,
                "tokens": frames * PER_FRAME,
                "kept_flat": flat_set.kept_count,
                "kept_hier": pooled.kept_count,
                "union_rows": sum(s.kept_count for s in sets),
                "flat_s": statistics.median(flat_times),
                "hier_s": statistics.median(times[chunks, factor]),
                "pool_s": statistics.median(pools[chunks, factor]),
                "update_s": update_s,
                **agreement(flat_set, pooled),
                "flat_peak_mib": flat_peak,
                "hier_peak_mib": peak_extra_mib("hier", frames, chunks, args.dim, factor),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--chunk-factors", type=int, nargs="+", default=[1])
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeat", type=int, default=3, help="alternated runs of each path")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--_peak-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._peak_child:
        variant, *numbers = args._peak_child
        _peak_child(variant, *map(int, numbers))
        return 0
    machine = f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    rows = []
    for frames in args.frames:
        rows += bench_frames(frames, args)
    print(f"\ncpu ({machine}), float32, d {args.dim}, retention {RATIO}, tau 0.7, k 7")
    print(
        "frames | chunks | chunk ratio | flat s | hier s | hier/flat | pool s | update s | "
        "flat peak MiB | hier peak MiB | peak hier/flat | kept hier/flat | positions | "
        "selected | sources"
    )
    for r in rows:
        print(
            f"{r['frames']} | {r['chunks']} | {r['chunk_factor']}x | {r['flat_s']:.2f} | "
            f"{r['hier_s']:.2f} | {r['hier_s'] / r['flat_s']:.2f} | {r['pool_s']:.3f} | "
            f"{r['update_s']:.3f} | {r['flat_peak_mib']:.0f} | {r['hier_peak_mib']:.0f} | "
            f"{r['hier_peak_mib'] / r['flat_peak_mib']:.2f} | {r['kept_hier']}/{r['kept_flat']} | "
            f"{r['positions']:.3f} | {r['selected']:.3f} | {r['sources']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
