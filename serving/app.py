"""The Ray Serve application: `build_app(args)` -> HTTP ingress (`ApiServer`) + model replicas
(`ModelServer`).

Usable as a Serve import path (`serve run serving.app:build_app model=...`, or a RayService's
`serveConfigV2` with `import_path: serving.app:build_app` and `args:`), and by `tokenreel serve`.
Argument keys: the fields of `serving.settings.ServeSettings`. The API key is read here from
`TOKENREEL_API_KEY` and only its digest is passed on (serving/auth.py).

The model deployment bounds the queue of its callers, the HTTP replicas (`max_queued_requests`:
beyond it, `ApiServer` answers 503 with `Retry-After`). Decision: the HTTP deployment's own queue
at Serve's proxy is left unbounded: its requests wait only for the model queue, which turns the
excess away at once with our JSON error (a small proxy bound also turns requests away on a
momentary count, with a plain-text body). Both deployments log warnings and errors only, without
Serve's access log: the HTTP layer logs one richer line per request (`serving.middleware`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, BackpressureConfig, RequestRouterConfig

from compression.models import VideoLLM
from serving.api import ApiServer
from serving.auth import api_key_digest_from_env
from serving.model_server import ModelServer
from serving.routing import DEFAULT_IMBALANCE_THRESHOLD, VideoAffinityRouter
from serving.settings import ServeSettings

MODEL_DEPLOYMENT = "ModelServer"
API_DEPLOYMENT = "ApiServer"


LOGGING = {"log_level": "WARNING", "enable_access_log": False}


def model_deployment(settings: ServeSettings) -> serve.Deployment:
    """`ModelServer` with the replica resources, autoscaling and router of `settings`."""
    options: dict[str, Any] = {
        "name": MODEL_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(retry_after_s=settings.retry_after_s),
        "logging_config": LOGGING,
        "autoscaling_config": AutoscalingConfig(
            min_replicas=settings.min_replicas,
            max_replicas=settings.max_replicas,
            initial_replicas=settings.min_replicas,
            target_ongoing_requests=settings.target_ongoing_requests,
        ),
    }
    if settings.affinity:
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=VideoAffinityRouter,
            request_router_kwargs={"imbalance_threshold": DEFAULT_IMBALANCE_THRESHOLD},
        )
    return serve.deployment(ModelServer).options(**options)


def api_deployment(settings: ServeSettings) -> serve.Deployment:
    return serve.deployment(ApiServer).options(
        name=API_DEPLOYMENT,
        num_replicas=settings.api_replicas,
        ray_actor_options={"num_cpus": settings.api_num_cpus},
        # The HTTP layer only waits on model replicas: let it hold many requests.
        max_ongoing_requests=max(256, 4 * settings.max_ongoing_requests),
        logging_config=LOGGING,
    )


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The application for `serve.run` / `serve run` / a RayService (see module docstring)."""
    return application(ServeSettings.from_args(args), api_key_digest_from_env())


def application(
    settings: ServeSettings,
    key_digest: str | None,
    llm_factory: Callable[[], VideoLLM] | None = None,
) -> Application:
    """The two deployments bound together; `llm_factory` replaces `load_video_llm` (see
    `ModelServer`)."""
    engine = model_deployment(settings).bind(settings, llm_factory)
    return api_deployment(settings).bind(engine, settings, key_digest)
