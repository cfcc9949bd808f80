"""`tokenreel serve`: run the question-answering service until Ctrl-C.

Embedded defaults: a local Ray, the local store `./tokenreel-data` with its SQLite catalog, the
model from TOKENREEL_MODEL (else the tiny one). `--ray-address` deploys onto an existing cluster
instead (the store and catalog URLs must then be reachable from its nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import threading
from typing import Any

from serving.auth import API_KEY_ENV, api_key_digest_from_env
from serving.settings import ServeSettings

APP_NAME = "tokenreel"
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MB', '1000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"not a byte size (e.g. 2GiB, 512MB): {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in [1, 65535], got {port}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeSettings()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    add("--port", type=_port, default=8000)
    add("--ray-address", default=None, help="existing Ray cluster (default: start a local one)")
    add("--model", default=None, help=f"Video-LLM (env TOKENREEL_MODEL; {defaults.model})")
    add("--store", dest="store_url", default=None, help="token store URL (TOKENREEL_STORE_URL)")
    add("--catalog", dest="catalog_url", default=None, help="catalog URL (TOKENREEL_CATALOG_URL)")
    add("--device", default=None, help="auto | cpu | cuda[:i] (default auto)")
    add("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    add("--num-gpus", type=float, default=None, help="GPUs per model replica (default 0)")
    add("--num-cpus", type=float, default=None, help="CPUs per model replica (default 1)")
    add("--min-replicas", type=int, default=None)
    add("--max-replicas", type=int, default=None)
    add("--target-ongoing-requests", type=float, default=None)
    add("--max-ongoing-requests", type=int, default=None)
    add("--max-batch-size", type=int, default=None, help="1 turns batching off")
    add("--batch-wait-timeout-s", type=float, default=None)
    add("--cache-bytes", type=parse_bytes, default=None, help="token-set cache per replica")
    add("--no-affinity", dest="affinity", action="store_false", default=None)


SETTING_KEYS = (
    "model",
    "store_url",
    "catalog_url",
    "device",
    "dtype",
    "num_gpus",
    "num_cpus",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "max_ongoing_requests",
    "max_batch_size",
    "batch_wait_timeout_s",
    "cache_bytes",
    "affinity",
)


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serving.app import build_app

    app_args: dict[str, Any] = {k: getattr(args, k) for k in SETTING_KEYS}
    try:
        settings = ServeSettings.from_args(app_args)
        app = build_app(app_args)
    except ValueError as exc:
        print(f"tokenreel serve: {exc}")
        return 2
    ray.init(address=args.ray_address, log_to_driver=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{args.host}:{args.port}"
        auth = f"bearer key from {API_KEY_ENV}" if api_key_digest_from_env() else "off"
        print(
            f"tokenreel serving {settings.model} at {url} (docs {url}/docs; auth {auth})\n"
            f"store {settings.store_url}; catalog {settings.catalog_url}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        _wait_for_interrupt()
    finally:
        print("stopping...", flush=True)
        serve.delete(APP_NAME)
        ray.shutdown()
    return 0


def _wait_for_interrupt() -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        stopped.wait()
