"""Prometheus metrics of the service, through Ray Serve's metrics API.

Ray exports them from every replica (with the deployment, replica and application tags Serve adds)
on each node's metrics endpoint, next to Serve's own request metrics; point Prometheus at it
(`ray metrics launch-prometheus` for a local try). Names start with `tokenreel_` (Ray prefixes
them with `ray_` on export); where a metric means what a vLLM metric means, it has vLLM's name
after the prefix (`vllm:time_to_first_token_seconds` -> `tokenreel_time_to_first_token_seconds`).
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

from serving.schemas import AskResponse

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TOKEN_LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class ApiMetrics:
    """What the HTTP replicas count: requests by endpoint and status, their latency, and streams
    that broke after their 200 was sent (counted with the status the failure would have had)."""

    def __init__(self) -> None:
        self._requests = Counter(
            "tokenreel_http_requests",
            description="HTTP requests by endpoint and status code (a broken stream counts with "
            "the status of its failure, not its 200).",
            tag_keys=("endpoint", "status"),
        )
        self._latency = Histogram(
            "tokenreel_http_request_seconds",
            description="End-to-end latency of HTTP requests inside the service (streams: to "
            "their last byte).",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("endpoint",),
        )
        self._streams_broken = Counter(
            "tokenreel_streams_broken",
            description="Streamed answers cut by a failure after their first byte, by reason.",
            tag_keys=("reason",),
        )

    def record_request(self, endpoint: str, status: int, latency_s: float) -> None:
        self._requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self._latency.observe(latency_s, tags={"endpoint": endpoint})

    def record_stream_broken(self, reason: str) -> None:
        self._streams_broken.inc(tags={"reason": reason})


class EngineMetrics:
    """What the model replicas count: token-set cache, requests running and waiting, tokens,
    latencies per request, batches."""

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
        self._running = Gauge(
            "tokenreel_num_requests_running",
            description="Questions in this replica's running (continuous) batch.",
        )
        self._waiting = Gauge(
            "tokenreel_num_requests_waiting",
            description="Questions on this replica waiting to join the running batch.",
        )
        self._prompt_tokens = Counter(
            "tokenreel_prompt_tokens",
            description="Prompt tokens prefilled (visual tokens included).",
        )
        self._generation_tokens = Counter(
            "tokenreel_generation_tokens",
            description="Tokens generated.",
        )
        self._visual_tokens = Counter(
            "tokenreel_visual_tokens",
            description="Visual tokens, by stage: 'in' (the token sets that entered the LLM) and "
            "'after_merge' (left after the merge at layer K).",
            tag_keys=("stage",),
        )
        self._prefix_cache_queries = Counter(
            "tokenreel_prefix_cache_queries",
            description="Prompt tokens looked up in the prefix cache.",
        )
        self._prefix_cache_hits = Counter(
            "tokenreel_prefix_cache_hits",
            description="Prompt tokens found in the per-video prefix cache (the system prompt "
            "and video of an earlier question: not prefilled again).",
        )
        self._time_to_first_token = Histogram(
            "tokenreel_time_to_first_token_seconds",
            description="From the replica receiving a question to its first generated token.",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self._time_per_output_token = Histogram(
            "tokenreel_request_time_per_output_token_seconds",
            description="Mean time between generated tokens of a request.",
            boundaries=TOKEN_LATENCY_BOUNDARIES_S,
        )
        self._queue_time = Histogram(
            "tokenreel_request_queue_time_seconds",
            description="Time a question waited on the replica to join the running batch.",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self._answer_latency = Histogram(
            "tokenreel_answer_seconds",
            description="Time to answer on the model replica (load + queue + prefill + decode).",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self._batch_size = Histogram(
            "tokenreel_batch_size",
            description="Questions in the running batch right after new ones joined it.",
            boundaries=BATCH_BOUNDARIES,
        )

    def record_cache(self, hit: bool, cached_bytes: int) -> None:
        self._cache_lookups.inc(tags={"result": "hit" if hit else "miss"})
        self._cache_bytes.set(cached_bytes)

    def record_load(self, running: int, waiting: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)

    def record_answer(self, response: AskResponse) -> None:
        """The figures of one answered question."""
        tokens, timings = response.tokens, response.timings
        counters = [
            (self._prompt_tokens, tokens.prompt, None),
            (self._generation_tokens, tokens.completion, None),
            (self._visual_tokens, tokens.visual_in, {"stage": "in"}),
            (self._visual_tokens, tokens.visual_after_merge, {"stage": "after_merge"}),
            (self._prefix_cache_queries, tokens.prompt, None),
            (self._prefix_cache_hits, tokens.prompt_cached, None),
        ]
        for counter, count, tags in counters:
            if count > 0:  # Ray counters only take positive increments
                counter.inc(count, tags=tags)
        self._time_to_first_token.observe(timings.load_s + timings.queue_s + timings.prefill_s)
        if tokens.completion > 1:
            self._time_per_output_token.observe(timings.decode_s / (tokens.completion - 1))
        self._queue_time.observe(timings.queue_s)
        self._answer_latency.observe(timings.total_s)

    def record_batch(self, size: int) -> None:
        self._batch_size.observe(size)
