"""`tokenreel index SOURCE ...`: index a video corpus into compressed token sets.

SOURCE: a directory, a glob, an `s3://` prefix, or a manifest (.txt one URI per line; .csv or
.parquet with a `uri` column). Prints a progress bar, then the run's summary.

Exit status: 0 when something was indexed or nothing failed (a rerun with nothing new to do is
a success); 1 when every video this run tried failed; 2 on invalid arguments, or a cluster that
cannot hold the pools; 130 when interrupted by Ctrl-C or SIGTERM (the run's videos then read
as interrupted; rerun the same command to finish: indexed videos are skipped).
"""

from __future__ import annotations

import argparse
import sys

from compression.config import OUTER_METHODS, CompressionConfig
from jobs.cli_options import add_model_and_sampling_options
from jobs.index.heartbeat import DEFAULT_HEARTBEAT_S
from storage.command_options import add_store_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CompressionConfig()
    add = parser.add_argument
    add("source", metavar="SOURCE", help="directory, glob, s3:// prefix, or manifest file")
    add_store_options(parser)
    add_model_and_sampling_options(parser)
    add(
        "--retention-ratio",
        type=float,
        default=defaults.retention_ratio,
        help="share of the video's tokens the outer stage keeps (default %(default)s)",
    )
    add(
        "--method",
        choices=OUTER_METHODS,
        default=defaults.method,
        help="outer-stage method (default %(default)s)",
    )
    add(
        "--ray-address",
        default=None,
        help="local (start a private Ray), auto (join the cluster on this machine), HOST:PORT "
        "or ray://HOST:PORT (default: $RAY_ADDRESS if set, else local)",
    )
    add("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    add("--workers", default="1", help="encode actors: N or MIN:MAX, an elastic pool (default 1)")
    add("--gpus-per-worker", type=float, default=0.0, help="GPUs per encode actor (default 0: CPU)")
    add(
        "--worker-resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each encode actor needs (repeatable; default: none)",
    )
    add(
        "--decode-workers",
        default=None,
        help="concurrent decode tasks: N or MIN:MAX (default: as many as free CPUs allow)",
    )
    add(
        "--decode-threads",
        type=int,
        default=2,
        help="videos a decode task decodes at once (default 2)",
    )
    add(
        "--skip-resource-check",
        action="store_true",
        help="start even if the cluster cannot hold the pools now (it autoscales; default: check)",
    )
    add("--batch-size", type=int, default=4, help="videos per encode batch and per file")
    add("--retry-failed", action="store_true", help="retry videos that failed in earlier runs")
    add("--decode-timeout", type=float, default=120.0, help="seconds per video decode (120)")
    add("--no-progress", action="store_true", help="no progress bar")
    add(
        "--chunk-seconds",
        type=float,
        default=None,
        help="index videos longer than this in windows of this many seconds "
        "(default: whole videos in one pass)",
    )
    add(
        "--fps",
        type=float,
        default=None,
        help="with --chunk-seconds: sample this many frames per second "
        "(default: --frames per window)",
    )
    add(
        "--follow",
        action="store_true",
        help="SOURCE is live (an .m3u8 playlist, a directory receiving segments, a growing "
        "file): index new chunks as they complete until SIGINT/SIGTERM (default: off)",
    )
    add(
        "--heartbeat-seconds",
        type=float,
        default=DEFAULT_HEARTBEAT_S,
        help="seconds between the run's heartbeats in the catalog; a run silent for several "
        "(a killed driver) reads as ended, its videos as interrupted; --follow records no run "
        "(default %(default)s)",
    )
    add(
        "--poll-seconds",
        type=float,
        default=2.0,
        help="with --follow: seconds between polls (default 2)",
    )


def run(args: argparse.Namespace) -> int:
    from jobs.index.job import IndexJobStopped, index_videos

    try:
        config = CompressionConfig(
            retention_ratio=args.retention_ratio,
            tau=args.tau,
            cluster_ratio=args.cluster_ratio,
            knn_k=args.knn_k,
            dpc_knn_convention=args.dpc_knn_convention,
            method=args.method,
        )
        if args.follow:
            from jobs.index.follow import run_follow_command

            return run_follow_command(args, config)
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
            worker_resources=parse_resources(args.worker_resource),
            decode_workers=args.decode_workers,
            decode_threads=args.decode_threads,
            skip_resource_check=args.skip_resource_check,
            batch_size=args.batch_size,
            retry_failed=args.retry_failed,
            decode_timeout_s=args.decode_timeout,
            progress=not args.no_progress,
            chunk_seconds=args.chunk_seconds,
            fps=args.fps,
            heartbeat_s=args.heartbeat_seconds,
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


def parse_resources(items: list[str]) -> dict[str, float]:
    """NAME=AMOUNT items -> {NAME: AMOUNT}; ValueError on a malformed one."""
    parsed: dict[str, float] = {}
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            parsed[name.strip()] = float(amount)
        except ValueError:
            raise ValueError(f"--worker-resource expects NAME=AMOUNT, got {item!r}") from None
    return parsed
