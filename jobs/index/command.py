"""`tokenreel index SOURCE ...`: index a video corpus into compressed token sets.

SOURCE: a directory, a glob, an `s3://` prefix, or a manifest (.txt one URI per line; .csv or
.parquet with a `uri` column). Prints a progress bar, then the run's summary.

Exit status: 0 when something was indexed or nothing failed (a rerun with nothing new to do is
a success); 1 when every video this run tried failed; 2 on invalid arguments; 130 when
interrupted (rerun the same command to finish: indexed videos are skipped).
"""

from __future__ import annotations

import argparse
import sys

from compression.config import OUTER_METHODS, CompressionConfig
from jobs.cli_options import add_model_and_sampling_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CompressionConfig()
    add = parser.add_argument
    add("source", metavar="SOURCE", help="directory, glob, s3:// prefix, or manifest file")
    add(
        "--store",
        default=None,
        help="store URL (default: env TOKENREEL_STORE_URL, else ./tokenreel-data)",
    )
    add(
        "--catalog",
        default=None,
        help="catalog URL (default: env TOKENREEL_CATALOG_URL, else the store's catalog.sqlite)",
    )
    add_model_and_sampling_options(parser)
    add(
        "--retention-ratio",
        type=float,
        default=defaults.retention_ratio,
        help="share of the video's tokens the outer stage keeps",
    )
    add("--method", choices=OUTER_METHODS, default=defaults.method, help="outer-stage method")
    add("--ray-address", default=None, help="Ray cluster to join (default: start a local Ray)")
    add("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    add("--workers", type=int, default=1, help="encode actors (default 1)")
    add("--gpus-per-worker", type=float, default=0.0, help="GPUs per encode actor (default 0: CPU)")
    add("--decode-workers", type=int, default=None, help="concurrent decode tasks (default: auto)")
    add("--batch-size", type=int, default=4, help="videos per encode batch and per file")
    add("--retry-failed", action="store_true", help="retry videos that failed in earlier runs")
    add("--decode-timeout", type=float, default=120.0, help="seconds per video decode (120)")
    add("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jobs.index.job import IndexJobStopped, index_videos

    try:
        config = CompressionConfig(
            retention_ratio=args.retention_ratio,
            tau=args.tau,
            cluster_ratio=args.cluster_ratio,
            knn_k=args.knn_k,
            method=args.method,
        )
        summary = index_videos(
            args.source,
            store_url=args.store,
            catalog_url=args.catalog,
            model=args.model,
            config=config,
            frames=args.frames,
            frame_size=args.frame_size,
            ray_address=args.ray_address,
            num_cpus=args.num_cpus,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            decode_workers=args.decode_workers,
            batch_size=args.batch_size,
            retry_failed=args.retry_failed,
            decode_timeout_s=args.decode_timeout,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"tokenreel index: {exc}", file=sys.stderr)
        return 2
    except IndexJobStopped as exc:
        print(f"tokenreel index: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tokenreel index: interrupted; rerun the same command to finish", file=sys.stderr)
        return 130
    print(summary.format())
    return 0 if summary.indexed or not summary.failed else 1
