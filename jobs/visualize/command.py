"""`tokenreel visualize VIDEO ...`: a PNG of which tokens of an indexed video were kept.

VIDEO: a video id, or the path/URI it was indexed from. The sampled frames are decoded again
from the source; each token's patch is outlined green (kept), purple (merged into a cluster; a
dot marks the centre) or red (dropped). With --question, a second block shows the tokens the
in-LLM merge kept at layer K for that question (see `jobs.visualize.render`).

Exit status: 0 on success; 2 on invalid arguments, an unknown video, or a changed source.
"""

from __future__ import annotations

import argparse
import sys

from compression.config import INNER_METHODS
from storage.command_options import add_store_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("video", metavar="VIDEO", help="video id, or the path/URI it was indexed from")
    add(
        "--question",
        default=None,
        help="also show the tokens kept at layer K for this question (default: none)",
    )
    add("--out", default=None, help="PNG path (default ./<video id>.png)")
    add_store_options(parser)
    add("--model", default=None, help="model id of the token set (default: most recent)")
    add("--config-hash", default=None, help="config hash of the token set (default: most recent)")
    add(
        "--merge-method",
        choices=[m for m in INNER_METHODS if m != "none"],
        default="text_aware",
        help="in-LLM merge for the question",
    )
    add("--merge-layer", type=int, default=None, help="K (default: 18 of 28, scaled)")
    add("--keep-ratio", type=float, default=0.5, help="R, share kept at layer K (0.5)")
    add("--lam", type=float, default=0.5, help="lambda of the text-aware score (0.5)")
    add("--device", default="cpu", help="device for answering the question (default cpu)")
    add("--panel-width", type=int, default=192, help="pixels per frame panel (192)")
    add("--columns", type=int, default=8, help="frame panels per row (8)")


def run(args: argparse.Namespace) -> int:
    from jobs.index.decode import DecodeError
    from jobs.visualize.video import resolve_video_id, visualize_video
    from storage import TokenSetReadError, open_store

    try:
        store = open_store(args.store, args.catalog)
        result = visualize_video(
            args.video,
            store,
            model_id=args.model,
            config_hash=args.config_hash,
            question=args.question,
            merge_method=args.merge_method,
            merge_layer=args.merge_layer,
            keep_ratio=args.keep_ratio,
            lam=args.lam,
            device=args.device,
            panel_width=args.panel_width,
            columns=args.columns,
        )
        out = args.out or f"{resolve_video_id(args.video)}.png"
        result.image.save(out)
    except (ValueError, KeyError, OSError, DecodeError, TokenSetReadError) as exc:
        print(f"tokenreel visualize: {exc}", file=sys.stderr)
        return 2
    if result.answer is not None:
        print(f"answer: {result.answer.text.strip()}")
    print(out)
    return 0
