"""Our decoder loop against Hugging Face `generate` on the same prompt, alternated in one process
(so both see the same machine load): TTFT and decode tokens/s, merge off, all visual tokens.

Uses `bench_answer.py`'s random-weight LLaVA-OV builder; the first round is a warm-up.

    .venv/bin/python bench/bench_loop_vs_hf.py [--size 0.5b] [--frames 2] [--new-tokens 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_answer import QUESTION, QWEN2_TEXT, build_model, hf_generate_case

from compression.config import MergeConfig
from compression.models import GenerationConfig, Question
from compression.models.generation import GenerationRun
from compression.token_set import TokenSet, grid_index


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(QWEN2_TEXT), default="0.5b")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    plugin = build_model(args.size, device, dtype)
    grid = (args.frames, *plugin.encoder.frame_grid)
    count = grid[0] * grid[1] * grid[2]
    token_set = TokenSet(
        tokens=torch.randn(count, plugin.hidden_size, device=device, dtype=dtype) * 0.02,
        index=grid_index(grid),
        kind=torch.zeros(count, dtype=torch.int8),
        size=torch.ones(count, dtype=torch.int32),
        grid=grid,
        model_id=plugin.model_id,
    )
    sequence = plugin.prompt_sequence(Question(token_set, QUESTION))
    generation = GenerationConfig(max_new_tokens=args.new_tokens)
    print(f"{count} visual tokens, {sequence.length} prompt tokens, {args.new_tokens} new tokens")
    for round_ in range(args.rounds):
        run = GenerationRun(
            plugin.language_model_parts(),
            [sequence],
            MergeConfig(method="none"),
            generation,
            decode=lambda ids: "",
            eos_token_ids=(),
        )
        answer = run.run()[0]
        ours_speed = (args.new_tokens - 1) / answer.decode_s
        hf_ttft, hf_speed = hf_generate_case(plugin, token_set, args.new_tokens, 1)
        print(
            f"round {round_}: ours TTFT {answer.prefill_s:.3f}s {ours_speed:.2f} tok/s | "
            f"HF TTFT {hf_ttft:.3f}s {hf_speed:.2f} tok/s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
