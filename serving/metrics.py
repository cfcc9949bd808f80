"""Prometheus metrics of the service, through Ray Serve's metrics API.

Ray exports them from every replica (with the deployment, replica and application tags Serve adds)
on each node's metrics endpoint, next to Serve's own request metrics; point Prometheus at it
(`ray metrics launch-prometheus` for a local try). Names start with `tokenreel_` (Ray prefixes
them with `ray_` on export).
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class ApiMetrics:
    """What the HTTP replicas count: requests by endpoint and status, and their latency."""

    def __init__(self) -> None:
        self._requests = Counter(
            "tokenreel_http_requests",
            description="HTTP requests by endpoint and status code.",
            tag_keys=("endpoint", "status"),
        )
        self._latency = Histogram(
            "tokenreel_http_request_seconds",
            description="End-to-end latency of HTTP requests inside the service.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("endpoint",),
        )

    def record_request(self, endpoint: str, status: int, latency_s: float) -> None:
        self._requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self._latency.observe(latency_s, tags={"endpoint": endpoint})


class EngineMetrics:
    """What the model replicas count: token-set cache, tokens, batches, answer latency."""

    def __init__(self) -> None:
        self._cache_lookups = Counter(
            "tokenreel_token_cache_lookups",
            description="Token-set cache lookups on model replicas, by result (hit or miss).",
            tag_keys=("result",),
        )
        self._cache_bytes = Gauge(
            "tokenreel_token_cache_bytes",
            description="Bytes of token sets held in the replica's cache.",
        )
        self._tokens = Counter(
            "tokenreel_tokens",
            description="Tokens processed, by kind (visual_in, visual_after_merge, generated).",
            tag_keys=("kind",),
        )
        self._batch_size = Histogram(
            "tokenreel_batch_size",
            description="Questions answered per padded forward pass.",
            boundaries=BATCH_BOUNDARIES,
        )
        self._answer_latency = Histogram(
            "tokenreel_answer_seconds",
            description="Time to answer on the model replica (load + queue + prefill + decode).",
            boundaries=LATENCY_BOUNDARIES_S,
        )

    def record_cache(self, hit: bool, cached_bytes: int) -> None:
        self._cache_lookups.inc(tags={"result": "hit" if hit else "miss"})
        self._cache_bytes.set(cached_bytes)

    def record_answer(
        self, visual_in: int, visual_after_merge: int, generated: int, latency_s: float
    ) -> None:
        counts = {"visual_in": visual_in, "visual_after_merge": visual_after_merge}
        counts["generated"] = generated
        for kind, count in counts.items():
            if count > 0:  # Ray counters only take positive increments
                self._tokens.inc(count, tags={"kind": kind})
        self._answer_latency.observe(latency_s)

    def record_batch(self, size: int) -> None:
        self._batch_size.observe(size)
