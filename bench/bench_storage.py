"""Benchmark of token-set storage: load latency of one video's token set, bytes read per load,
and write throughput, on local disk and on a loopback S3 endpoint (a moto server started here).

A token set is shaped like LLaVA-OneVision-7B's at 2% retention: 32 frames x 14 x 14 = 6272
tokens, 125 kept, hidden 3584, bf16 (~0.9 MB of tokens, plus the 6272-entry assignment vector).

Compared in the same run, on the same files:
* ours: `read_token_set` (one ranged read of the row group; its footer travels in the location),
  and, loaded in turn with it, the same locations without `crc32` (as recorded before catalog
  revision 0002: the payload CRC is checked instead of the CRC of every byte read),
* row group + footer: pyarrow's `ParquetFile(...).read_row_group(i)` through fsspec (reads the
  file's footer, which grows with the number of token sets in the file, then the row group),
* whole file: read the entire file and take the row (what a naive loader does),
and the floor: a bare ranged GET of the same bytes, decoding nothing.

    python bench/bench_storage.py [--videos 200] [--per-file 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from compression.token_set import TokenSet
from storage import token_files
from storage.token_files import TokenSetLocation, read_token_set, write_token_sets
from storage.urls import filesystem_for


def llava_ov_token_set(seed: int, kept: int, hidden: int, grid: tuple[int, int, int]) -> TokenSet:
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    flat = torch.randperm(n, generator=g)[:kept].sort().values
    index = torch.stack(
        [flat // (grid[1] * grid[2]), (flat // grid[2]) % grid[1], flat % grid[2]], 1
    )
    assignment = torch.randint(-1, kept, (n,), generator=g, dtype=torch.int32)
    return TokenSet(
        tokens=torch.randn(kept, hidden, generator=g).to(torch.bfloat16),
        index=index.to(torch.int32),
        kind=torch.zeros(kept, dtype=torch.int8),
        size=torch.ones(kept, dtype=torch.int32),
        grid=grid,
        assignment=assignment,
        model_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        source_uri=f"s3://videos/bench-{seed}.mp4",
        frame_timestamps=tuple(float(t) for t in range(grid[0])),
    )


class CountingFileSystem:
    """Counts the bytes returned by `cat_file`, the only method `read_token_set` uses."""

    def __init__(self, fs) -> None:
        self.fs = fs
        self.bytes_read = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = self.fs.cat_file(path, start=start, end=end, **kwargs)
        self.bytes_read += len(data)
        return data


class CountingReader(io.RawIOBase):
    """A read-only file object over an fsspec file that counts the bytes it returns."""

    def __init__(self, f) -> None:
        self.f = f
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self.f.close()
        super().close()


def load_ours(location: TokenSetLocation) -> tuple[TokenSet, int]:
    counters: list[CountingFileSystem] = []

    def counting_filesystem_for(url: str):
        fs, path = filesystem_for(url)
        counters.append(CountingFileSystem(fs))
        return counters[-1], path

    token_files.filesystem_for = counting_filesystem_for
    try:
        token_set = read_token_set(location)
    finally:
        token_files.filesystem_for = filesystem_for
    return token_set, sum(c.bytes_read for c in counters)


def raw_range_get(location: TokenSetLocation) -> tuple[bytes, int]:
    """The floor: fetch the same byte range and decode nothing."""
    fs, path = filesystem_for(location.file_url)
    data = fs.cat_file(path, start=location.offset, end=location.offset + location.length)
    return data, len(data)


def load_with_footer(location: TokenSetLocation) -> tuple[pa.Table, int]:
    fs, path = filesystem_for(location.file_url)
    reader = CountingReader(fs.open(path, "rb", cache_type="none"))
    with pa.PythonFile(reader, mode="r") as source:
        table = pq.ParquetFile(source).read_row_group(location.row_group)
    return table, reader.bytes_read


def load_whole_file(location: TokenSetLocation) -> tuple[pa.Table, int]:
    fs, path = filesystem_for(location.file_url)
    data = fs.cat_file(path)
    table = pq.read_table(pa.BufferReader(data))
    row = table.slice(location.row_group, 1)
    assert row.column("video_id")[0].as_py() == location.video_id
    return row, len(data)


def measure(
    load: Callable[[TokenSetLocation], tuple[object, int]],
    locations: list[TokenSetLocation],
    own_bytes: int,
) -> dict[str, float]:
    return _summary([_timed(load, location) for location in locations], own_bytes)


def measure_alternately(
    load: Callable[[TokenSetLocation], tuple[object, int]],
    first: list[TokenSetLocation],
    second: list[TokenSetLocation],
    own_bytes: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """`measure` of two lists loaded in turn (first[0], second[0], first[1], ...), so that the
    machine's other work and the caches' warmth weigh on both alike."""
    pairs = [(_timed(load, a), _timed(load, b)) for a, b in zip(first, second, strict=True)]
    return _summary([a for a, _ in pairs], own_bytes), _summary([b for _, b in pairs], own_bytes)


def _timed(
    load: Callable[[TokenSetLocation], tuple[object, int]], location: TokenSetLocation
) -> tuple[float, float, int]:
    """(wall s, CPU s, bytes read) of one load."""
    start, cpu_start = time.perf_counter(), time.process_time()
    _, read = load(location)
    return time.perf_counter() - start, time.process_time() - cpu_start, read


def _summary(loads: list[tuple[float, float, int]], own_bytes: int) -> dict[str, float]:
    times, cpu_times, reads = zip(*loads, strict=True)
    ms = np.array(times) * 1000
    return {
        "loads": len(loads),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        # CPU time of this process (all its threads): what the load costs on an idle machine,
        # minus waiting on the disk/network; robust when other jobs share the cores.
        "cpu_ms_p50": float(np.percentile(cpu_times, 50) * 1000),
        "bytes_per_load": float(np.mean(reads)),
        "x_own_bytes": float(np.mean(reads)) / own_bytes,
    }


def start_moto() -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
    )
    return proc


def bench_backend(store_url: str, token_sets: list[TokenSet], args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    locations: list[TokenSetLocation] = []
    for i in range(0, len(token_sets), args.per_file):
        locations += write_token_sets(store_url, token_sets[i : i + args.per_file])
    write_s = time.perf_counter() - start
    own = token_sets[0].nbytes
    fs, path = filesystem_for(locations[0].file_url)
    order = random.Random(0).sample(locations, len(locations))
    load_ours(order[0])  # warm the filesystem client (connection pool, imports)
    result = {
        "write_token_sets_per_s": len(token_sets) / write_s,
        "write_MB_per_s": len(token_sets) * own / write_s / 1e6,
        "file_MB": fs.size(path) / 1e6,
        "ours": measure(load_ours, order, own),
        "raw_range_get_floor": measure(raw_range_get, order, own),
        "row_group_plus_footer": measure(load_with_footer, order[: args.baseline_loads], own),
        "whole_file": measure(load_whole_file, order[: args.naive_loads], own),
    }
    # The cost of checking `crc32` (every byte read) instead of the payload CRC, as for a location
    # recorded before catalog revision 0002: the same loads, in turn.
    result["ours_crc32"], result["ours_payload_crc_only"] = measure_alternately(
        load_ours, order, [dataclasses.replace(loc, crc32=None) for loc in order], own
    )
    by_location = dict(zip((loc.video_id for loc in locations), token_sets, strict=True))
    for location in order[:3]:  # the loads return the very tokens written
        loaded = load_ours(location)[0].tokens.view(torch.int16)
        assert torch.equal(loaded, by_location[location.video_id].tokens.view(torch.int16))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--per-file", type=int, default=100)
    parser.add_argument("--kept", type=int, default=125)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--grid", type=int, nargs=3, default=(32, 14, 14))
    parser.add_argument("--baseline-loads", type=int, default=50)
    parser.add_argument("--naive-loads", type=int, default=10)
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    token_sets = [
        llava_ov_token_set(seed, args.kept, args.hidden, tuple(args.grid))
        for seed in range(args.videos)
    ]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
        "load_average_1m_at_start": os.getloadavg()[0],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "token_set_bytes": token_sets[0].nbytes,
        "token_bytes": token_sets[0].tokens.numel() * 2,
        "videos": args.videos,
        "per_file": args.per_file,
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["local"] = bench_backend(tmp, token_sets, args)
    if not args.no_s3:
        import boto3

        moto = start_moto()
        try:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3").create_bucket(Bucket=bucket)
            report["s3_loopback"] = bench_backend(f"s3://{bucket}/store", token_sets, args)
        finally:
            moto.terminate()
            moto.wait(timeout=10)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
