"""Indexing throughput: the Ray Data pipeline against the bare encoder, where the time goes, and
whether memory stays flat.

On CUDA (bf16): LLaVA-OV-7B's architecture (SigLIP-so400m at 384 x 384 + Qwen2-7B, random weights,
built by `bench_answer.build_model`, nothing downloaded), 32 frames per video. On CPU: the tiny
model and few frames, so it finishes in minutes.

Figures, all from one run:

* bare encoder: the same model in this process encodes + compresses frames decoded beforehand
  (no decoding, no Ray), in batches of the same size; videos per second.
* pipeline: `index_videos` on the same videos; its steady-state videos per second (from the first
  finished batch to the last, so the actor's model load is not counted) and the ratio to the bare
  encoder (goal >= 90% on the GPU: decoding must not starve the encoder).
* where the time goes: summed worker seconds per stage (decode, encode, compress, write).
* memory: RSS of the driver, the encode actor(s), the other Ray workers and the decoder child
  processes, sampled every 0.25 s: the first sample after N/10 videos against the last one
  while the encode actor is alive (flat = the same; decord is known to leak).

    .venv/bin/python bench/bench_index.py                      # CUDA: 7B, 32 frames; CPU: tiny
    .venv/bin/python bench/bench_index.py --videos 40 --json /tmp/bench_index.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_answer import build_model  # noqa: E402  (the 7B config is defined once, there)

from compression import compress_video  # noqa: E402
from compression.config import CompressionConfig  # noqa: E402
from jobs.decode import DecodeSettings, decode_video  # noqa: E402
from jobs.index import ModelLoader, index_videos  # noqa: E402
from jobs.sample_videos import make_sample_videos  # noqa: E402

MIB = 1 << 20


def load_random_llava_ov(size: str, device: str = "cpu"):
    """bench_answer's random-weight LLaVA-OV, as an encode actor loads it."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return build_model(size, device, dtype)


def model_loader(name: str) -> ModelLoader:
    if name.startswith("random-llava-ov-"):
        size = name.removeprefix("random-llava-ov-")
        return ModelLoader(name, functools.partial(load_random_llava_ov, size), frame_size=384)
    return ModelLoader.by_name(name)


def bare_encoder_rate(loader: ModelLoader, paths, settings, batch_size, device, config) -> dict:
    """Videos per second of encode + compress alone, on frames decoded beforehand."""
    decoded = [decode_video(p, settings) for p in paths]
    llm = loader.load(device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def one_pass(llm) -> float:
        sync()
        started = time.perf_counter()
        for i in range(0, len(decoded), batch_size):
            batch = decoded[i : i + batch_size]
            encoded = llm.encode_batch([v.frames for v in batch], [v.timestamps for v in batch])
            for video in encoded:
                compress_video(video, config).to("cpu")
        sync()
        return time.perf_counter() - started

    one_pass(llm)  # warm-up: kernels, allocator, caches
    seconds = one_pass(llm)
    del llm
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"videos": len(decoded), "seconds": seconds, "videos_per_second": len(decoded) / seconds}


def rss_by_role() -> dict[str, float]:
    """MiB of resident memory: this driver, its encode actors, its other Ray workers, and their
    decoder children (only this driver's descendants: other Ray clusters on the machine are not
    ours to count)."""
    driver = psutil.Process()
    roles = {"driver": driver.memory_info().rss / MIB}
    roles.update(encode_actors=0.0, other_ray_workers=0.0, decoders=0.0)
    for proc in driver.children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            rss = proc.memory_info().rss / MIB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "EncodeAndCompress" in title:
            roles["encode_actors"] += rss
        elif "jobs.decode" in title:
            roles["decoders"] += rss
        elif title.startswith("ray::"):
            roles["other_ray_workers"] += rss
    return {k: round(v, 1) for k, v in roles.items()}


def main() -> int:
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random-llava-ov-7b" if on_gpu else "tiny-llava-ov")
    parser.add_argument("--videos", type=int, default=200 if on_gpu else 40)
    parser.add_argument("--frames", type=int, default=32 if on_gpu else 8)
    parser.add_argument("--video-frames", type=int, default=96 if on_gpu else 32)
    parser.add_argument("--width", type=int, default=640 if on_gpu else 160)
    parser.add_argument("--height", type=int, default=360 if on_gpu else 120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--decode-workers", type=int, default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import ray

    device = "cuda" if on_gpu else "cpu"
    loader = model_loader(args.model)
    config = CompressionConfig()
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    started = time.perf_counter()
    paths = make_sample_videos(
        work / "videos",
        args.videos,
        frames=args.video_frames,
        width=args.width,
        height=args.height,
        seed=1,
    )
    print(f"{len(paths)} videos written in {time.perf_counter() - started:.1f} s", flush=True)
    settings = DecodeSettings(num_frames=args.frames, frame_size=loader.frame_size)
    bare_count = max(args.batch_size, min(len(paths), 8 * args.batch_size))
    bare = bare_encoder_rate(loader, paths[:bare_count], settings, args.batch_size, device, config)
    print(f"bare encoder: {bare['videos_per_second']:.2f} videos/s", flush=True)

    # Workers must import bench_answer to build the random model.
    pythonpath = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    marks: list[tuple[float, int]] = [(time.perf_counter(), 0)]
    samples: list[dict[str, float]] = []
    finished = threading.Event()

    def sample_memory() -> None:
        # Sampled on a timer, not on progress reports: the last reports arrive after Ray Data
        # has already let the idle encode actor go.
        while not finished.wait(0.25):
            samples.append({"videos": marks[-1][1], **rss_by_role()})

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    summary = index_videos(
        work / "videos",
        store_url=str(work / "store"),
        model=loader,
        config=config,
        frames=args.frames,
        workers=1,
        gpus_per_worker=1.0 if on_gpu else 0.0,
        decode_workers=args.decode_workers,
        batch_size=args.batch_size,
        progress=False,
        on_progress=lambda done, todo: marks.append((time.perf_counter(), done)),
    )
    finished.set()
    sampler.join()
    ray.shutdown()
    tenth = max(1, args.videos // 10)
    with_actor = [s for s in samples if s["encode_actors"] > 0]
    memory = {
        "after_tenth": next((s for s in with_actor if s["videos"] >= tenth), None),
        "late": with_actor[-1] if with_actor else None,
        "peak_driver": max((s["driver"] for s in samples), default=None),
    }
    (t_first, n_first), (t_last, n_last) = marks[1], marks[-1]
    # Batches reach the driver in bursts: a steady rate needs several batches after the first.
    enough = n_last - n_first >= 2 * args.batch_size and t_last > t_first
    steady = (n_last - n_first) / (t_last - t_first) if enough else float("nan")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if on_gpu else ""),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": loader.model_id,
        "device": device,
        "frames": args.frames,
        "frame_size": settings.frame_size,
        "videos": args.videos,
        "video_shape": f"{args.video_frames} x {args.width} x {args.height}",
        "batch_size": args.batch_size,
        "bare_encoder_videos_per_second": round(bare["videos_per_second"], 3),
        "pipeline_steady_videos_per_second": round(steady, 3),
        "pipeline_ratio_to_bare": round(steady / bare["videos_per_second"], 3),
        "pipeline_overall_videos_per_second": round(summary.videos_per_second, 3),
        "indexed": summary.indexed,
        "failed": summary.failed,
        "stage_seconds": {k: round(v, 2) for k, v in summary.stage_seconds.items()},
        "memory_mib": memory,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
