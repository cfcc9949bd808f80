"""Outer-stage compression time per video, against a naive pool and the physical yardstick.

For F frames x 196 tokens at d = 3584 (LLaVA-OV-7B's projected tokens), retention 2%:

* pool: the global retention pool as shipped (blocks of the contribution order, no N x N matrix);
* naive pool: the obvious form, the full N x N cosine matrix, then a host loop over tokens;
* matmul: one [N, d] x [d, N] product in the tokens' dtype on the same device (the yardstick:
  the naive pool can never be faster than this);
* DPC-KNN: the recycle-pool clustering alone; compress: one whole `compression.compress` call
  (on CPU in the memory subprocess below); on CUDA also `compress_batch` over --batch videos,
  per video;
* peak extra memory of `compress` over its inputs: on CUDA from torch.cuda.max_memory_allocated,
  on CPU in a fresh subprocess: its peak RSS (VmHWM) during compress minus its RSS (VmRSS) just
  before, the inputs being built frame by frame so nothing earlier set a higher peak (the figure
  is what compress itself adds, allocator slack included).

Tokens are synthetic with video-like redundancy: a scene of 196 random tokens that changes every
8 frames, and per-frame noise (cosine ~0.9 between neighbouring frames), so the pool rejects.

    .venv/bin/python bench/bench_compress.py [--frames 32 64 128] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression import CompressionConfig, compress, compress_batch
from compression.dpc_knn import dpc_knn
from compression.retention_pool import contribution_order, retention_pool, unit_rows
from compression.token_set import EncodedVideo

TOKENS_PER_FRAME = 196
SIDE = 14


def synthetic_video(frames: int, dim: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Tokens filled frame by frame, so making them leaves no memory high-water mark behind."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.empty(frames * TOKENS_PER_FRAME, dim, dtype=dtype, device=device)
    for t in range(frames):
        if t % 8 == 0:
            scene = torch.randn(TOKENS_PER_FRAME, dim, generator=gen)
        noise = 0.5 * torch.randn(TOKENS_PER_FRAME, dim, generator=gen)
        tokens[t * TOKENS_PER_FRAME : (t + 1) * TOKENS_PER_FRAME] = scene + noise
    scores = torch.rand(frames * TOKENS_PER_FRAME, generator=gen)
    axes = torch.meshgrid(
        torch.arange(frames), torch.arange(SIDE), torch.arange(SIDE), indexing="ij"
    )
    index = torch.stack(axes, dim=-1).reshape(-1, 3)
    return tokens, scores.to(device), index.to(device)


def naive_pool(tokens: torch.Tensor, scores: torch.Tensor, capacity: int, tau: float) -> list[int]:
    """The obvious implementation: all pairwise cosines first, then one host step per token."""
    unit = unit_rows(tokens)
    similarity = (unit @ unit.T).cpu()
    pool: list[int] = []
    for i in contribution_order(scores).tolist():
        if len(pool) == capacity:
            break
        if not pool or float(similarity[i, pool].max()) < tau:
            pool.append(i)
    return pool


def timed(fn: Callable[[], object], device: str, repeat: int) -> float:
    """Median seconds of `repeat` runs, after one warm-up run on CUDA or when repeat > 1 (on CPU
    a lone run of a many-second step needs no warm-up)."""
    if device == "cuda" or repeat > 1:
        fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compress_cost(frames: int, dim: int, device: str, dtype: torch.dtype) -> tuple[float, int]:
    """(seconds, peak extra bytes) of one `compress` call on a fresh video."""
    if device == "cuda":
        tokens, scores, index = synthetic_video(frames, dim, device, dtype)
        compress(tokens[:392], scores[:392], index[:392], CompressionConfig())  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        compress(tokens, scores, index, CompressionConfig())
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
    command = [sys.executable, __file__, "--_rss-child", str(frames), str(dim), str(dtype)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    return float(output[0]), int(output[1])


def _rss_child(frames: int, dim: int, dtype_name: str) -> None:
    """Subprocess body: seconds of one `compress` call, and its peak RSS (VmHWM) minus the RSS
    (VmRSS) just before it."""
    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    tokens, scores, index = synthetic_video(frames, dim, "cpu", dtype)
    compress(tokens[:392], scores[:392], index[:392], CompressionConfig())  # load kernels first
    before = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    compress(tokens, scores, index, CompressionConfig())
    seconds = time.perf_counter() - start
    print(seconds, (_proc_status_kib("VmHWM") - before) * 1024)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_one(frames: int, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict:
    tokens, scores, index = synthetic_video(frames, args.dim, device, dtype)
    config = CompressionConfig()
    n = tokens.shape[0]
    capacity, _ = config.split_budget(n)
    row: dict = {"frames": frames, "tokens": n, "dim": args.dim, "budget": config.budget(n)}
    pool = retention_pool(tokens, scores, capacity, config.tau)
    row["pool_size"] = pool.numel()
    row["pool_s"] = timed(
        lambda: retention_pool(tokens, scores, capacity, config.tau), device, args.repeat
    )
    row["matmul_s"] = timed(lambda: tokens @ tokens.T, device, args.repeat)
    if 4 * n * n <= args.naive_max_bytes:
        start = time.perf_counter()
        naive = naive_pool(tokens, scores, capacity, config.tau)
        row["naive_pool_s"] = time.perf_counter() - start
        row["naive_same_pool"] = naive == pool.tolist()
    in_pool = torch.zeros(n, dtype=torch.bool, device=device)
    in_pool[pool] = True
    recycled = tokens[~in_pool]
    clusters = config.budget(n) - pool.numel()
    row["dpc_knn_s"] = timed(lambda: dpc_knn(recycled, clusters, config.knn_k), device, 1)
    row["compress_s"], peak = compress_cost(frames, args.dim, device, dtype)
    row["peak_extra_mib"] = peak / 2**20
    if device == "cuda":
        videos = [
            EncodedVideo(tokens=tokens, index=index, scores=scores, grid=(frames, SIDE, SIDE))
        ] * args.batch
        row["batch_s_per_video"] = timed(lambda: compress_batch(videos, config), device, 1) / len(
            videos
        )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of pool and matmul")
    parser.add_argument("--batch", type=int, default=8, help="videos per compress_batch on CUDA")
    parser.add_argument(
        "--naive-max-bytes", type=int, default=3 * 2**30, help="skip the naive pool above this"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--_rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rss_child:
        frames, dim, dtype_name = args._rss_child
        _rss_child(int(frames), int(dim), dtype_name)
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    machine = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    rows = []
    for frames in args.frames:
        rows.append(bench_one(frames, args, device, dtype))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\ndevice: {device} ({machine}), dtype {dtype}, retention 2%, tau 0.7, k 7")
    print(
        "frames | N | pool s | matmul s | pool/matmul | naive pool s | naive/pool | "
        "DPC-KNN s | compress s | batch s/video | peak extra MiB"
    )
    for r in rows:
        naive = r.get("naive_pool_s")
        naive_cells = f"{naive:.3f} | {naive / r['pool_s']:.1f}x" if naive else "skipped | -"
        batch = r.get("batch_s_per_video")
        print(
            f"{r['frames']} | {r['tokens']} | {r['pool_s']:.3f} | {r['matmul_s']:.3f} | "
            f"{r['pool_s'] / r['matmul_s']:.2f} | {naive_cells} | {r['dpc_knn_s']:.3f} | "
            f"{r['compress_s']:.3f} | {f'{batch:.3f}' if batch else '-'} | "
            f"{r['peak_extra_mib']:.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": device, "machine": machine, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
