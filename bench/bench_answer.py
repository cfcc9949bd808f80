"""Answer cost of LLaVA-OneVision at its real sizes: time to first token, decode speed, peak
memory and FLOPs for full, compressed and merged token sets, plus the vision-encoder time.

The model is built from a hand-written config with random weights (weights do not change the
cost; nothing is downloaded): `--size 7b` is LLaVA-OV-7B (Qwen2-7B + SigLIP-so400m), `0.5b` is
LLaVA-OV-0.5B (Qwen2-0.5B + the same SigLIP). bf16 on CUDA, fp32 on CPU. One video of
`--frames` random frames is encoded once (the encoder row); the question then runs over:

  (a) full      every visual token (32 frames: 6,272), no merge          [the baseline]
  (b) r%        a random r% subset of the tokens, no merge
  (c) r%/(r/2)% the same subset, text-aware merge at K=18 with R=0.5 (the paper's "2%/1%")
  (d) FastV     every token enters, FastV keeps r% at layer --fastv-layer (default 2, FastV's
                own setting; the paper's tables do not state it) - the paper's "100%/2%"
  (v) HF generate on the full token set (inputs_embeds), the library's own decoding, for scale

The random subset stands in for the outer stage's output: this bench measures cost, not quality
(the token count, not which tokens, sets the cost). Greedy decoding of exactly --new-tokens
tokens (EOS disabled). TTFT = prefill + first token; decode speed = (new tokens - 1) / decode
time; peak memory = torch.cuda.max_memory_allocated during the run (CUDA only). FLOPs per row
from `compression.flops` (Eq. S3, 100 generated tokens), visual tokens only (the paper's
convention) and with the text tokens. Timings are medians of --repeats runs after one warm-up.

    .venv/bin/python bench/bench_answer.py                                 # CUDA: 7b, 32 frames
    .venv/bin/python bench/bench_answer.py --size 0.5b --frames 4 --new-tokens 16 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformers
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from compression.config import CompressionConfig, MergeConfig
from compression.flops import prefill_decode_flops
from compression.models import GenerationConfig, Question
from compression.models.generation import GenerationRun
from compression.models.llava_onevision import LlavaOneVision
from compression.models.tiny import LLAVA_OV_CHAT_TEMPLATE, word_level_tokenizer
from compression.token_set import EncodedVideo, TokenKind, TokenSet

QUESTION = "what is the person doing in this video ? please answer briefly"
IMAGE_TOKEN, VIDEO_TOKEN = 151646, 151647

# Hand-written from the published configs (weights are random; sizes are what cost depends on).
SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 384,
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
    "model_type": "siglip_vision_model",
}
QWEN2_TEXT = {
    "7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "rope_theta": 1e6,
        "tie_word_embeddings": False,
    },
    "0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1e6,
        "tie_word_embeddings": True,
    },
}


def llava_ov_config(size: str) -> LlavaOnevisionConfig:
    """The config of LLaVA-OV of the given size ("7b" or "0.5b"), sdpa attention."""
    text = dict(QWEN2_TEXT[size])
    rope_theta = text.pop("rope_theta")
    tie = text.pop("tie_word_embeddings")
    text.update(
        model_type="qwen2",
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        eos_token_id=151645,
    )
    config = LlavaOnevisionConfig(
        vision_config=SIGLIP_SO400M,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=tie,
    )
    config._attn_implementation = "sdpa"
    return config


def llava_ov_tokenizer(config: LlavaOnevisionConfig):
    """An offline word-level tokenizer with the model's vocabulary size and video token."""
    return word_level_tokenizer(
        config.text_config.vocab_size,
        {"<image>": IMAGE_TOKEN, "<video>": VIDEO_TOKEN},
        LLAVA_OV_CHAT_TEMPLATE,
    )


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> LlavaOneVision:
    """LLaVA-OV of the given size with random weights, created directly on the device."""
    config = llava_ov_config(size)
    with torch.device(device):
        network = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype)
    return LlavaOneVision(network.eval(), llava_ov_tokenizer(config), f"random-llava-ov-{size}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def token_subset(video: EncodedVideo, ratio: float, model_id: str, seed: int = 0) -> TokenSet:
    """All tokens (ratio 1) or a random subset in original order, kind SELECTED, size 1."""
    n = video.tokens.shape[0]
    count = CompressionConfig(retention_ratio=ratio).budget(n)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(n) if count == n else torch.randperm(n, generator=generator)[:count]
    rows = rows.sort().values
    return TokenSet(
        tokens=video.tokens[rows.to(video.tokens.device)],
        index=video.index[rows],
        kind=torch.full((count,), int(TokenKind.SELECTED), dtype=torch.int8),
        size=torch.ones(count, dtype=torch.int32),
        grid=video.grid,
        config=CompressionConfig(method="full" if count == n else "random", retention_ratio=ratio),
        model_id=model_id,
    )


def answer_cases(
    full: TokenSet,
    subset: TokenSet,
    retention: float,
    merge_layer: int,
    keep_ratio: float,
    fastv_layer: int,
) -> list[tuple[str, str, TokenSet, MergeConfig]]:
    """The cases (a)-(d) of the module docstring as (key, name, token set, merge settings);
    keys "full", "retained", "merged", "fastv" (`bench/gpu_suite.py` reads the targets by key)."""
    percent = f"{100 * retention:g}%"
    merged = f"{percent}/{100 * retention * keep_ratio:g}%"
    return [
        ("full", "(a) full", full, MergeConfig(method="none")),
        ("retained", f"(b) {percent}", subset, MergeConfig(method="none")),
        (
            "merged",
            f"(c) {merged} merge K={merge_layer}",
            subset,
            MergeConfig(layer=merge_layer, keep_ratio=keep_ratio),
        ),
        (
            "fastv",
            f"(d) FastV 100%/{percent} K={fastv_layer}",
            full,
            MergeConfig(method="fastv", layer=fastv_layer, keep_ratio=retention),
        ),
    ]


@dataclass
class Row:
    name: str
    visual_in: int
    visual_after: int
    ttft_s: float
    decode_tok_s: float
    peak_gib: float | None
    flops_visual: float
    flops_all: float


def run_case(
    plugin: LlavaOneVision,
    name: str,
    token_set: TokenSet,
    merge: MergeConfig,
    new_tokens: int,
    repeats: int,
) -> Row:
    generation = GenerationConfig(max_new_tokens=new_tokens)
    sequence = plugin.prompt_sequence(Question(token_set, QUESTION))
    ttfts, speeds, answer = [], [], None
    device = plugin.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for attempt in range(repeats + 1):  # the first run warms up
        run = GenerationRun(
            plugin.language_model_parts(),
            [sequence],
            merge,
            generation,
            decode=lambda ids: "",
            eos_token_ids=(),
        )
        answer = run.run()[0]
        if attempt:
            ttfts.append(answer.prefill_s)
            speeds.append((new_tokens - 1) / answer.decode_s)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    config = plugin.model.config.text_config
    d, m = config.hidden_size, config.intermediate_size
    return Row(
        name=name,
        visual_in=answer.visual_tokens_in,
        visual_after=answer.visual_tokens_after_merge,
        ttft_s=statistics.median(ttfts),
        decode_tok_s=statistics.median(speeds),
        peak_gib=peak,
        flops_visual=prefill_decode_flops(answer.layer_visual_tokens, d, m),
        flops_all=prefill_decode_flops(answer.layer_tokens, d, m),
    )


class TokenTimes:
    """A `generate` streamer that notes when each new token arrives (the first `put` is the
    prompt, not a generated token)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def hf_generate_case(
    plugin: LlavaOneVision, token_set: TokenSet, new_tokens: int, repeats: int
) -> tuple[float, float]:
    """HF's own `generate` on the same full prompt embeddings: (TTFT, decode tokens/s).

    TTFT: wall time of a one-token generate. Decode speed: from the arrival times of the tokens
    of a `new_tokens` generate (HF may hand tokens to the streamer one step late on CUDA, which
    shifts the times but not the rate)."""
    sequence = plugin.prompt_sequence(Question(token_set, QUESTION))
    embeds = sequence.embeds[None]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def generate(tokens: int, streamer: TokenTimes | None = None) -> float:
        synchronize(plugin.device)
        started = time.perf_counter()
        with torch.no_grad():
            plugin.model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                streamer=streamer,
            )
        synchronize(plugin.device)
        return time.perf_counter() - started

    generate(2)  # warm-up
    ttft = statistics.median(generate(1) for _ in range(repeats))
    speeds = []
    for _ in range(repeats):
        streamer = TokenTimes()
        generate(new_tokens, streamer)
        times = streamer.times
        speeds.append((len(times) - 1) / (times[-1] - times[0]))
    return ttft, statistics.median(speeds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(QWEN2_TEXT), default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--retention", type=float, default=0.02)
    parser.add_argument("--merge-layer", type=int, default=18)
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--fastv-layer", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    size = args.size or ("7b" if on_gpu else "0.5b")
    frames = args.frames or (32 if on_gpu else 4)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    if args.new_tokens < 2 or args.repeats < 1 or frames < 1:
        parser.error("need --new-tokens >= 2, --repeats >= 1, --frames >= 1")

    started = time.perf_counter()
    plugin = build_model(size, device, dtype)
    weights_gib = sum(p.numel() * p.element_size() for p in plugin.model.parameters()) / 2**30
    print(
        f"built {plugin.model_id} ({weights_gib:.2f} GiB of weights) on {device} {dtype} "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )

    video = torch.randint(
        0, 256, (frames, 360, 640, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    plugin.encode(video[: min(frames, 2)])  # warm-up
    encodes = [plugin.encode(video) for _ in range(args.repeats)]
    encoded = encodes[-1]
    encode_s = statistics.median(e.encode_s for e in encodes)
    score_s = statistics.median(e.score_s for e in encodes)
    print(
        f"encoded {frames} frames -> {encoded.tokens.shape[0]} tokens: {encode_s:.3f}s, "
        f"scores {score_s:.3f}s",
        flush=True,
    )

    full = token_subset(encoded, 1.0, plugin.model_id)
    subset = token_subset(encoded, args.retention, plugin.model_id)
    cases = answer_cases(
        full, subset, args.retention, args.merge_layer, args.keep_ratio, args.fastv_layer
    )
    rows = []
    for _, name, token_set, merge in cases:
        rows.append(run_case(plugin, name, token_set, merge, args.new_tokens, args.repeats))
        print(f"  {rows[-1]}", flush=True)
    hf_ttft, hf_speed = hf_generate_case(plugin, full, args.new_tokens, args.repeats)

    base = rows[0]
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name(device)
        if on_gpu
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": " ".join(sys.argv),
        "size": size,
        "frames": frames,
        "dtype": str(dtype),
        "weights_gib": weights_gib,
        "encode_s": encode_s,
        "score_s": score_s,
        "score_share": score_s / encode_s,
        "hf_generate_full": {"ttft_s": hf_ttft, "decode_tok_s": hf_speed},
        "rows": [
            {
                **row.__dict__,
                "ttft_speedup": base.ttft_s / row.ttft_s,
                "decode_ratio": row.decode_tok_s / base.decode_tok_s,
                "flops_ratio_visual": row.flops_visual / base.flops_visual,
                "flops_ratio_all": row.flops_all / base.flops_all,
            }
            for row in rows
        ],
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))

    print(f"\nLLaVA-OV-{size} random weights, {frames} frames, {dtype}, {results['machine']}")
    print(
        f"vision encoder {encode_s:.3f}s per video, contribution scores {score_s:.3f}s "
        f"({100 * score_s / encode_s:.1f}% of it); weights {weights_gib:.2f} GiB"
    )
    header = (
        f"{'case':34} {'visual':>11} {'TTFT s':>8} {'x full':>7} {'tok/s':>7} "
        f"{'peak GiB':>8} {'FLOPs v':>8} {'FLOPs all':>9}"
    )
    print(header)
    for row in results["rows"]:
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "n/a"
        print(
            f"{row['name']:34} {row['visual_in']:>5}->{row['visual_after']:<5} "
            f"{row['ttft_s']:8.3f} {row['ttft_speedup']:7.1f} {row['decode_tok_s']:7.1f} "
            f"{peak:>8} {row['flops_ratio_visual']:8.3f} {row['flops_ratio_all']:9.3f}"
        )
    print(
        f"{'(v) HF generate, full':34} {base.visual_in:>5}->{base.visual_in:<5} "
        f"{hf_ttft:8.3f} {base.ttft_s / hf_ttft:7.1f} {hf_speed:7.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
