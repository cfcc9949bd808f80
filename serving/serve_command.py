"""`tokenreel serve`: run the question-answering service until Ctrl-C or SIGTERM.

Embedded defaults: a local Ray, the local store `./tokenreel-data` with its SQLite catalog, the
model from TOKENREEL_MODEL (else the tiny one). `--ray-address` deploys onto an existing cluster
instead (the store and catalog URLs must then be reachable from its nodes).

Before deploying, the cluster's resources are checked against the replicas' (`serving.resources`):
a service that cannot be scheduled fails at once with what is short, instead of Serve waiting
for it forever. SIGTERM and SIGINT stop the service in every phase, start-up included: the
application is deleted and the local Ray (with its agents) shut down (see `_StopSignals`). The
HTTP replicas' request log (one line per request) is printed on this command's output.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
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
    add("--port", type=_port, default=8000, help="port to listen on")
    add("--ray-address", default=None, help="existing Ray cluster (default: start a local one)")
    add(
        "--model",
        default=None,
        help=f"Video-LLM (default: env TOKENREEL_MODEL, else {defaults.model})",
    )
    add(
        "--store",
        dest="store_url",
        default=None,
        help="token store URL (default: env TOKENREEL_STORE_URL, else ./tokenreel-data)",
    )
    add(
        "--catalog",
        dest="catalog_url",
        default=None,
        help="catalog URL (default: env TOKENREEL_CATALOG_URL, else the store's)",
    )
    add("--device", default=None, help="auto | cpu | cuda[:i] (default auto)")
    add(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="model weights' dtype (default: the model's own for its device)",
    )
    add("--num-gpus", type=float, default=None, help="GPUs per model replica (default 0)")
    add("--num-cpus", type=float, default=None, help="CPUs per model replica (default 1)")
    add(
        "--min-replicas",
        type=int,
        default=None,
        help=f"model replicas at least (default {defaults.min_replicas})",
    )
    add(
        "--max-replicas",
        type=int,
        default=None,
        help=f"model replicas at most (default {defaults.max_replicas})",
    )
    add(
        "--target-ongoing-requests",
        type=float,
        default=None,
        help=f"autoscaling target per replica (default {defaults.target_ongoing_requests:g})",
    )
    add(
        "--max-ongoing-requests",
        type=int,
        default=None,
        help=f"requests per model replica at once (default {defaults.max_ongoing_requests})",
    )
    add(
        "--max-batch-size",
        type=int,
        default=None,
        help="questions in a replica's running (continuous) batch; 1 turns batching off "
        f"(default {defaults.max_batch_size})",
    )
    add(
        "--batch-wait-timeout-s",
        type=float,
        default=None,
        help=f"wait for a fuller batch (default {defaults.batch_wait_timeout_s:g} s)",
    )
    add(
        "--cache-bytes",
        type=parse_bytes,
        default=None,
        help=f"token-set cache per replica (default {defaults.cache_bytes / 2**30:g}GiB)",
    )
    add(
        "--prefix-cache-bytes",
        type=parse_bytes,
        default=None,
        help="per-video prefix cache per replica (KV below the merge layer); 0 turns it off "
        f"(default {defaults.prefix_cache_bytes / 2**30:g}GiB)",
    )
    add(
        "--no-affinity",
        dest="affinity",
        action="store_false",
        default=None,
        help="route questions to any replica, not the one likely caching the video",
    )
    add(
        "--served-model-name",
        dest="served_model_names",
        nargs="+",
        default=None,
        help="names clients use as `model` (default: the model id); the first is reported",
    )
    add(
        "--expose-source-uris",
        action="store_true",
        default=None,
        help="show videos' source URIs in the API (off: they may be server paths)",
    )
    add(
        "--request-timeout-s",
        type=float,
        default=None,
        help=f"per-request deadline, 504 after (default {defaults.request_timeout_s:g})",
    )
    add(
        "--max-queued-requests",
        type=int,
        default=None,
        help=f"queue bound, 503 beyond it (default {defaults.max_queued_requests})",
    )
    add(
        "--skip-resource-check",
        action="store_true",
        help="deploy even if the cluster looks too small now (an autoscaling cluster)",
    )


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
    "prefix_cache_bytes",
    "affinity",
    "served_model_names",
    "expose_source_uris",
    "request_timeout_s",
    "max_queued_requests",
)


def run(args: argparse.Namespace) -> int:
    app_args: dict[str, Any] = {k: getattr(args, k) for k in SETTING_KEYS}
    try:
        settings = ServeSettings.from_args(app_args)
    except ValueError as exc:
        print(f"tokenreel serve: {exc}", file=sys.stderr)
        return 2
    # One request log line per request even with several HTTP replicas: Ray's driver would fold
    # lines that differ only in numbers ("[repeated 2x across cluster]").
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    stop = _StopSignals()
    try:
        return _serve(args, settings, stop)
    finally:
        stop.restore()


class _StopSignals:
    """SIGTERM and SIGINT only set `received`; the command checks it between its steps.

    Decision: a handler that raises could interrupt Ray inside its C calls (a `ray.get` of
    `serve.start` then fails with a SystemError and an exit code of 1): the command instead
    deploys without blocking and polls, so it notices a signal within `POLL_S` in every phase
    but `ray.init` (during which Ray's own SIGTERM handler exits, after which we shut down).
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        self.install()

    def install(self) -> None:
        for signum in self._previous:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum).name

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; whether a stop signal came."""
        deadline = time.monotonic() + seconds
        while self.received is None and time.monotonic() < deadline:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return self.received is not None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


POLL_S = 0.2


def _serve(args: argparse.Namespace, settings: ServeSettings, stop: _StopSignals) -> int:
    import ray
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from serving.app import application
    from serving.resources import InsufficientResources, check_resources, cluster_nodes

    print("starting Ray...", flush=True)
    try:
        # log_to_driver: the replicas' request log (and errors) appear on this output; Ray's and
        # Serve's own start-up chatter does not.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        ray.init(address=args.ray_address, log_to_driver=True, logging_level=logging.WARNING)
        stop.install()  # ray.init replaced the SIGTERM handler with its own
        if not args.skip_resource_check:
            check_resources(settings, cluster_nodes())
        if stop.received:
            return 0
        serve.start(
            http_options={"host": args.host, "port": args.port},
            logging_config={"log_level": "WARNING"},  # the controller and proxies
        )
        print(
            f"deploying {settings.model} ({settings.min_replicas} model replica(s))...", flush=True
        )
        app = application(settings, api_key_digest_from_env())
        serve.run_many(
            [serve.RunTarget(app, name=APP_NAME, route_prefix="/")],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
        while not stop.wait(1.0):
            status = serve.status().applications.get(APP_NAME)
            if status is not None and status.status == ApplicationStatus.RUNNING:
                break
            if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
                print(f"tokenreel serve: deploying failed: {status.message}", file=sys.stderr)
                return 1
        if stop.received:
            return 0
        url = f"http://{args.host}:{args.port}"
        auth = f"bearer key from {API_KEY_ENV}" if api_key_digest_from_env() else "off"
        print(
            f"tokenreel serving {settings.model} at {url} (docs {url}/docs; auth {auth})\n"
            f"store {settings.store_url}; catalog {settings.catalog_url}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        while not stop.wait(3600):
            pass
        return 0
    except InsufficientResources as exc:
        print(f"tokenreel serve: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        _shut_down(args.ray_address is None)


def _shut_down(local_ray: bool) -> None:
    """Delete the application, then leave Ray: a local Ray stops with all its processes.
    A second signal meanwhile is ignored (the shutdown is what it asks for)."""
    import ray
    from ray import serve

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    print("stopping...", flush=True)
    try:
        if ray.is_initialized() and not local_ray:
            # On a shared cluster, only our application goes; a local Ray goes as a whole.
            serve.delete(APP_NAME)
    except Exception as exc:  # still leave Ray
        print(f"tokenreel serve: could not delete the application: {exc}", file=sys.stderr)
    finally:
        ray.shutdown()
