"""Every GPU figure of BENCHMARKS.md in one prepared command: one H200, at most 8 minutes.

    python3 bench/gpu_suite.py --out DIR                 # CUDA: LLaVA-OV-7B architecture, bf16
    python3 bench/gpu_suite.py --smoke --out DIR         # CPU, tiny model: the plumbing only

Writes DIR/gpu_suite.json (every figure), DIR/gpu_suite.md (the tables for BENCHMARKS.md, also
printed last) and DIR/gpu_suite.log (every section's output). Exit status 0 when every section
finished, 1 otherwise (the files are written either way).

Sections (random weights built directly on the device by `bench_answer.build_model`: nothing is
downloaded or read from disk). `--smoke` runs the same code on CPU with the tiny LLaVA-OV (fp32)
and the smaller sizes of `SMOKE`, in about a minute: it proves the plumbing, not any speed.

  encoder  the vision side (SigLIP tower + projector + pooling) on `frames` random frames per video
           at the tower's input size (384 x 384 for the 7B), batches of 1/4/8/16 videos:
           videos/s of `encode_batch` (with the contribution-score hook, the product path) and of
           the same device work without the hook (`bare_tower`); the hook's overhead in % (the
           hook synchronises the device around its own work to time it: part of the overhead).
  outer    the outer stage (`compression.compress`, bf16 tokens, fp32 similarities inside) on
           `bench_compress.synthetic_video` tokens at d = 3584, 32/64/128 frames: one video, and
           per video of `compress_batch` over 8; the ratio to the encoder's time for the same
           video is computed in the report (encoder time per video at batch 1 and batch 8, scaled
           by frames / 32 for longer videos: SigLIP encodes every frame alone).
  answer   `bench_answer`'s cases on one encoded video: all tokens (no merge), 2%, 2%/1% (merge
           at K = `default_merge_layer`, 18 for 28 layers, R = 0.5), FastV 100%/2% at its own
           K = 2; TTFT, decode tokens/s, peak memory (with the weights); HF `generate` over all
           tokens (what a user runs today).
  serve    `serving.engine.AnswerEngine` without Ray: compressed token sets of 8 videos written
           with `storage.token_files`, read through `prepare`, at 1/16/64 concurrent questions,
           answered two ways on the same questions: continuous batching (`continuous_load`: the
           model replica's `serving.scheduler.RequestScheduler`) and the static batches the
           replica formed before it (`answer_load`: `@serve.batch`'s grouping, each batch run to
           its longest answer); questions/s, p50/p99 latency, mean batch. Then a repeated question
           over one video with and without the per-video prefix cache
           (`bench_batching.prefix_scenario`): TTFT and prefill FLOPs from the layer shapes.

Each section runs in its own child process (same process group) with a time cap: a failure or a
timeout is reported with the figures it had, and the next section still runs. A section checks
its soft deadline (the cap less max(5 s, 15%)) before each measurement and reports what it had
to skip; at the cap the child is killed.

Time budget on one H200 (estimates before the first run; the JSON records each section's wall
time, so the first run checks them). Every child pays ~10 s for Python, torch and transformers;
building the 7B takes seconds: its init is normal_/uniform_ kernels over 8 B parameters (all of
the 68 s a 0.9 B build takes on the 2-core CPU box, milliseconds on the GPU) and a ~1 s tokenizer.
  encoder  75 s cap: 29 videos x 2 variants x (1 warm-up + 3 timed) passes at ~0.05 s a video
           (~0.6 TFLOP per 384 x 384 frame) ~ 15 s, plus start and build;
  outer    75 s cap: 3 sizes x (4 single + 2 batched runs of 8), the largest (25,088 tokens,
           DPC-KNN's fp32 distances ~ 2 x 4.5 TFLOP) under a second per video: ~ 30 s;
  answer  120 s cap: 4 cases x 4 runs x (prefill <= 0.3 s + 31 decode steps of ~30 ms) ~ 20 s,
           HF generate ~ 10 s, plus start, build and one encode: ~ 60 s expected;
  serve   120 s cap: 8 encodes + compress + store, then 1 + 8 (c = 1), 16 + 32 (c = 16) and
           64 + 128 (c = 64) questions of 32 tokens at 2%/1%, twice (continuous, static): ~ 90 s;
           the prefix-reuse pair: ~ 5 s.
Caps add up to 390 s; with the wheel install the device command stays under 8 minutes (its
timeout_s is 480), leaving room in a 15-minute lease for a rerun of the sections that failed
(`--sections NAME ...`). The exact device command is in BENCHMARKS.md, the wheels it carries
come from `bench/gpu_wheels.sh`.

Not measured here: indexing throughput against the bare encoder (the ">= 90%" target) needs Ray,
which the GPU machine lacks (`bench/bench_index.py` measures it where Ray is installed; the
encoder section gives the bare encoder's rate).

The parent imports only the standard library; the children import torch, transformers, the
project's modules and, for `serve`, serving.engine (pydantic; the error types import no web
framework) and storage.token_files (pyarrow, fsspec): never Ray, s3fs or SQLAlchemy (each
section records the packages it loaded, and `tests/bench/test_gpu_suite.py` checks them).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

SECTIONS = ("encoder", "outer", "answer", "serve")
CAPS_S = {"encoder": 75.0, "outer": 75.0, "answer": 120.0, "serve": 120.0}
FORBIDDEN_MODULES = ("ray", "s3fs", "sqlalchemy", "boto3", "botocore")
RESULT_FILES = ("gpu_suite.json", "gpu_suite.md", "gpu_suite.log")

RETENTION = 0.02  # r: the paper's 2%
KEEP_RATIO = 0.5  # R: 2% -> 1% at layer K
FASTV_LAYER = 2  # FastV's own K
SERVE_QUESTIONS = (
    "what is the person doing in this video ? please answer briefly",
    "which objects appear in the video ?",
    "what happens at the end of the video ?",
    "describe the scene in one sentence .",
)
BATCH_WAIT_S = 0.02  # ServeSettings' default batch_wait_timeout_s


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of a run: the GPU targets', or the smoke test's."""

    model: str  # bench_answer size ("7b") or "tiny" (the registry's tiny-llava-ov)
    frames: int  # frames per video (encoder, answer, serve)
    encoder_batches: tuple[int, ...]
    outer_frames: tuple[int, ...]
    outer_dim: int
    outer_batch: int
    repeats: int  # timed runs after one warm-up
    new_tokens: int
    concurrency: tuple[int, ...]
    serve_videos: int


GPU = Scale(
    model="7b",
    frames=32,
    encoder_batches=(1, 4, 8, 16),
    outer_frames=(32, 64, 128),
    outer_dim=3584,
    outer_batch=8,
    repeats=3,
    new_tokens=32,
    concurrency=(1, 16, 64),
    serve_videos=8,
)
SMOKE = dataclasses.replace(
    GPU,
    model="tiny",
    frames=8,
    encoder_batches=(1, 4),
    outer_frames=(2, 4),
    outer_dim=64,
    outer_batch=4,  # an encoder batch size, so the batched ratio is computed too
    repeats=1,
    new_tokens=4,
)


# -- the child side: one section ----------------------------------------------------------------


class SectionRun:
    """One section's results, saved after every measurement (a killed child leaves what it had).

    `out_of_time` is the soft deadline: no new measurement starts after it."""

    def __init__(self, name: str, path: Path, cap_s: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.soft_deadline = self.started + cap_s - max(5.0, 0.15 * cap_s)
        self.result: dict[str, Any] = {"section": name, "status": "running", "rows": []}

    def note(self, **figures: Any) -> None:
        self.result.update(figures)
        self.save()

    def add_row(self, row: dict[str, Any]) -> None:
        self.result["rows"].append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def out_of_time(self, what: str) -> bool:
        if time.monotonic() < self.soft_deadline:
            return False
        self.result.setdefault("skipped", []).append(what)
        print(f"skipped (section time cap): {what}", flush=True)
        self.save()
        return True

    def save(self) -> None:
        self.result["section_s"] = round(time.monotonic() - self.started, 2)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.result, indent=1))
        os.replace(partial, self.path)


def environment(device: Any) -> dict[str, Any]:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        env.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def loaded_packages() -> list[str]:
    """Top-level packages this process has imported, the standard library left out."""
    names = {name.partition(".")[0] for name in sys.modules}
    return sorted(n for n in names if n not in sys.stdlib_module_names and not n.startswith("_"))


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], Any], device: Any) -> tuple[float, Any]:
    """(seconds, result) of one call, the device's queue drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def build_llm(run: SectionRun, scale: Scale, device: Any) -> Any:
    """The section's Video-LLM: bench_answer's random-weight LLaVA-OV built on the device in
    bf16, or the tiny one (fp32) for the smoke run; build time and weight size noted."""
    import torch
    from bench_answer import build_model  # imports transformers and the plug-in: not timed

    from compression.models import load_video_llm

    started = time.perf_counter()
    if scale.model == "tiny":
        llm = load_video_llm("tiny-llava-ov", device=device)
    else:
        llm = build_model(scale.model, device, torch.bfloat16)
    synchronize(device)
    weights = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    run.note(
        model=llm.model_id,
        dtype=str(llm.dtype),
        build_s=round(time.perf_counter() - started, 2),
        weights_gib=weights / 2**30,
    )
    return llm


def random_videos(count: int, frames: int, side: int, seed: int = 0) -> list[Any]:
    """`count` videos of uint8 random frames [frames, side, side, 3] (on the host, as decoded)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (frames, side, side, 3)
    return [
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for _ in range(count)
    ]


def bare_tower(llm: Any, videos: Sequence[Any]) -> Any:
    """`encode_batch`'s device work without the contribution-score hook: preprocessing, then the
    SigLIP tower, projector and pooling in the same chunks of frames (the baseline of the hook's
    overhead)."""
    import torch

    from compression.models.preprocess import preprocess_frames

    with torch.no_grad():
        pixels = torch.cat([preprocess_frames(v, llm.preprocessing, llm.device) for v in videos])
        tokens = []
        for chunk in pixels.split(llm.encoder.max_frames_per_forward):
            output = llm.model.model.get_video_features(chunk[None].to(llm.dtype))
            tokens.append(output.pooler_output[0, :-1])
        return torch.cat(tokens)


def section_encoder(run: SectionRun, scale: Scale, device: Any) -> None:
    llm = build_llm(run, scale, device)
    side = llm.input_frame_size(llm.model.config)
    videos = random_videos(max(scale.encoder_batches), scale.frames, side)
    run.note(frames=scale.frames, frame_side=side)
    for batch in scale.encoder_batches:
        if run.out_of_time(f"batch of {batch} videos"):
            continue
        chosen = videos[:batch]
        bare, hooked, scores = [], [], []
        reset_peak(device)
        for attempt in range(scale.repeats + 1):  # the first round warms up
            bare_s, _ = timed_call(lambda chosen=chosen: bare_tower(llm, chosen), device)
            hook_s, encoded = timed_call(lambda chosen=chosen: llm.encode_batch(chosen), device)
            if attempt:
                bare.append(bare_s)
                hooked.append(hook_s)
                scores.append(sum(e.score_s for e in encoded))
        bare_s, hook_s = statistics.median(bare), statistics.median(hooked)
        run.add_row(
            {
                "videos": batch,
                "tokens_per_video": int(encoded[0].tokens.shape[0]),
                "bare_s": bare_s,
                "hook_s": hook_s,
                "bare_videos_per_s": batch / bare_s,
                "hook_videos_per_s": batch / hook_s,
                "hook_overhead_pct": 100 * (hook_s - bare_s) / bare_s,
                "score_s": statistics.median(scores),
                "peak_gib": peak_gib(device),
            }
        )


def section_outer(run: SectionRun, scale: Scale, device: Any) -> None:
    import torch
    from bench_compress import SIDE, synthetic_video, timed

    from compression import CompressionConfig, EncodedVideo, compress, compress_batch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = CompressionConfig(retention_ratio=RETENTION)
    run.note(dim=scale.outer_dim, tokens_dtype=str(dtype), batch=scale.outer_batch)
    for frames in scale.outer_frames:
        if run.out_of_time(f"{frames} frames"):
            continue
        tokens, scores, index = synthetic_video(frames, scale.outer_dim, str(device), dtype)
        grid = (frames, SIDE, SIDE)
        single_s = timed(
            lambda t=tokens, s=scores, i=index, g=grid: compress(t, s, i, config, g),
            device.type,
            scale.repeats,
        )
        reset_peak(device)
        on_gpu = device.type == "cuda"
        base = torch.cuda.memory_allocated(device) if on_gpu else 0
        kept = compress(tokens, scores, index, config, grid)
        extra = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if on_gpu else None
        # One video `outer_batch` times: compress_batch keeps no state between videos.
        videos = [EncodedVideo(tokens=tokens, index=index, scores=scores, grid=grid)]
        videos *= scale.outer_batch
        batch_s = timed(lambda v=videos: compress_batch(v, config), device.type, 1)
        run.add_row(
            {
                "frames": frames,
                "tokens": int(tokens.shape[0]),
                "kept": kept.kept_count,
                "single_s": single_s,
                "batch_s_per_video": batch_s / len(videos),
                "peak_extra_mib": extra,
            }
        )
        del tokens, scores, index, videos, kept


def section_answer(run: SectionRun, scale: Scale, device: Any) -> None:
    from bench_answer import answer_cases, hf_generate_case, run_case, token_subset

    from compression.config import default_merge_layer

    llm = build_llm(run, scale, device)
    side = llm.input_frame_size(llm.model.config)
    encoded = llm.encode(random_videos(1, scale.frames, side)[0])
    full = token_subset(encoded, 1.0, llm.model_id)
    subset = token_subset(encoded, RETENTION, llm.model_id)
    merge_layer = default_merge_layer(llm.num_layers)
    run.note(frames=scale.frames, visual_tokens=full.kept_count, new_tokens=scale.new_tokens)
    for key, name, token_set, merge in answer_cases(
        full, subset, RETENTION, merge_layer, KEEP_RATIO, FASTV_LAYER
    ):
        if run.out_of_time(name):
            continue
        row = run_case(llm, name, token_set, merge, scale.new_tokens, scale.repeats)
        run.add_row({"key": key, **dataclasses.asdict(row)})
    if not run.out_of_time("HF generate"):
        ttft_s, decode_tok_s = hf_generate_case(llm, full, scale.new_tokens, scale.repeats)
        run.add_row(
            {
                "key": "hf_generate",
                "name": "(v) HF generate, all tokens",
                "visual_in": full.kept_count,
                "ttft_s": ttft_s,
                "decode_tok_s": decode_tok_s,
            }
        )


def answer_load(
    engine: Any,
    jobs: Sequence[Any],
    concurrency: int,
    max_batch_size: int,
    batch_wait_s: float = BATCH_WAIT_S,
) -> dict[str, Any]:
    """`concurrency` closed-loop clients ask `jobs` (each sends its next question when its
    answer came) through `engine.prepare`, then a batcher that groups waiting questions as
    `@serve.batch` does (up to `max_batch_size`, waiting at most `batch_wait_s` after the first)
    and answers each group with `engine.answer_batch` in a thread, one group at a time.

    The static path the continuous-batching scheduler replaced (the baseline of
    `continuous_load`). Returns per-question latencies (prepare to answer), the batch sizes,
    completion lengths and the wall time."""
    return asyncio.run(_answer_load(engine, jobs, concurrency, max_batch_size, batch_wait_s))


async def _answer_load(
    engine: Any, jobs: Sequence[Any], concurrency: int, max_batch_size: int, batch_wait_s: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    batch_sizes: list[int] = []
    latencies: list[float] = []
    completions: list[int] = []

    async def batcher() -> None:
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + batch_wait_s
            while len(batch) < max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
                    break
            batch_sizes.append(len(batch))
            try:
                responses = await asyncio.to_thread(engine.answer_batch, [p for p, _ in batch])
            except Exception as exc:  # every waiting client gets the failure
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), response in zip(batch, responses, strict=True):
                future.set_result(response)

    pending = iter(jobs)  # shared: each client takes the next question

    async def client() -> None:
        for job in pending:
            started = time.perf_counter()
            prepared = await engine.prepare(job)
            prepared.enqueued = time.perf_counter()
            future = loop.create_future()
            queue.put_nowait((prepared, future))
            response = await future
            latencies.append(time.perf_counter() - started)
            completions.append(response.tokens.completion)

    worker = asyncio.create_task(batcher())
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        worker.cancel()
    return {
        "latencies_s": latencies,
        "batch_sizes": batch_sizes,
        "completion_tokens": completions,
        "wall_s": time.perf_counter() - started,
    }


def continuous_load(
    engine: Any,
    jobs: Sequence[Any],
    concurrency: int,
    *,
    stream: bool = False,
    prefix_cache_bytes: int = 0,
    wait_for_company_s: float = BATCH_WAIT_S,
) -> dict[str, Any]:
    """`concurrency` closed-loop clients ask `jobs` through `serving.scheduler.RequestScheduler`
    (the model replica's path: questions join the running batch between decoding steps and leave
    when done), at most `concurrency` running; `stream`: every piece is taken as a streamed
    answer takes it, else only the final answer. Returns what `answer_load` returns, the batch
    size being the running batch's right after each question joined."""
    from serving.scheduler import RequestScheduler
    from serving.schemas import AskResponse

    scheduler = RequestScheduler(
        engine,
        engine.llm.continuous_batch(prefix_cache_bytes),
        max_running=concurrency,
        wait_for_company_s=wait_for_company_s,
    )
    latencies: list[float] = []
    completions: list[int] = []
    batch_sizes: list[int] = []

    async def run() -> float:
        pending = iter(jobs)  # shared: each client takes the next question

        async def client() -> None:
            for job in pending:
                started = time.perf_counter()
                prepared = await engine.prepare(job)
                response = None
                async for item in scheduler.submit(prepared):
                    if isinstance(item, AskResponse):
                        response = item
                    elif not stream:
                        continue
                if response is None:
                    raise RuntimeError("the scheduler ended a question without its answer")
                latencies.append(time.perf_counter() - started)
                completions.append(response.tokens.completion)
                batch_sizes.append(response.batch_size)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - started

    wall = asyncio.run(run())
    return {
        "latencies_s": latencies,
        "batch_sizes": batch_sizes,
        "completion_tokens": completions,
        "wall_s": wall,
    }


def section_serve(run: SectionRun, scale: Scale, device: Any) -> None:
    import numpy as np

    from compression import CompressionConfig, compress_video
    from compression.config import MergeConfig, default_merge_layer
    from compression.models import GenerationConfig
    from serving.engine import AnswerEngine, AskJob
    from storage.token_files import write_token_sets

    llm = build_llm(run, scale, device)
    side = llm.input_frame_size(llm.model.config)
    encoded = llm.encode_batch(random_videos(scale.serve_videos, scale.frames, side))
    config = CompressionConfig(retention_ratio=RETENTION)
    token_sets = [
        compress_video(video, config)
        .with_metadata(model_id=llm.model_id, source_uri=f"bench://gpu-suite/{i}")
        .to("cpu")
        for i, video in enumerate(encoded)
    ]
    merge = MergeConfig(layer=default_merge_layer(llm.num_layers), keep_ratio=KEEP_RATIO)
    # Mixed answer lengths (4-64 new tokens at the GPU scale), as a replica sees them: where a
    # static batch runs to its longest answer and continuous batching lets the short ones leave.
    lengths = [max(1, scale.new_tokens * k // 8) for k in (1, 4, 8, 16)]
    generations = [GenerationConfig(max_new_tokens=n) for n in lengths]
    run.note(
        videos=len(token_sets),
        kept_tokens=token_sets[0].kept_count,
        merge_layer=merge.layer,
        new_tokens=lengths,
        batch_wait_s=BATCH_WAIT_S,
    )
    with tempfile.TemporaryDirectory(prefix="gpu-suite-store-") as store:
        locations = write_token_sets(store, token_sets)
        engine = AnswerEngine(llm.model_id, llm=llm, cache_bytes=2**34)

        def jobs(count: int) -> list[Any]:
            return [
                AskJob(
                    locations[i % len(locations)].video_id,
                    locations[i % len(locations)],
                    SERVE_QUESTIONS[i % len(SERVE_QUESTIONS)],
                    None,
                    merge,
                    generations[i % len(generations)],
                )
                for i in range(count)
            ]

        loads: dict[str, Callable[[Any, list[Any], int], dict[str, Any]]] = {
            "continuous": continuous_load,
            "static": lambda engine, jobs, c: answer_load(engine, jobs, c, max_batch_size=c),
        }
        for concurrency in scale.concurrency:
            for scheduler, load_fn in loads.items():
                if run.out_of_time(f"{concurrency} concurrent questions, {scheduler}"):
                    continue
                # Warm-up: fills the cache, and the allocator at this batch size.
                load_fn(engine, jobs(concurrency), concurrency)
                requests = max(8, 2 * concurrency)
                load = load_fn(engine, jobs(requests), concurrency)
                latencies = load["latencies_s"]
                run.add_row(
                    {
                        "scheduler": scheduler,
                        "concurrency": concurrency,
                        "max_batch_size": concurrency,
                        "requests": len(latencies),
                        "p50_s": float(np.percentile(latencies, 50)),
                        "p99_s": float(np.percentile(latencies, 99)),
                        "questions_per_s": len(latencies) / load["wall_s"],
                        "mean_batch": statistics.fmean(load["batch_sizes"]),
                        "mean_completion_tokens": statistics.fmean(load["completion_tokens"]),
                    }
                )
        if not run.out_of_time("repeated question, prefix reuse"):
            from bench_batching import prefix_scenario

            reuse = prefix_scenario(engine, locations[0], merge, repeats=scale.repeats + 1)
            run.note(
                prefix_reuse={
                    "ttft_without_s": reuse["without"]["ttft_p50_s"],
                    "ttft_with_s": reuse["with"]["ttft_p50_s"],
                    "cached_prompt_tokens": reuse["with"]["cached_prompt_tokens"],
                    "prompt_rows": reuse["prompt_rows"],
                    "prefix_rows": reuse["prefix_rows"],
                    "expected_flops_drop": reuse["expected_drop"],
                    "flops_drop": reuse["flops_drop"],
                    "same_answers": reuse["same_answers"],
                }
            )


SECTION_FUNCTIONS = {
    "encoder": section_encoder,
    "outer": section_outer,
    "answer": section_answer,
    "serve": section_serve,
}


def run_child(name: str, result_path: Path, cap_s: float, smoke: bool) -> int:
    """Body of a section's child process: run it, save its result; exit status 1 on failure."""
    sys.path[:0] = [str(ROOT), str(BENCH_DIR)]
    run = SectionRun(name, result_path, cap_s)
    try:
        import torch

        device = torch.device("cpu" if smoke else "cuda")
        run.note(environment=environment(device))
        SECTION_FUNCTIONS[name](run, SMOKE if smoke else GPU, device)
        run.result["status"] = "ok"
    except Exception:
        run.result.update(status="failed", error=traceback.format_exc()[-4000:])
        traceback.print_exc()
    packages = loaded_packages()
    run.note(packages=packages, forbidden_loaded=[m for m in FORBIDDEN_MODULES if m in packages])
    return 0 if run.result["status"] == "ok" else 1


# -- the parent side ------------------------------------------------------------------------------


def run_section(name: str, cap_s: float, smoke: bool, work: Path, log: Any) -> dict[str, Any]:
    """One section in a child process, its output teed to stdout and the log; killed at the cap.
    Returns its result with status "ok", "failed" or "timeout"."""
    result_path = work / f"{name}.json"
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--_child", name]
    command += ["--_result", str(result_path), "--_cap-s", str(cap_s)]
    command += ["--smoke"] if smoke else []
    header = f"== section {name} (cap {cap_s:g} s)"
    print(header, flush=True)
    log.write(header + "\n")
    tail: collections.deque[str] = collections.deque(maxlen=30)
    started = time.monotonic()
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )

    def tee() -> None:
        for line in child.stdout:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()
            log.write(line)
            tail.append(line)

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    try:
        child.wait(timeout=cap_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        timed_out = True
    reader.join(timeout=10)
    log.flush()
    try:
        result = json.loads(result_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        result = {"section": name, "rows": []}
    if timed_out:
        result["status"] = "timeout"
    elif child.returncode != 0 or result.get("status") != "ok":
        result["status"] = "failed"
    if result["status"] != "ok":
        result["output_tail"] = "".join(tail)[-3000:]
    result.update(
        cap_s=cap_s, wall_s=round(time.monotonic() - started, 2), exit_code=child.returncode
    )
    return result


def _rows(report: dict, section: str) -> list[dict]:
    entry = report["sections"].get(section) or {}
    return entry.get("rows") or []


def _by_key(report: dict) -> dict[str, dict]:
    return {row["key"]: row for row in _rows(report, "answer") if "key" in row}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def encoder_s_per_video(report: dict, batch: int) -> float | None:
    """Seconds per video of `encode_batch` (with the hook: what indexing runs) at `batch`."""
    for row in _rows(report, "encoder"):
        if row["videos"] == batch:
            return row["hook_s"] / batch
    return None


def outer_ratios(report: dict) -> list[dict]:
    """The outer stage's time over the encoder's for the same video: single against the encoder
    at batch 1, batched against it at batch `outer_batch`; the encoder's time per video scaled
    by frames / its frames (SigLIP encodes each frame alone)."""
    frames = (report["sections"].get("encoder") or {}).get("frames")
    batch = (report["sections"].get("outer") or {}).get("batch")
    ratios = []
    for row in _rows(report, "outer"):
        scale = row["frames"] / frames if frames else None
        single, batched = encoder_s_per_video(report, 1), encoder_s_per_video(report, batch)
        ratios.append(
            {
                "frames": row["frames"],
                "single": _ratio(row["single_s"], single * scale if single and scale else None),
                "batched": _ratio(
                    row["batch_s_per_video"], batched * scale if batched and scale else None
                ),
            }
        )
    return ratios


GOALS = {">=": lambda x, y: x >= y, "<=": lambda x, y: x <= y, "<": lambda x, y: x < y}
ONE_GB_IN_GIB = 1e9 / 2**30


def serving_pairs(report: dict) -> list[tuple[int, dict, dict]]:
    """(concurrency, continuous row, static row) at 16+ concurrent questions, where the
    continuous-batching targets apply."""
    rows = _rows(report, "serve")
    by = {(r.get("scheduler"), r["concurrency"]): r for r in rows}
    return [
        (c, by[("continuous", c)], by[("static", c)])
        for c in sorted({r["concurrency"] for r in rows})
        if c >= 16 and ("continuous", c) in by and ("static", c) in by
    ]


def _target(name: str, measured: float | None, op: str, goal: float, note: str = "") -> dict:
    met = None if measured is None else bool(GOALS[op](measured, goal))
    return {"target": name, "measured": measured, "goal": f"{op} {goal:.3g}", "met": met} | (
        {"note": note} if note else {}
    )


def targets(report: dict) -> list[dict]:
    """The project's GPU targets against this run's figures (met: True, False, or None when
    not measured)."""
    cases = _by_key(report)
    full, retained, merged, hf = (
        cases.get(k, {}) for k in ("full", "retained", "merged", "hf_generate")
    )
    weights = (report["sections"].get("answer") or {}).get("weights_gib")

    def over_weights(row: dict) -> float | None:
        peak = row.get("peak_gib")
        return peak - weights if peak is not None and weights is not None else None

    out = [
        _target(
            "TTFT all tokens / 2%/1%", _ratio(full.get("ttft_s"), merged.get("ttft_s")), ">=", 20
        ),
        _target(
            "TTFT all tokens / 2%", _ratio(full.get("ttft_s"), retained.get("ttft_s")), ">=", 20
        ),
        _target(
            "TTFT HF generate, all tokens / 2%/1%",
            _ratio(hf.get("ttft_s"), merged.get("ttft_s")),
            ">=",
            20,
        ),
        _target(
            "decode tok/s 2%/1% / all tokens",
            _ratio(merged.get("decode_tok_s"), full.get("decode_tok_s")),
            ">=",
            1.0,
        ),
        _target("peak GiB at 2% - weights (1 GB)", over_weights(retained), "<=", ONE_GB_IN_GIB),
        _target("peak GiB at 2%/1% - weights (1 GB)", over_weights(merged), "<=", ONE_GB_IN_GIB),
    ]
    for ratio in outer_ratios(report):
        for kind in ("single", "batched"):
            name = f"outer stage / encoder, {ratio['frames']} frames, {kind}"
            out.append(_target(name, ratio[kind], "<=", 0.02))
    for row in _rows(report, "encoder"):
        name = f"score hook overhead %, {row['videos']} videos"
        out.append(_target(name, row["hook_overhead_pct"], "<", 10))
    for concurrency, continuous, static in serving_pairs(report):
        out.append(
            _target(
                f"continuous / static questions/s, {concurrency} concurrent",
                _ratio(continuous["questions_per_s"], static["questions_per_s"]),
                ">=",
                1.5,
            )
        )
        out.append(
            _target(
                f"continuous / static p99, {concurrency} concurrent",
                _ratio(continuous["p99_s"], static["p99_s"]),
                "<=",
                0.7,
            )
        )
    reuse = (report["sections"].get("serve") or {}).get("prefix_reuse")
    if reuse:
        out.append(
            _target(
                "prefill FLOPs drop with prefix reuse - prefix share below K",
                reuse["flops_drop"] - reuse["expected_flops_drop"],
                ">=",
                0.0,
            )
        )
    note = "not measured here: needs Ray (bench/bench_index.py)"
    out.append(_target("indexing / bare encoder", None, ">=", 0.9, note))
    return out


def _cell(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


Column = tuple[str, "str | Callable[[dict], Any]"]


def _table(columns: Sequence[Column], rows: Sequence[dict]) -> list[str]:
    """A Markdown table: one row per dict, each column a (header, key or function of the row)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [get(row) if callable(get) else row.get(get) for _, get in columns]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _status_line(entry: dict) -> str:
    line = f"status **{entry.get('status')}**, {entry.get('wall_s')} s of {entry.get('cap_s')} s"
    if entry.get("build_s") is not None:
        line += f"; model built in {entry['build_s']} s"
    if entry.get("skipped"):
        line += f"; skipped at the time cap: {', '.join(entry['skipped'])}"
    if entry.get("status") != "ok":
        error = (entry.get("error") or entry.get("output_tail") or "").strip().splitlines()
        line += f"; last error line: `{error[-1] if error else 'none'}`"
    return line


def markdown(report: dict) -> str:
    """The report as Markdown tables, ready for BENCHMARKS.md."""
    env, sections = report["environment"], report["sections"]
    machine = env.get("gpu") or f"{env.get('cpu')} x{env.get('threads')} threads (CPU)"
    smoke = ": SMOKE RUN (tiny model on CPU: plumbing only, no figure means anything)"
    lines = [
        f"### GPU suite, {report['date']}" + (smoke if report["smoke"] else ""),
        "",
        f"Command: `{report['command']}`. Machine: {machine}; torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, Python {env.get('python')}. Model: "
        f"{report['model']}, random weights built on the device.",
        "",
    ]
    if "encoder" in sections:
        enc = sections["encoder"]
        columns = [
            ("videos/batch", "videos"),
            ("tokens/video", "tokens_per_video"),
            ("bare videos/s", "bare_videos_per_s"),
            ("with hook videos/s", "hook_videos_per_s"),
            ("hook overhead %", "hook_overhead_pct"),
            ("scores s", "score_s"),
            ("peak GiB (with weights)", "peak_gib"),
        ]
        lines += [
            f"Vision encoder, {enc.get('frames')} frames of {enc.get('frame_side')} px per video "
            f"({_status_line(enc)}):",
            "",
            *_table(columns, enc["rows"]),
            "",
        ]
    if "outer" in sections:
        outer = sections["outer"]
        ratios = {r["frames"]: r for r in outer_ratios(report)}
        columns = [
            ("frames", "frames"),
            ("tokens", "tokens"),
            ("kept", "kept"),
            ("single s", "single_s"),
            ("batched s/video", "batch_s_per_video"),
            ("/ encoder, single", lambda r: ratios[r["frames"]]["single"]),
            ("/ encoder, batched", lambda r: ratios[r["frames"]]["batched"]),
            ("peak extra MiB", "peak_extra_mib"),
        ]
        lines += [
            f"Outer stage (`compress` at 2%, d = {outer.get('dim')}, {outer.get('tokens_dtype')} "
            f"tokens; batched = `compress_batch` over {outer.get('batch')}, per video; the "
            f"encoder's time per video scaled by frames) ({_status_line(outer)}):",
            "",
            *_table(columns, outer["rows"]),
            "",
        ]
    if "answer" in sections:
        answer = sections["answer"]
        full = _by_key(report).get("full", {})
        columns = [
            ("case", "name"),
            ("visual in -> after K", _visual_cell),
            ("TTFT s", "ttft_s"),
            ("x all tokens", lambda r: _ratio(full.get("ttft_s"), r.get("ttft_s"))),
            ("decode tok/s", "decode_tok_s"),
            ("/ all tokens", lambda r: _ratio(r.get("decode_tok_s"), full.get("decode_tok_s"))),
            ("peak GiB", "peak_gib"),
            ("FLOPs v / all", lambda r: _ratio(r.get("flops_visual"), full.get("flops_visual"))),
        ]
        lines += [
            f"Answer path, {answer.get('visual_tokens')} visual tokens, "
            f"{answer.get('new_tokens')} new tokens, weights {_cell(answer.get('weights_gib'))} "
            f"GiB ({_status_line(answer)}):",
            "",
            *_table(columns, answer["rows"]),
            "",
        ]
    if "serve" in sections:
        serve = sections["serve"]
        ones = {r["scheduler"]: r for r in serve["rows"] if r["concurrency"] == 1}

        def per_one(row: dict) -> float | None:
            return _ratio(
                row["questions_per_s"], ones.get(row["scheduler"], {}).get("questions_per_s")
            )

        columns = [
            ("batching", "scheduler"),
            ("concurrent", "concurrency"),
            ("questions", "requests"),
            ("p50 ms", lambda r: 1000 * r["p50_s"]),
            ("p99 ms", lambda r: 1000 * r["p99_s"]),
            ("questions/s", "questions_per_s"),
            ("x 1 concurrent", per_one),
            ("mean batch", "mean_batch"),
            ("mean new tokens", "mean_completion_tokens"),
        ]
        lines += [
            f"Serving engine without Ray ({serve.get('videos')} videos of "
            f"{serve.get('kept_tokens')} kept tokens, merge K={serve.get('merge_layer')}, "
            f"{serve.get('new_tokens')} new tokens in turn; continuous: the replica's "
            f"scheduler, at most the concurrency running; static: `@serve.batch`-like batches "
            f"of up to the concurrency, {serve.get('batch_wait_s')} s wait) "
            f"({_status_line(serve)}):",
            "",
            *_table(columns, serve["rows"]),
            "",
        ]
        reuse = serve.get("prefix_reuse")
        if reuse:
            lines += [
                f"Repeated question over one video: TTFT {_cell(reuse['ttft_without_s'])} s "
                f"without the prefix cache, {_cell(reuse['ttft_with_s'])} s with it "
                f"({reuse['cached_prompt_tokens']} of {reuse['prompt_rows']} prompt tokens "
                f"reused); prefill FLOPs -{100 * reuse['flops_drop']:.1f}% (the prefix's share of "
                f"the layers below the resume layer: {100 * reuse['expected_flops_drop']:.1f}%); "
                f"answers identical: {_cell(reuse['same_answers'])}.",
                "",
            ]
    columns = [
        ("target", "target"),
        ("measured", "measured"),
        ("goal", "goal"),
        ("met", lambda t: t.get("note") or t["met"]),
    ]
    lines += ["Targets:", "", *_table(columns, report["targets"])]
    return "\n".join(lines) + "\n"


def _visual_cell(row: dict) -> str:
    return f"{row['visual_in']} -> {row.get('visual_after', row['visual_in'])}"


def build_report(sections: dict[str, dict], smoke: bool, command: str) -> dict[str, Any]:
    environment = next((s["environment"] for s in sections.values() if s.get("environment")), {})
    model = next((s["model"] for s in sections.values() if s.get("model")), "n/a")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "smoke": smoke,
        "model": model,
        "environment": environment,
        "scale": dataclasses.asdict(SMOKE if smoke else GPU),
        "sections": sections,
    }
    report["targets"] = targets(report)
    return report


def parse_caps(values: Sequence[str]) -> dict[str, float]:
    caps = dict(CAPS_S)
    for value in values:
        name, _, seconds = value.partition("=")
        if name not in caps:
            raise ValueError(f"--cap names a section ({', '.join(SECTIONS)}), got {name!r}")
        try:
            caps[name] = float(seconds)
        except ValueError:
            raise ValueError(f"--cap {value!r}: seconds must be a number") from None
        if caps[name] <= 0:
            raise ValueError(f"--cap {value!r}: seconds must be positive")
    return caps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="directory for the JSON, Markdown and log")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny sizes")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--cap", action="append", default=[], metavar="SECTION=SECONDS", help="a section's cap"
    )
    parser.add_argument("--_child", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_cap-s", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        return run_child(args._child, args._result, args._cap_s, args.smoke)
    if args.out is None:
        parser.error("--out DIR is required")
    try:
        caps = parse_caps(args.cap)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.smoke:
        check = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
        if subprocess.run([sys.executable, "-c", check]).returncode != 0:
            parser.error("the suite measures a CUDA GPU and none is visible: use --smoke on CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        ["python3", "bench/gpu_suite.py", *(sys.argv[1:] if argv is None else argv)]
    )
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="gpu-suite-") as work,
        (args.out / "gpu_suite.log").open("w") as log,
    ):
        for name in dict.fromkeys(args.sections):
            results[name] = run_section(name, caps[name], args.smoke, Path(work), log)
            # After every section: a run killed from outside keeps what it finished.
            table = write_report(args.out, build_report(results, args.smoke, command))
    print(table, flush=True)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def write_report(out: Path, report: dict[str, Any]) -> str:
    """gpu_suite.json and gpu_suite.md in `out`; returns the Markdown."""
    table = markdown(report)
    for name, text in (("gpu_suite.json", json.dumps(report, indent=2)), ("gpu_suite.md", table)):
        (out / f"{name}.tmp").write_text(text)
        os.replace(out / f"{name}.tmp", out / name)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
