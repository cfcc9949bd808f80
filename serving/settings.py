"""Settings of the service: the `build_app(args)` keys, with environment fallbacks and checks.

`args` may come from Python, from `tokenreel serve` flags, or from a Serve config file (where
every value may be a string), so each value is coerced and range-checked here, once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from compression.models import DEFAULT_MODEL, MODEL_ENV
from storage.store import CATALOG_URL_ENV, default_catalog_url
from storage.urls import DEFAULT_STORE_URL, STORE_URL_ENV, normalize_store_url

ENV_FALLBACKS = {"model": MODEL_ENV, "store_url": STORE_URL_ENV, "catalog_url": CATALOG_URL_ENV}


@dataclass(frozen=True)
class ServeSettings:
    """Everything `build_app` needs. See `from_args` for where each value comes from.

    model: plug-in name or hub id / local dir of the Video-LLM (must be the model the videos
        were indexed with: token sets are looked up by its model id).
    device: "auto" (CUDA when the replica has a GPU, else CPU), "cpu" or "cuda[:i]".
    num_gpus / num_cpus: resources of each model replica.
    min_replicas / max_replicas / target_ongoing_requests: Serve autoscaling of model replicas.
    max_batch_size: questions in a replica's running (continuous) batch; 1 turns batching off.
    batch_wait_timeout_s: when nothing runs, how long a first question waits for others to
        share its prefill (`serving.scheduler`).
    max_ongoing_requests: per model replica; requests beyond it queue in the caller.
    cache_bytes: bound of each model replica's token-set cache.
    prefix_cache_bytes: bound of each model replica's per-video prefix cache (KV cache below
        the merge layer of a video's system prompt and visual tokens); 0 turns reuse off.
    affinity: route questions about a video to the replica that has it cached.
    api_replicas / api_num_cpus: the HTTP (FastAPI) replicas, which hold no model.
    served_model_names: the names clients use as `model` (vLLM's --served-model-name); the
        first is the one responses report. Empty: the model's id.
    expose_source_uris: show videos' source URIs in the API (off: they may be server paths).
    request_timeout_s: per-request deadline; a request still unanswered then gets a 504.
    max_queued_requests: requests each HTTP replica lets wait for a model replica slot; beyond
        it, 503 with `Retry-After: retry_after_s` (Serve's max_queued_requests).
    """

    model: str = DEFAULT_MODEL
    store_url: str = DEFAULT_STORE_URL
    catalog_url: str = ""
    device: str = "auto"
    dtype: str | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    max_ongoing_requests: int = 32
    cache_bytes: int = 2 * 1024**3
    prefix_cache_bytes: int = 1024**3
    affinity: bool = True
    api_replicas: int = 1
    api_num_cpus: float = 0.1
    served_model_names: tuple[str, ...] = ()
    expose_source_uris: bool = False
    request_timeout_s: float = 300.0
    max_queued_requests: int = 128
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.num_gpus >= 0, "num_gpus must be >= 0"),
            (self.num_cpus >= 0, "num_cpus must be >= 0"),
            (1 <= self.min_replicas <= self.max_replicas, "need 1 <= min_replicas <= max_replicas"),
            (self.target_ongoing_requests > 0, "target_ongoing_requests must be > 0"),
            (1 <= self.max_batch_size <= 256, "max_batch_size must be in [1, 256]"),
            (0 <= self.batch_wait_timeout_s <= 10, "batch_wait_timeout_s must be in [0, 10]"),
            (self.max_ongoing_requests >= 1, "max_ongoing_requests must be >= 1"),
            (self.cache_bytes >= 0, "cache_bytes must be >= 0"),
            (self.prefix_cache_bytes >= 0, "prefix_cache_bytes must be >= 0"),
            (self.api_replicas >= 1, "api_replicas must be >= 1"),
            (self.api_num_cpus >= 0, "api_num_cpus must be >= 0"),
            (0 < self.request_timeout_s <= 86400, "request_timeout_s must be in (0, 86400]"),
            (self.max_queued_requests >= 1, "max_queued_requests must be >= 1"),
            (0 <= self.retry_after_s <= 3600, "retry_after_s must be in [0, 3600]"),
            (
                all(0 < len(name) <= 256 for name in self.served_model_names)
                and len(set(self.served_model_names)) == len(self.served_model_names),
                "served_model_names must be distinct names of 1-256 characters",
            ),
            (bool(self.model), "model must be set"),
            (bool(self.store_url), "store_url must be set"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    def model_names(self, model_id: str) -> tuple[str, ...]:
        """The names clients may use for the served model; the first is the reported one."""
        return self.served_model_names or (model_id,)

    @classmethod
    def from_args(cls, args: dict[str, Any] | None = None) -> ServeSettings:
        """Coerce `args` (unknown keys are an error), fill model/store/catalog from the
        environment, and make a local store path absolute (replicas may run elsewhere)."""
        args = {k: v for k, v in (args or {}).items() if v is not None}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(args) - set(fields)
        if unknown:
            raise ValueError(f"unknown serving settings {sorted(unknown)}; known: {sorted(fields)}")
        for key, env_var in ENV_FALLBACKS.items():
            if key not in args and os.environ.get(env_var):
                args[key] = os.environ[env_var]
        values = {name: _coerce(fields[name].type, value) for name, value in args.items()}
        values["store_url"] = normalize_store_url(str(values.get("store_url", DEFAULT_STORE_URL)))
        if not values.get("catalog_url"):
            values["catalog_url"] = default_catalog_url(values["store_url"])
        return cls(**values)


def _coerce(annotation: str, value: Any) -> Any:
    """Turn a config value (possibly a string) into the field's type."""
    if annotation == "bool":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a boolean: {value!r}")
            return lowered in ("true", "1", "yes")
        return bool(value)
    if annotation == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    if annotation == "float":
        return float(value)
    if annotation == "tuple[str, ...]":
        # A config file may give "a,b" or a list.
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(item).strip() for item in items if str(item).strip())
    return str(value)
