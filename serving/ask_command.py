"""`tokenreel ask VIDEO "question"`: a small client of the HTTP API (no torch, no Ray)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote

from serving.auth import API_KEY_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("video", help="video id (see GET /v1/videos)")
    add("question", help="the question, in quotes")
    add(
        "--url",
        default=os.environ.get("TOKENREEL_URL", "http://127.0.0.1:8000"),
        help="the service (env TOKENREEL_URL)",
    )
    add("--api-key-env", default=API_KEY_ENV, help="environment variable holding the API key")
    add("--max-new-tokens", type=int, default=None, help="answer length (default: server's, 64)")
    add("--temperature", type=float, default=None, help="sampling (default 0: greedy)")
    add("--top-p", type=float, default=None, help="nucleus sampling (default 1)")
    add("--seed", type=int, default=None, help="sampling seed (default: none)")
    # Not checked here (the server knows its methods; this client imports no torch).
    add(
        "--merge-method",
        default=None,
        help="text_aware, fastv, holitom or none (default: text_aware)",
    )
    add("--merge-layer", type=int, default=None, help="K (default 18, or the last layer)")
    add("--keep-ratio", type=float, default=None, help="R (default 0.5)")
    add("--lam", type=float, default=None, help="lambda (default 0.5)")
    add(
        "--time-range",
        type=float,
        nargs=2,
        metavar=("START_S", "END_S"),
        default=None,
        help="answer over this part of a video indexed with --chunk-seconds",
    )
    add("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    add("--json", action="store_true", help="print the whole response as JSON")


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """Only the settings given on the command line: the server owns the defaults."""
    generation = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    merge = {
        "method": args.merge_method,
        "layer": args.merge_layer,
        "keep_ratio": args.keep_ratio,
        "lam": args.lam,
    }
    body: dict[str, Any] = {"question": args.question}
    body |= {k: v for k, v in generation.items() if v is not None}
    merge = {k: v for k, v in merge.items() if v is not None}
    if merge:
        body["merge"] = merge
    if args.time_range is not None:
        body["time_range"] = list(args.time_range)
    return body


def format_answer(response: dict[str, Any]) -> str:
    tokens, flops, timings, merge = (
        response["tokens"],
        response["flops"],
        response["timings"],
        response["merge"],
    )
    cache = "cache hit" if response["cache_hit"] else "loaded from the store"
    return "\n".join(
        [
            response["answer"],
            "",
            f"tokens:  {tokens['original_visual']} in the video -> {tokens['visual_in']} into "
            f"the LLM -> {tokens['visual_after_merge']} after layer {merge['layer']} "
            f"({merge['method']}, R={merge['keep_ratio']}); prompt {tokens['prompt']}, "
            f"generated {tokens['completion']} ({response['finish_reason']})",
            f"FLOPs:   {100 * flops['ratio_visual_only']:.2f}% of the uncompressed model "
            f"(visual tokens, paper convention); {100 * flops['ratio_with_text']:.2f}% "
            "with text tokens",
            f"time:    {timings['total_s']:.3f} s (queue {timings['queue_s']:.3f}, load "
            f"{timings['load_s']:.3f}, prefill {timings['prefill_s']:.3f}, decode "
            f"{timings['decode_s']:.3f}); {cache}; batch of {response['batch_size']}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    import httpx

    headers = {}
    key = os.environ.get(args.api_key_env, "").strip()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = f"{args.url.rstrip('/')}/v1/videos/{quote(args.video, safe='')}/ask"
    try:
        response = httpx.post(url, json=request_body(args), headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"tokenreel ask: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200:
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:500]
        print(f"tokenreel ask: HTTP {response.status_code}: {message}", file=sys.stderr)
        return 1
    print(json.dumps(payload, indent=2) if args.json else format_answer(payload))
    return 0
