"""Serving benchmark: the Ray Serve application over HTTP on loopback, against the engine called
directly, in one run.

Model: on CPU the tiny LLaVA-OV (`tiny-llava-ov`); on CUDA the LLaVA-OV-7B architecture with
random weights, built by `bench_answer.build_model` (the plug-in benchmark's config; weights do not
change the cost). Videos are random frames encoded by that model and compressed by the outer stage
("ours" at --retention, and "full" for the baseline), written with `storage.token_files` and
recorded in a SQLite catalog (the indexing job needs decodable files and a named model; the
7B model here has neither). Greedy decoding of at most --new-tokens tokens.

Scenarios (each reports client-side p50/p99 latency, throughput, cache hit rate, mean batch size):

  e2e       one question at a time: 2%/1% (text-aware merge at K) vs the same question over all
            the video's tokens with no merge, end to end over HTTP; and the engine called directly
            on the same token sets (service overhead = service - engine, p50 and p99).
  cold/hit  the first question about each video (token set read from the store) vs the second
            (in the replica's cache).
  batching  --concurrency concurrent questions over --videos videos, continuous batching on
            (max_batch_size = concurrency questions running) vs off (max_batch_size 1);
            `bench_batching.py` compares it with the old static batching.
  affinity  2 model replicas whose caches hold 75% of the videos each, --concurrency
            concurrent questions: video-affinity routing on vs Serve's default router (CPU only:
            the GPU machine has one GPU).

    .venv/bin/python bench/bench_serve.py                       # CPU defaults, a few minutes
    .venv/bin/python bench/bench_serve.py --json out.json       # CUDA: 7B, 32 frames (6,272 tokens)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from compression import CompressionConfig  # noqa: E402
from compression.config import MergeConfig  # noqa: E402
from compression.models import GenerationConfig, VideoLLM, load_video_llm  # noqa: E402
from jobs.index.video import compress_encoded  # noqa: E402
from serving.engine import AnswerEngine, AskJob  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402
from storage.catalog import Catalog, IndexedVideo  # noqa: E402
from storage.token_files import TokenSetLocation, write_token_sets  # noqa: E402

QUESTIONS = [
    "what is the person doing in this video ? please answer briefly",
    "which objects appear in the video ?",
    "what happens at the end of the video ?",
    "describe the scene in one sentence .",
]


# -- the model ------------------------------------------------------------------------------------


def random_llava_ov(size: str) -> VideoLLM:
    """The plug-in benchmark's random-weight LLaVA-OV (runs inside the Serve replica too)."""
    sys.path.insert(0, str(BENCH_DIR))
    from bench_answer import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return build_model(size, device, torch.bfloat16 if device.type == "cuda" else torch.float32)


@dataclass(frozen=True)
class ModelChoice:
    name: str  # settings.model (for the tiny model: what load_video_llm loads)
    factory: Callable[[], VideoLLM] | None  # replaces load_video_llm in the replica

    def build(self) -> VideoLLM:
        return self.factory() if self.factory else load_video_llm(self.name)


# -- the videos -----------------------------------------------------------------------------------


@dataclass
class Corpus:
    store: str
    catalog_url: str
    compressed: list[str]  # video ids, outer stage "ours" at --retention
    full: list[str]  # the same videos, every token
    locations: dict[str, TokenSetLocation]
    token_set_bytes: int  # mean bytes of a compressed token set


def build_corpus(llm: VideoLLM, root: Path, videos: int, frames: int, retention: float) -> Corpus:
    store, catalog_url = str(root / "store"), f"sqlite:///{root / 'catalog.sqlite'}"
    catalog = Catalog(catalog_url)
    generator = torch.Generator().manual_seed(0)
    configs = {
        "c": CompressionConfig(retention_ratio=retention),
        "f": CompressionConfig(method="full", retention_ratio=1.0),
    }
    ids: dict[str, list[str]] = {"c": [], "f": []}
    locations: dict[str, TokenSetLocation] = {}
    sizes = []
    for v in range(videos):
        frames_u8 = torch.randint(
            0, 256, (frames, 360, 640, 3), dtype=torch.uint8, generator=generator
        )
        encoded = llm.encode(frames_u8, [0.5 * t for t in range(frames)])
        for kind, config in configs.items():
            uri = f"bench://{kind}/{v}"
            [token_set] = compress_encoded(
                encoded, [config], model_id=llm.model_id, uri=uri, content_hash=uri
            )
            (location,) = write_token_sets(store, [token_set])
            catalog.register_pending([uri], llm.model_id, config.stable_hash())
            catalog.record_indexed([IndexedVideo.of(token_set, location)])
            ids[kind].append(token_set.video_id)
            locations[token_set.video_id] = location
            if kind == "c":
                sizes.append(token_set.nbytes)
    return Corpus(store, catalog_url, ids["c"], ids["f"], locations, int(np.mean(sizes)))


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    requests: int
    errors: int
    concurrency: int
    p50_s: float
    p99_s: float
    throughput_rps: float
    cache_hit_rate: float | None
    mean_batch: float | None
    mean_completion_tokens: float | None
    mean_visual_in: float | None
    mean_visual_after_merge: float | None

    def line(self) -> str:
        extras = ""
        if self.cache_hit_rate is not None:
            extras = (
                f"  hit {100 * self.cache_hit_rate:5.1f}%  batch {self.mean_batch:5.2f}"
                f"  tokens {self.mean_visual_in:.0f}->{self.mean_visual_after_merge:.0f}"
                f"  gen {self.mean_completion_tokens:.1f}"
            )
        return (
            f"{self.scenario:<34} n={self.requests:<4} c={self.concurrency:<3} err={self.errors}"
            f"  p50 {1000 * self.p50_s:8.1f} ms  p99 {1000 * self.p99_s:8.1f} ms"
            f"  {self.throughput_rps:7.2f} req/s{extras}"
        )


def summarise(
    scenario: str,
    latencies: Sequence[float],
    bodies: Sequence[dict | None],
    wall_s: float,
    concurrency: int,
) -> Result:
    ok = [b for b in bodies if b is not None]

    def mean(values: list[float]) -> float | None:
        return float(statistics.fmean(values)) if values else None

    return Result(
        scenario=scenario,
        requests=len(latencies),
        errors=len(bodies) - len(ok),
        concurrency=concurrency,
        p50_s=float(np.percentile(latencies, 50)),
        p99_s=float(np.percentile(latencies, 99)),
        throughput_rps=len(latencies) / wall_s,
        cache_hit_rate=mean([float(b["cache_hit"]) for b in ok]),
        mean_batch=mean([b["batch_size"] for b in ok]),
        mean_completion_tokens=mean([b["tokens"]["completion"] for b in ok]),
        mean_visual_in=mean([b["tokens"]["visual_in"] for b in ok]),
        mean_visual_after_merge=mean([b["tokens"]["visual_after_merge"] for b in ok]),
    )


async def _load(
    url: str, asks: Sequence[tuple[str, dict]], concurrency: int
) -> tuple[list[float], list[dict | None], float]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:

        async def one(video: str, body: dict) -> tuple[float, dict | None]:
            async with gate:
                started = time.perf_counter()
                response = await client.post(f"/v1/videos/{video}/ask", json=body)
                elapsed = time.perf_counter() - started
            return elapsed, response.json() if response.status_code == 200 else None

        started = time.perf_counter()
        results = await asyncio.gather(*(one(v, b) for v, b in asks))
        wall = time.perf_counter() - started
    return [r[0] for r in results], [r[1] for r in results], wall


def load(scenario: str, url: str, asks: Sequence[tuple[str, dict]], concurrency: int) -> Result:
    latencies, bodies, wall = asyncio.run(_load(url, asks, concurrency))
    result = summarise(scenario, latencies, bodies, wall, concurrency)
    print(result.line(), flush=True)
    return result


def ask_body(question: str, merge: dict, new_tokens: int) -> dict:
    return {"question": question, "max_new_tokens": new_tokens, "merge": merge}


def mixed_asks(
    videos: Sequence[str], count: int, merge: dict, new_tokens: int, seed: int = 0
) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    return [
        (rng.choice(videos), ask_body(rng.choice(QUESTIONS), merge, new_tokens))
        for _ in range(count)
    ]


def engine_direct(
    engine: AnswerEngine,
    corpus: Corpus,
    video: str,
    merge: MergeConfig,
    new_tokens: int,
    repeats: int,
    scenario: str,
) -> Result:
    """The same question through `AnswerEngine` in this process (cache warm), one at a time."""
    job = AskJob(
        video,
        corpus.locations[video],
        QUESTIONS[0],
        None,
        merge,
        GenerationConfig(max_new_tokens=new_tokens),
    )
    latencies = []
    for attempt in range(repeats + 1):  # the first run warms up (and fills the cache)
        started = time.perf_counter()
        prepared = asyncio.run(engine.prepare(job))
        (response,) = engine.answer_batch([prepared])
        if attempt:
            latencies.append(time.perf_counter() - started)
    body = {**response.model_dump(include={"tokens"}), "cache_hit": True, "batch_size": 1}
    result = summarise(scenario, latencies, [body] * repeats, sum(latencies), 1)
    print(result.line(), flush=True)
    return result


# -- the service ----------------------------------------------------------------------------------


class Service:
    """One Serve application on a free loopback port; stopped on exit."""

    def __init__(self, settings: ServeSettings, model: ModelChoice) -> None:
        self.settings, self.model = settings, model

    def __enter__(self) -> str:
        import socket

        from ray import serve

        from serving.app import application

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            application(self.settings, None, self.model.factory), name="bench", route_prefix="/"
        )
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        from ray import serve

        serve.shutdown()


def settings_for(
    corpus: Corpus, model: ModelChoice, on_gpu: bool, **changes: object
) -> ServeSettings:
    base = {
        "model": model.name,
        "store_url": corpus.store,
        "catalog_url": corpus.catalog_url,
        "num_gpus": 1.0 if on_gpu else 0.0,
        "num_cpus": 1.0 if on_gpu else 0.5,
        "batch_wait_timeout_s": 0.01,
        "max_ongoing_requests": 64,
    }
    return ServeSettings.from_args({**base, **changes})


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    on_gpu_default = torch.cuda.is_available()
    parser.add_argument("--size", choices=["tiny", "0.5b", "7b"], default=None)
    parser.add_argument("--frames", type=int, default=None, help="32 on CUDA (6,272 tokens)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--retention", type=float, default=0.02)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=None, help="per load scenario")
    parser.add_argument("--repeats", type=int, default=None, help="per one-at-a-time scenario")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    on_gpu = on_gpu_default
    size = args.size or ("7b" if on_gpu else "tiny")
    frames = args.frames or (32 if on_gpu else 16)
    new_tokens = args.new_tokens or (32 if on_gpu else 8)
    requests = args.requests or (64 if on_gpu else 128)
    repeats = args.repeats or (10 if on_gpu else 30)
    model = (
        ModelChoice("tiny-llava-ov", None)
        if size == "tiny"
        else ModelChoice(f"random-llava-ov-{size}", functools.partial(random_llava_ov, size))
    )

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(include_dashboard=False, log_to_driver=False)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        started = time.perf_counter()
        llm = model.build()
        corpus = build_corpus(llm, Path(tmp), args.videos, frames, args.retention)
        layers = llm.num_layers
        merge_layer = min(MergeConfig().layer, layers - 1)
        print(
            f"{llm.model_id}: {layers} layers, {args.videos} videos x {frames} frames, "
            f"token set {corpus.token_set_bytes / 1024:.1f} KiB at {args.retention:g}; "
            f"prepared in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        merged = {"layer": merge_layer}
        no_merge = {"method": "none"}
        video, full_video = corpus.compressed[0], corpus.full[0]

        # e2e: the engine directly, then the service (one model on the device at a time).
        if not on_gpu:
            # Ray gives a replica with num_cpus <= 1 one intra-op thread (OMP_NUM_THREADS=1):
            # the same here, or the direct calls measure thread contention, not the engine.
            torch.set_num_threads(1)
        engine = AnswerEngine(model.name, llm=llm, cache_bytes=2**34)
        pct = f"{100 * args.retention:g}%/{50 * args.retention:g}%"
        results.append(
            engine_direct(
                engine,
                corpus,
                video,
                MergeConfig(layer=merge_layer),
                new_tokens,
                repeats,
                f"engine {pct} K={merge_layer}",
            )
        )
        results.append(
            engine_direct(
                engine,
                corpus,
                full_video,
                MergeConfig(method="none"),
                new_tokens,
                repeats,
                "engine all tokens, no merge",
            )
        )
        del engine, llm
        if on_gpu:
            torch.cuda.empty_cache()

        one_at_a_time = settings_for(corpus, model, on_gpu, max_batch_size=args.concurrency)
        with Service(one_at_a_time, model) as url:
            cold = [(v, ask_body(QUESTIONS[0], merged, new_tokens)) for v in corpus.compressed]
            results.append(load("cold: first question per video", url, cold, 1))
            hit = [(v, ask_body(QUESTIONS[1], merged, new_tokens)) for v in corpus.compressed]
            results.append(load("hit: second question per video", url, hit, 1))
            for name, vid, merge in (
                (f"service {pct} K={merge_layer}", video, merged),
                ("service all tokens, no merge", full_video, no_merge),
            ):
                asks = [(vid, ask_body(QUESTIONS[0], merge, new_tokens))] * (repeats + 1)
                load("(warm-up)", url, asks[:1], 1)
                results.append(load(name, url, asks[1:], 1))
            batched_asks = mixed_asks(corpus.compressed, requests, merged, new_tokens)
            results.append(
                load(f"batching on (max {args.concurrency})", url, batched_asks, args.concurrency)
            )

        with Service(settings_for(corpus, model, on_gpu, max_batch_size=1), model) as url:
            load("(warm-up)", url, [(v, ask_body("q", merged, 2)) for v in corpus.compressed], 4)
            asks = [(video, ask_body(QUESTIONS[0], merged, new_tokens))] * repeats
            results.append(load(f"service {pct} K={merge_layer}, batching off", url, asks, 1))
            results.append(load("batching off", url, batched_asks, args.concurrency))

        if not on_gpu:
            cache = int(0.75 * args.videos * corpus.token_set_bytes)
            for affinity in (True, False):
                settings = settings_for(
                    corpus,
                    model,
                    on_gpu,
                    min_replicas=2,
                    max_replicas=2,
                    cache_bytes=cache,
                    affinity=affinity,
                    max_batch_size=args.concurrency,
                )
                with Service(settings, model) as url:
                    asks = mixed_asks(corpus.compressed, requests, merged, new_tokens, seed=1)
                    label = "affinity on" if affinity else "affinity off (Serve default)"
                    results.append(load(f"{label}, 2 replicas", url, asks, args.concurrency))
    ray.shutdown()

    by_name = {r.scenario: r for r in results}
    service_c = by_name[f"service {pct} K={merge_layer}"]
    engine_c = by_name[f"engine {pct} K={merge_layer}"]
    summary = {
        "speedup_e2e_p50_vs_all_tokens": by_name["service all tokens, no merge"].p50_s
        / service_c.p50_s,
        "service_overhead_p50_ms": 1000 * (service_c.p50_s - engine_c.p50_s),
        "service_overhead_p99_ms": 1000 * (service_c.p99_s - engine_c.p99_s),
        "service_overhead_p99_ms_batching_off": 1000
        * (by_name[f"service {pct} K={merge_layer}, batching off"].p99_s - engine_c.p99_s),
        "batching_throughput_gain": by_name[f"batching on (max {args.concurrency})"].throughput_rps
        / by_name["batching off"].throughput_rps,
    }
    for key, value in summary.items():
        print(f"{key}: {value:.2f}")
    if args.json:
        record = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": torch.cuda.get_device_name()
            if on_gpu
            else platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "command": " ".join(sys.argv),
            "model": model.name,
            "frames": frames,
            "new_tokens": new_tokens,
            "results": [asdict(r) for r in results],
            "summary": summary,
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
