"""Command-line options shared by the commands that sample, encode and compress videos
(`tokenreel index` and `tokenreel eval`), so both spell and default them the same way."""

from __future__ import annotations

import argparse

from compression.config import DPC_CONVENTIONS, CompressionConfig
from compression.models import DEFAULT_MODEL, MODEL_ENV


def add_model_and_sampling_options(parser: argparse.ArgumentParser) -> None:
    """--model, --frames, --frame-size and the outer stage's --tau, --cluster-ratio, --knn-k,
    --dpc-knn-convention."""
    defaults = CompressionConfig()
    add = parser.add_argument
    add(
        "--model",
        default=None,
        help=f"Video-LLM name (default: env {MODEL_ENV}, else {DEFAULT_MODEL})",
    )
    add("--frames", type=int, default=defaults.frames, help="frames sampled per video (32)")
    add(
        "--frame-size",
        type=int,
        default=None,
        help="short side of decoded frames (default: the model's input size when fixed)",
    )
    add("--tau", type=float, default=defaults.tau, help="similarity threshold of the pool")
    add(
        "--cluster-ratio",
        type=float,
        default=defaults.cluster_ratio,
        help="share of the kept tokens refilled as DPC-KNN cluster tokens",
    )
    add("--knn-k", type=int, default=defaults.knn_k, help="k of the DPC-KNN density")
    add(
        "--dpc-knn-convention",
        choices=DPC_CONVENTIONS,
        default=defaults.dpc_knn_convention,
        help="DPC-KNN neighbours as the peers count them (self included; default) or "
        "exclude_self (the earlier convention)",
    )
