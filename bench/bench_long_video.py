"""Long and live video indexing on CPU with the tiny LLaVA-OV (issue 14).

* Indexing time and peak memory vs video length: synthetic videos (64 x 64, 1 fps, one static
  scene with a 5-second event; `tokenreel.sample_videos.write_long_video`) of --minutes each,
  indexed in --chunk-seconds windows of --frames frames (`jobs.index.chunks.index_long_video`),
  against today's one-pass indexing of the same file (--frames-one-pass frames over the whole
  video, `jobs.index.video.index_video`) measured in the same run. Each run is a fresh
  subprocess that loads the model, then reports the wall time of the indexing alone and its
  peak RSS (VmHWM) minus its RSS before indexing (VmRSS after the model loaded).
* Live-follow lag: a follower (`jobs.index.follow.follow_source`, poll --poll-seconds) on a
  directory; --segments segments of --segment-seconds are renamed into it one after another;
  lag = from the rename (segment complete) until the catalog lists its chunk (answerable: the
  video-level set that includes it is recorded in the same transaction). Baseline: the time the
  follower spent encoding + pooling + recording that chunk (its own work), so lag - work is what
  polling and listing add.

    .venv/bin/python bench/bench_long_video.py [--minutes 10 60 180] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "tiny-llava-ov"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def single(mode: str, video: str, args: argparse.Namespace) -> dict:
    """One indexing run in this (fresh) process; its time and peak memory."""
    import torch

    from compression import CompressionConfig
    from compression.models import load_video_llm
    from jobs.index.chunks import index_long_video
    from jobs.index.decode import DecodeSettings
    from jobs.index.video import index_video
    from storage import open_store

    torch.set_num_threads(args.threads)
    llm = load_video_llm(MODEL, device="cpu")
    store = open_store(tempfile.mkdtemp(prefix="bench-long-"))
    base = _rss_kib("VmRSS")
    started = time.perf_counter()
    if mode == "chunked":
        config = CompressionConfig(
            retention_ratio=args.ratio,
            frames=args.frames,
            frame_size=70,
            chunk_seconds=args.chunk_seconds,
        )
        video_set, chunks = index_long_video(llm, video, config, store)
        kept, windows = video_set.kept_count, len(chunks)
    else:
        config = CompressionConfig(
            retention_ratio=args.ratio, frames=args.frames_one_pass, frame_size=70
        )
        [video_set] = index_video(
            llm, video, DecodeSettings(args.frames_one_pass, frame_size=70), [config]
        )
        store.save([video_set])
        kept, windows = video_set.kept_count, 1
    elapsed = time.perf_counter() - started
    return {
        "mode": mode,
        "seconds": elapsed,
        "peak_mib": (_rss_kib("VmHWM") - base) / 1024,
        "kept": kept,
        "windows": windows,
        "frames_encoded": video_set.frame_count,
    }


def run_single(mode: str, video: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--single", mode, "--video", video,
               "--frames", str(args.frames), "--frames-one-pass", str(args.frames_one_pass),
               "--chunk-seconds", str(args.chunk_seconds), "--ratio", str(args.ratio),
               "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def lengths(args: argparse.Namespace, workdir: Path) -> list[dict]:
    from tokenreel.sample_videos import write_long_video

    rows = []
    for minutes in args.minutes:
        video = workdir / f"video_{minutes}min.mp4"
        made = time.perf_counter()
        write_long_video(video, minutes * 60, fps=1, size=64, events=[(minutes * 30, 5.0)])
        write_s = time.perf_counter() - made
        chunked = run_single("chunked", str(video), args)
        one_pass = run_single("one-pass", str(video), args)
        hours = minutes / 60
        row = {
            "minutes": minutes,
            "write_s": write_s,
            "chunked": chunked,
            "one_pass": one_pass,
            "chunked_s_per_hour": chunked["seconds"] / hours,
            "time_chunked_over_one_pass": chunked["seconds"] / one_pass["seconds"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        video.unlink()
    return rows


def follow_lag(args: argparse.Namespace, workdir: Path) -> dict:
    import torch

    from compression import CompressionConfig
    from compression.models import load_video_llm
    from jobs.index.follow import follow_source
    from storage import open_store
    from storage.ids import video_id_for
    from tokenreel.sample_videos import write_long_video

    torch.set_num_threads(args.threads)
    llm = load_video_llm(MODEL, device="cpu")
    live, staging = workdir / "live", workdir / "staging"
    live.mkdir()
    staging.mkdir()
    store = open_store(str(workdir / "store"))
    config = CompressionConfig(
        retention_ratio=args.ratio, frames=args.frames, frame_size=70, chunk_seconds=60.0
    )
    work_s = chunk_work(llm, config, staging, workdir / "work-store", args)
    stop = threading.Event()
    thread = threading.Thread(
        target=follow_source,
        kwargs={"source": str(live), "store": store, "llm": llm, "config": config, "stop": stop,
                "poll_s": args.poll_seconds},
        daemon=True,
    )  # fmt: skip
    thread.start()
    video_id, lags = video_id_for(str(live)), []
    for k in range(args.segments):
        name = f"seg{k:05d}.mp4"
        write_long_video(staging / name, args.segment_seconds, fps=1, size=64, seed=k)
        time.sleep(args.segment_seconds * args.pace)  # a live source writes in real time (scaled)
        os.replace(staging / name, live / name)
        complete = time.perf_counter()
        while len(store.catalog.list_chunks(video_id, MODEL, config.stable_hash())) < k + 1:
            time.sleep(0.01)
        lags.append(time.perf_counter() - complete)
    stop.set()
    thread.join()
    result = {
        "segments": args.segments,
        "lag_median_s": statistics.median(lags),
        "lag_max_s": max(lags),
        "work_median_s": statistics.median(work_s),
        "lags_s": lags,
    }
    print(json.dumps(result), flush=True)
    return result


def chunk_work(llm, config, staging: Path, store_dir: Path, args: argparse.Namespace) -> list:
    """The follower's own work per segment, alone: decode + encode + compress the segment,
    pool it into the video-level set, record both (what `follow_source` does per unit)."""
    from compression.hierarchy import pool_token_sets
    from jobs.index.chunks import (
        Window,
        WindowFrames,
        decode_window,
        encode_chunk,
        frame_times,
        sampled_indices,
        video_end,
    )
    from storage import open_store
    from tokenreel.sample_videos import write_long_video

    store = open_store(str(store_dir))
    metadata = {"model_id": llm.model_id, "video_id": "work", "source_uri": "/bench/work"}
    video_set, offset, times_s = None, 0.0, []
    for k in range(4):
        path = write_long_video(staging / f"work{k}.mp4", args.segment_seconds, fps=1, size=64)
        started = time.perf_counter()
        times = frame_times(str(path))
        window = Window(k, 0.0, video_end(times, times[-1]))
        indices = sampled_indices(times, list(range(len(times))), window, config)
        piece = decode_window(str(path), times, window, indices, config.frame_size)
        shifted = WindowFrames(
            Window(k, offset, offset + window.end_s),
            piece.frames,
            tuple(offset + t for t in piece.timestamps),
        )
        chunk = encode_chunk(llm, shifted, config.chunk_config(), metadata)
        inputs = [chunk.token_set] if video_set is None else [video_set, chunk.token_set]
        video_set = pool_token_sets(inputs, config).with_metadata(**metadata)
        store.save_chunks(video_set, [chunk.entry()])
        offset = chunk.window.end_s
        times_s.append(time.perf_counter() - started)
    return times_s[1:]  # the first one warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60, 180])
    parser.add_argument("--chunk-seconds", type=float, default=60.0)
    parser.add_argument("--frames", type=int, default=8, help="frames per window")
    parser.add_argument("--frames-one-pass", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--segment-seconds", type=int, default=6)
    parser.add_argument("--pace", type=float, default=0.25, help="real-time share between segments")
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--skip-lengths", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--single", choices=["chunked", "one-pass"], default=None)
    parser.add_argument("--video", default=None)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(single(args.single, args.video, args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
        workdir = Path(tmp)
        report = {
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
            },
            "settings": {k: v for k, v in vars(args).items() if k not in ("single", "video")},
            "lengths": [] if args.skip_lengths else lengths(args, workdir),
            "follow": follow_lag(args, workdir),
        }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
