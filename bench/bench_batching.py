"""Continuous vs static batching, per-video prefix reuse, and streams vs non-streams, on the model
replica's engine (no Ray, no HTTP: the scheduler is what differs), in one run.

Model: the LLaVA-OneVision architecture (Qwen2 decoder) with random weights (weights do not change
the cost). `--size 0.5b` is the real 0.5B text config; the default `mini` halves its width, FFN
and depth and cuts its vocabulary to 32k (d 448, m 2432, 12 layers, 7 heads / 1 KV head), because
the 0.5B took ~3 s per decoding step on the shared 2-core container. The vision tower is the tiny
one: token sets are fabricated (random tokens of the LLM's width on a (frames, 8, 8) grid,
compressed by the outer stage at --retention), written with `storage.token_files` and read back
through `AnswerEngine.prepare` as the service does.

Scenarios (greedy; answer lengths drawn from 4..64 new tokens; the model's EOS never ends them
early: random weights rarely emit it):

  load      closed-loop clients (each asks its next question when answered) at 1, 16 and 64
            concurrent questions: static batching (`gpu_suite.answer_load`: `@serve.batch`'s
            grouping, max batch = concurrency, 20 ms wait, each batch run to its longest answer
            by `AnswerEngine.answer_batch`) vs continuous batching (`serving.scheduler`,
            max running = concurrency); throughput (questions/s, tokens/s) and p50/p99 latency.
  streams   continuous batching at 16 concurrent: every question streamed vs none streamed.
  prefix    one video, the same question asked --repeats times one after another, with the
            per-video prefix cache vs without: time to first token (prefill + first token) and
            prefill FLOPs counted from the layer shapes (linear layers + attention scores and
            sums, queries x keys per layer), with the visual prefix's share of the prompt rows and
            of the layers below the merge's resume layer.

    PYTHONPATH=. .venv/bin/python bench/bench_batching.py [--size mini|0.5b] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from gpu_suite import answer_load, continuous_load  # noqa: E402

from compression import CompressionConfig, compress_video  # noqa: E402
from compression.config import MergeConfig, default_merge_layer  # noqa: E402
from compression.models import GenerationConfig  # noqa: E402
from compression.models.decoder_loop import resume_layer  # noqa: E402
from compression.models.llava_onevision import LlavaOneVision  # noqa: E402
from compression.models.tiny import LLAVA_OV_CHAT_TEMPLATE, word_level_tokenizer  # noqa: E402
from compression.token_set import EncodedVideo, grid_index  # noqa: E402
from serving.engine import AnswerEngine, AskJob  # noqa: E402
from serving.scheduler import RequestScheduler  # noqa: E402
from serving.schemas import AskResponse  # noqa: E402
from storage.token_files import write_token_sets  # noqa: E402

TEXT_CONFIGS = {
    "mini": dict(
        hidden_size=448,
        intermediate_size=2432,
        num_hidden_layers=12,
        num_attention_heads=7,
        num_key_value_heads=1,
        vocab_size=32768,
    ),
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}
QUESTIONS = [
    "what is the person doing in this video ? please answer briefly",
    "which objects appear in the video ?",
    "what happens at the end of the video ?",
    "describe the scene in one sentence .",
]


def build_llm(size: str) -> LlavaOneVision:
    """The LLaVA-OV architecture at `size` (text side), random weights, tiny vision tower."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from compression.models.tiny import tiny_llava_onevision_config

    text = dict(TEXT_CONFIGS[size])
    vocab = text["vocab_size"]
    image_token, video_token, eos = vocab - 2, vocab - 1, vocab - 3
    config = tiny_llava_onevision_config().to_dict()
    config["text_config"].update(
        text, max_position_embeddings=32768, eos_token_id=eos, initializer_range=0.02
    )
    config["text_config"].pop("layer_types", None)  # derived from the layer count again
    config.update(image_token_index=image_token, video_token_index=video_token)
    config = LlavaOnevisionConfig(**config)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    network = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=torch.float32)
    tokenizer = word_level_tokenizer(
        vocab, {"<image>": image_token, "<video>": video_token}, LLAVA_OV_CHAT_TEMPLATE
    )
    return LlavaOneVision(network.eval(), tokenizer, f"random-llava-ov-{size}")


def write_videos(llm: LlavaOneVision, root: Path, videos: int, frames: int, retention: float):
    """Fabricated token sets (see module doc) in a store; their locations."""
    generator = torch.Generator().manual_seed(0)
    grid = (frames, 8, 8)
    token_sets = []
    for v in range(videos):
        n = frames * 64
        encoded = EncodedVideo(
            tokens=torch.randn(n, llm.hidden_size, generator=generator) * 0.02,
            index=grid_index(grid),
            scores=torch.rand(n, generator=generator),
            grid=grid,
            frame_timestamps=tuple(0.5 * t for t in range(frames)),
        )
        token_set = compress_video(encoded, CompressionConfig(retention_ratio=retention))
        token_sets.append(token_set.with_metadata(model_id=llm.model_id, video_id=f"video{v}"))
    return write_token_sets(str(root), token_sets)


def make_jobs(locations, count: int, merge: MergeConfig, seed: int) -> list[AskJob]:
    rng = random.Random(seed)
    return [
        AskJob(
            loc.video_id,
            loc,
            rng.choice(QUESTIONS),
            None,
            merge,
            GenerationConfig(max_new_tokens=rng.randint(4, 64)),
        )
        for loc in (rng.choice(locations) for _ in range(count))
    ]


def measured(run: Any) -> dict[str, Any]:
    """`run()`'s result with this process's CPU time and the machine's load average around it:
    on a shared, oversubscribed machine wall times swing with the neighbours' load, CPU time
    (the work this process did) much less."""
    load_before = os.getloadavg()[0]
    cpu = time.process_time()
    result = run()
    result["cpu_s"] = time.process_time() - cpu
    result["load_avg"] = (load_before + os.getloadavg()[0]) / 2
    return result


def summary(name: str, concurrency: int, result: dict[str, Any]) -> dict[str, Any]:
    latencies = sorted(result["latencies_s"])
    p99_index = min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))
    return {
        "scenario": name,
        "concurrency": concurrency,
        "questions": len(latencies),
        "throughput_qps": len(latencies) / result["wall_s"],
        "tokens_per_s": sum(result["completion_tokens"]) / result["wall_s"],
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[p99_index],
        "mean_batch": statistics.mean(result["batch_sizes"]),
        "wall_s": result["wall_s"],
        "cpu_s": result["cpu_s"],
        "questions_per_cpu_s": len(latencies) / result["cpu_s"],
        "tokens_per_cpu_s": sum(result["completion_tokens"]) / result["cpu_s"],
        "load_avg": result["load_avg"],
    }


def prefill_flops(llm: LlavaOneVision, queries: Sequence[int], keys: Sequence[int]) -> float:
    """Prefill FLOPs from the layer shapes: per layer, the linear layers on its query rows
    (q, k, v, o projections and the SwiGLU FFN) plus attention (scores and weighted sums,
    queries x keys), and the final norm/head on one row."""
    text = llm.model.config.text_config
    d, m = text.hidden_size, text.intermediate_size
    head_dim = d // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    per_row = 2 * (d * d + 2 * d * kv + d * d + 3 * d * m)
    total = sum(per_row * q + 4 * q * k * d for q, k in zip(queries, keys, strict=True))
    return float(total + 2 * d * text.vocab_size)


def prefix_scenario(
    engine: AnswerEngine, location, merge: MergeConfig, repeats: int
) -> dict[str, Any]:
    llm = engine.llm
    job = AskJob(
        location.video_id,
        location,
        QUESTIONS[0],
        "you are a careful video assistant .",
        merge,
        GenerationConfig(max_new_tokens=4),
    )
    out: dict[str, Any] = {}
    for label, cache_bytes in (("without", 0), ("with", 2**30)):
        scheduler = RequestScheduler(
            engine, llm.continuous_batch(cache_bytes), max_running=1, wait_for_company_s=0.0
        )

        async def ask_all(sched: RequestScheduler = scheduler) -> list[AskResponse]:
            responses = []
            for _ in range(repeats):
                async for item in sched.submit(await engine.prepare(job)):
                    if isinstance(item, AskResponse):
                        responses.append(item)
            return responses

        responses = asyncio.run(ask_all())
        later = responses[1:]  # the first question fills the cache in both runs
        out[label] = {
            "ttft_p50_s": statistics.median(r.timings.prefill_s for r in later),
            "cached_prompt_tokens": later[-1].tokens.prompt_cached,
            "answers": [r.answer for r in responses],
        }
    # FLOPs of one repeated question, from its layer shapes.
    prepared = asyncio.run(engine.prepare(job))
    sequence = llm.prompt_sequence(prepared.question)
    (answer,) = llm.answer([prepared.question], merge, GenerationConfig(max_new_tokens=1))
    resume = resume_layer(llm.num_layers, merge)
    rows, prefix = sequence.length, sequence.text_start
    full = prefill_flops(llm, answer.layer_tokens, answer.layer_tokens)
    queries = [n - prefix if i < resume else n for i, n in enumerate(answer.layer_tokens)]
    reused = prefill_flops(llm, queries, answer.layer_tokens)
    out.update(
        prompt_rows=rows,
        prefix_rows=prefix,
        visual_rows=sequence.visual_count,
        resume_layer=resume,
        layers=llm.num_layers,
        prefix_share_of_rows=prefix / rows,
        expected_drop=(prefix / rows) * (resume / llm.num_layers),
        flops_without=full,
        flops_with=reused,
        flops_drop=1 - reused / full,
        same_answers=out["with"]["answers"] == out["without"]["answers"],
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(TEXT_CONFIGS), default="mini")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--retention", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--questions", type=int, nargs="+", default=[6, 48, 96])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    llm = build_llm(args.size)
    merge = MergeConfig(layer=default_merge_layer(llm.num_layers), keep_ratio=0.5)
    engine = AnswerEngine(llm.model_id, llm=llm, cache_bytes=2**30)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU container, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "merge": {"layer": merge.layer, "keep_ratio": merge.keep_ratio},
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as root:
        locations = write_videos(llm, Path(root), args.videos, args.frames, args.retention)
        # Warm both paths up (first forwards touch every weight page, allocator growth).
        warmup = make_jobs(locations, 2, merge, seed=0)
        answer_load(engine, warmup, 2, max_batch_size=2)
        continuous_load(engine, warmup, 2, stream=False)
        for concurrency, count in zip(args.concurrency, args.questions, strict=True):
            jobs = make_jobs(locations, count, merge, seed=concurrency)
            runs = {
                "static": lambda: answer_load(engine, jobs, concurrency, concurrency),  # noqa: B023
                "continuous": lambda: continuous_load(engine, jobs, concurrency, stream=False),  # noqa: B023
            }
            for name, run in runs.items():
                row = summary(name, concurrency, measured(run))
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
        streams_at = 16 if 16 in args.concurrency else args.concurrency[-1]
        jobs = make_jobs(locations, args.questions[args.concurrency.index(streams_at)], merge, 7)
        for stream in (False, True):
            result = measured(lambda: continuous_load(engine, jobs, streams_at, stream=stream))  # noqa: B023
            row = summary("streamed" if stream else "not streamed", streams_at, result)
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
        report["prefix"] = prefix_scenario(engine, locations[0], merge, args.repeats)
        print(json.dumps({k: v for k, v in report["prefix"].items()}, default=str), flush=True)
    report["wall_s"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
