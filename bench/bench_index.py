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
* memory: RSS by role (driver, encode actor, decode/write task workers, decoder children,
  Ray's own processes; see `RoleMemorySampler`), sampled every 0.1 s while the job runs, each
  role against its own stage's progress (videos encoded, or videos in the catalog): RSS once
  the stage had done --memory-base videos (100) against its last sample (all --videos done),
  summed over the role's processes and over only the processes alive at both samples. The
  pipeline's decoder children are recycled every 64 videos, so the run cannot show decord's
  leak; a separate decoder child that is never recycled decodes --videos videos beforehand and
  its RSS is recorded every --memory-base videos: that is the leak the recycling bounds.
  The catalog sees --videos distinct videos; only --distinct clips are written, the rest of
  the URIs are symlinks to them.

    .venv/bin/python bench/bench_index.py                      # CUDA: 7B, 32 frames; CPU: tiny
    .venv/bin/python bench/bench_index.py --videos 200 --json /tmp/bench_index.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_answer import build_model  # noqa: E402  (the 7B config is defined once, there)

from compression import compress_video  # noqa: E402
from compression.config import CompressionConfig  # noqa: E402
from jobs.index import ModelLoader, index_videos  # noqa: E402
from jobs.index.decode import DecoderProcess, DecodeSettings, decode_video  # noqa: E402
from storage import open_store  # noqa: E402
from tokenreel.sample_videos import make_sample_videos  # noqa: E402

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


ROLES = ("driver", "encode_actor", "decode_workers", "decoders", "write_workers", "ray_system")
# Each role's memory is read against its own stage's progress: the encoder runs far ahead of
# the writes on CPU (all 1,000 videos were encoded before the catalog had 100), so the catalog's
# count would put the encode actor's whole life at "0 videos".
ROLE_CLOCK = {
    "driver": "indexed",
    "encode_actor": "encoded",
    "decode_workers": "encoded",
    "decoders": "encoded",
    "write_workers": "indexed",
    "ray_system": "indexed",
}
# Ray sets a worker's process title to the task or actor it runs ("ray::IDLE" in between).
ENCODE_TITLE = "EncodeAndCompress"
TASK_ROLES = {"decode_videos": "decode_workers", "write_batch": "write_workers"}
DECODER_MODULE = "jobs.index.decode"


class CountingModel:
    """The encode actor's model, counting: after each batch it writes how many videos it has
    encoded to `path` (atomically), the clock the sampler reads the actor's memory against."""

    def __init__(self, llm: Any, path: str) -> None:
        self._llm, self._path, self._count = llm, path, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def encode_batch(self, frames, timestamps):
        encoded = self._llm.encode_batch(frames, timestamps)
        self._count += len(frames)
        Path(f"{self._path}.tmp").write_text(str(self._count))
        os.replace(f"{self._path}.tmp", self._path)
        return encoded


def load_counting(load: Callable[..., Any], path: str, **kwargs: Any) -> CountingModel:
    return CountingModel(load(**kwargs), path)


def read_count(path: Path) -> int:
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return 0


class RoleMemorySampler:
    """RSS by role of this driver and everything it started, sampled on a timer by a thread.

    Roles: driver; encode_actor (the EncodeAndCompress actor); decode_workers and
    write_workers (the Ray workers running decode or write tasks); decoders (the
    decoder child processes of the decode tasks, `jobs.index.decode`); ray_system (raylet, GCS,
    agents, Ray Data's helper actors, idle workers). A worker keeps the role of the last task it
    was seen running (between tasks its title is "ray::IDLE"; Ray may reuse a decode worker for
    writes, and it then counts as a writer). Only this driver's descendants count: other Ray
    clusters on the machine are not ours.

    Each sample also reads `clocks` (name -> current count of videos): progress as the workers
    see it, not the driver's progress reports, which come in bursts well after the work.
    """

    def __init__(self, clocks: dict[str, Callable[[], int]], interval_s: float = 0.1) -> None:
        self.clocks = clocks
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self._counts = dict.fromkeys(clocks, 0)
        self._roles: dict[int, str] = {}
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RoleMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.sample())

    def sample(self) -> dict:
        """{"t", clock: videos, role: {"mib": summed RSS, "procs", "max_proc_mib", "pids"}}."""
        for name, clock in self.clocks.items():
            # A busy catalog or a half-written count: keep the last value, read again next time.
            with contextlib.suppress(Exception):
                self._counts[name] = clock()
        driver = psutil.Process()
        sizes: dict[str, dict[int, float]] = {role: {} for role in ROLES}
        sizes["driver"][driver.pid] = driver.memory_info().rss / MIB
        for proc in driver.children(recursive=True):
            try:
                role = self._role(proc)
                sizes[role][proc.pid] = proc.memory_info().rss / MIB
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        sample: dict = {"t": round(time.perf_counter() - self._started, 2), **self._counts}
        for role, by_pid in sizes.items():
            sample[role] = {
                "mib": round(sum(by_pid.values()), 1),
                "procs": len(by_pid),
                "max_proc_mib": round(max(by_pid.values(), default=0.0), 1),
                "pids": by_pid,
            }
        return sample

    def _role(self, proc: psutil.Process) -> str:
        title = " ".join(proc.cmdline())
        if DECODER_MODULE in title:
            return "decoders"
        if ENCODE_TITLE in title:
            role = "encode_actor"
        else:
            tasks = [role for name, role in TASK_ROLES.items() if name in title]
            role = tasks[0] if tasks else self._roles.get(proc.pid, "ray_system")
        self._roles[proc.pid] = role
        return role


def _point(sample: dict, role: str) -> dict:
    point = {"encoded": sample["encoded"], "indexed": sample["indexed"], **sample[role]}
    del point["pids"]
    return point


def same_process_ratio(first: dict, last: dict) -> tuple[int, float | None]:
    """How many processes the two samples of a role share, and their summed RSS's ratio: growth
    of the same processes, apart from processes started or recycled in between."""
    common = first["pids"].keys() & last["pids"].keys()
    if not common:
        return 0, None
    return len(common), round(
        sum(last["pids"][p] for p in common) / sum(first["pids"][p] for p in common), 3
    )


def memory_report(samples: list[dict], base: int) -> dict:
    """Per role: RSS at the first sample where its stage had done `base` videos, at its last
    sample (the end of the run, or of the role: Ray Data releases the encode actor before the
    last batches are written), their ratio, and the role's peak over the run."""
    report = {}
    for role in ROLES:
        alive = [s for s in samples if s[role]["procs"] > 0]
        first = next((s for s in alive if s[ROLE_CLOCK[role]] >= base), None)
        if first is None:
            report[role] = None
            continue
        last = alive[-1]
        shared, shared_ratio = same_process_ratio(first[role], last[role])
        report[role] = {
            "clock": ROLE_CLOCK[role],
            "base": _point(first, role),
            "end": _point(last, role),
            "ratio": round(last[role]["mib"] / first[role]["mib"], 3),
            "same_processes": shared,
            "same_process_ratio": shared_ratio,
            "peak_mib": max(s[role]["mib"] for s in alive),
            "peak_proc_mib": max(s[role]["max_proc_mib"] for s in alive),
        }
    return report


def memory_series(samples: list[dict], step: int) -> list[dict]:
    """Memory against progress: the samples where a clock passed a multiple of `step`."""
    series, seen = [], set()
    for sample in samples:
        marks = {(name, sample[name] // step) for name in ("encoded", "indexed")}
        if marks - seen:
            seen |= marks
            point = {"t": sample["t"], "encoded": sample["encoded"], "indexed": sample["indexed"]}
            series.append({**point, **{role: sample[role]["mib"] for role in ROLES}})
    return series


def format_memory(report: dict, base: int, end: int) -> str:
    """The memory report as a Markdown table (MiB; procs in brackets)."""
    lines = [
        f"| role (clock) | RSS after {base} | RSS after {end} | ratio | same processes: ratio |",
        "|---|---|---|---|---|",
    ]
    for role, entry in report.items():
        if entry is None:
            lines.append(f"| {role} | not seen | | | |")
            continue
        first, last, clock = entry["base"], entry["end"], entry["clock"]
        same = entry["same_process_ratio"]
        lines.append(
            f"| {role} ({clock}) | {first['mib']:.0f} ({first['procs']}) at {first[clock]} "
            f"| {last['mib']:.0f} ({last['procs']}) at {last[clock]} | {entry['ratio']:.3f} "
            f"| {entry['same_processes']}: {'-' if same is None else f'{same:.3f}'} |"
        )
    return "\n".join(lines)


def decoder_growth(
    paths: list[Path], settings: DecodeSettings, videos: int, every: int
) -> list[dict]:
    """RSS of one decoder child that is never recycled, after every `every` of `videos` decodes
    (the files cycled): what the pipeline's recycling every 64 videos hides, i.e. the leak
    itself."""
    decoder = DecoderProcess(recycle_after=videos + 1)
    series = []
    try:
        for i in range(videos):
            decoder.decode(paths[i % len(paths)], settings)
            if (i + 1) % every == 0 or i + 1 == videos:
                rss = psutil.Process(decoder.pid).memory_info().rss / MIB
                series.append({"videos": i + 1, "mib": round(rss, 1)})
    finally:
        decoder.close()
    return series


def linked_copies(paths: list[Path], count: int, directory: Path) -> list[Path]:
    """`count` distinct paths: the files themselves, then symlinks to them in turn, so the
    catalog sees `count` videos while only len(paths) small files are written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = list(paths[:count])
    for i in range(len(out), count):
        link = directory / f"link_{i:05d}.mp4"
        link.symlink_to(paths[i % len(paths)])
        out.append(link)
    return out


def main() -> int:
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random-llava-ov-7b" if on_gpu else "tiny-llava-ov")
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument(
        "--distinct", type=int, default=200, help="clips written; the rest are symlinks to them"
    )
    parser.add_argument("--memory-base", type=int, default=100, help="videos of the base sample")
    parser.add_argument("--frames", type=int, default=32 if on_gpu else 8)
    parser.add_argument("--video-frames", type=int, default=96 if on_gpu else 32)
    parser.add_argument("--width", type=int, default=640 if on_gpu else 160)
    parser.add_argument("--height", type=int, default=360 if on_gpu else 120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--decode-workers", type=int, default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not 1 <= args.memory_base < args.videos:
        parser.error("need 1 <= --memory-base < --videos")

    import ray

    device = "cuda" if on_gpu else "cpu"
    loader = model_loader(args.model)
    config = CompressionConfig()
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    clips = make_sample_videos(
        work / "videos",
        min(args.distinct, args.videos),
        frames=args.video_frames,
        width=args.width,
        height=args.height,
        seed=1,
    )
    paths = linked_copies(clips, args.videos, work / "videos")
    print(
        f"{len(clips)} clips written, {len(paths)} video URIs, "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    settings = DecodeSettings(num_frames=args.frames, frame_size=loader.frame_size)
    bare_count = max(args.batch_size, min(len(paths), 8 * args.batch_size))
    bare = bare_encoder_rate(loader, paths[:bare_count], settings, args.batch_size, device, config)
    print(f"bare encoder: {bare['videos_per_second']:.2f} videos/s", flush=True)
    started = time.perf_counter()
    growth = decoder_growth(paths, settings, args.videos, every=args.memory_base)
    print(
        f"one decoder child, never recycled: {growth[0]['mib']} MiB after {growth[0]['videos']}"
        f" videos, {growth[-1]['mib']} MiB after {growth[-1]['videos']}"
        f" ({time.perf_counter() - started:.1f} s)",
        flush=True,
    )

    # Workers must import bench_answer to build the random model.
    pythonpath = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    marks: list[tuple[float, int]] = [(time.perf_counter(), 0)]
    catalog = open_store(str(work / "store")).catalog  # the job opens the same one
    encoded_count = work / "encoded_count"
    counting = ModelLoader(
        loader.model_id,
        functools.partial(load_counting, loader.load, str(encoded_count)),
        loader.frame_size,
    )
    clocks = {
        "encoded": functools.partial(read_count, encoded_count),
        "indexed": functools.partial(catalog.count_videos, "indexed"),
    }
    sampler = RoleMemorySampler(clocks)

    def on_progress(done: int, todo: int) -> None:
        marks.append((time.perf_counter(), done))

    with sampler:
        summary = index_videos(
            [str(p) for p in paths],
            store_url=str(work / "store"),
            model=counting,
            config=config,
            frames=args.frames,
            workers=1,
            gpus_per_worker=1.0 if on_gpu else 0.0,
            decode_workers=args.decode_workers,
            batch_size=args.batch_size,
            progress=False,
            on_progress=on_progress,
        )
    ray.shutdown()
    memory = memory_report(sampler.samples, args.memory_base)
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
        "stage_s": {k: round(v, 2) for k, v in summary.stage_s.items()},
        "load_average_1_5_15min": {
            "start": [round(x, 2) for x in load_at_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "memory_mib": memory,
        "decoder_never_recycled_mib": growth,
        "memory_series": memory_series(sampler.samples, step=args.memory_base),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "memory_series"}, indent=2))
    print(format_memory(memory, args.memory_base, args.videos))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
