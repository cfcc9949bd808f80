"""The HTTP middleware of `ApiServer`: what happens around every request.

A plain ASGI middleware (not Starlette's `BaseHTTPMiddleware`): it sees the end of a streamed
body, so a stream's latency, its failure after the 200 and its log line are those of the whole
stream. Per request: the API key (every path but `UNAUTHENTICATED_PATHS`), a clean 500 for
whatever escaped the app, the request metrics, and one log line (`RequestRecord.log_line`) on
`ray.serve.requests`, a child of the Serve logger: it reaches the replica's Serve log file and
stderr (which `tokenreel serve` prints) even when the deployments log only warnings.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from serving.auth import check_authorization
from serving.console import CONSOLE_PATHS
from serving.error_handlers import error_response
from serving.errors import InternalError, ServingError, Unauthorized
from serving.metrics import ApiMetrics
from serving.schemas import AskResponse

# Probes, the docs (the OpenAPI document declares the bearer scheme: Swagger's Authorize
# button then sends the key on the calls made from /docs) and the console's static shell (it
# asks for the key; every call it makes needs it).
UNAUTHENTICATED_PATHS = frozenset(
    {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", *CONSOLE_PATHS}
)

request_log = logging.getLogger("ray.serve.requests")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def current_request_id() -> str:
    """Serve's id of the request being handled (its X-Request-Id header and the id in Serve's
    logs), or a fresh one outside Serve."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or uuid.uuid4().hex


@dataclass
class RequestRecord:
    """What the log line and the metrics say about one request; endpoints fill in the video,
    the figures of the answer and, for a stream that broke after its 200, the failure."""

    request_id: str
    method: str
    path: str
    status: int = 500
    video_id: str | None = None
    model: str | None = None
    stream: bool = False
    response: AskResponse | None = None
    error_code: str | None = None
    stream_failure: ServingError | None = None
    started: float = field(default_factory=time.perf_counter)

    def fail_stream(self, error: ServingError) -> None:
        self.stream_failure = error
        self.error_code = error.code or error.error_type

    @property
    def outcome_status(self) -> int:
        """The status the metrics count: a broken stream's failure, not its 200."""
        return self.stream_failure.status_code if self.stream_failure else self.status

    def log_line(self, seconds: float) -> str:
        fields = [
            f"request {self.request_id}",
            f"{self.method} {self.path}",
            f"status={self.status}",
        ]
        if self.stream_failure is not None:
            fields.append(f"stream_broken={self.stream_failure.status_code}")
        if self.error_code:
            fields.append(f"error={self.error_code}")
        if self.video_id:
            fields.append(f"video={self.video_id}")
        if self.model:
            fields.append(f"model={self.model}")
        if self.stream:
            fields.append("stream=true")
        fields.append(f"total_s={seconds:.3f}")
        if self.response is not None:
            timings, tokens = self.response.timings, self.response.tokens
            fields += [
                f"queue_s={timings.queue_s:.3f}",
                f"load_s={timings.load_s:.3f}",
                f"ttft_s={timings.load_s + timings.queue_s + timings.prefill_s:.3f}",
                f"decode_s={timings.decode_s:.3f}",
                f"prompt_tokens={tokens.prompt}",
                f"visual_tokens={tokens.visual_in}",
                f"generated_tokens={tokens.completion}",
                f"batch={self.response.batch_size}",
                f"cache_hit={str(self.response.cache_hit).lower()}",
            ]
        return " ".join(fields)


def request_record(scope: Scope) -> RequestRecord | None:
    return scope.get("state", {}).get("record")


class RequestMiddleware:
    """See the module docstring. `key_digest`: the API key's digest, None when auth is off."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, key_digest: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.key_digest = key_digest
        request_log.setLevel(logging.INFO)  # whatever level the Serve logger has

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(current_request_id(), scope["method"], scope["path"])
        scope.setdefault("state", {})["record"] = record
        response_started = False

        async def send_and_watch(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                record.status = int(message["status"])
            await send(message)

        endpoint = "unmatched"
        try:
            if scope["path"] not in UNAUTHENTICATED_PATHS:
                check_authorization(_header(scope, b"authorization"), self.key_digest)
            await self.app(scope, receive, send_and_watch)
            # Label by route template (bounded), never by raw path (one series per video id).
            endpoint = getattr(scope.get("route"), "path", "unmatched")
        except Unauthorized as exc:
            endpoint = "unauthenticated"
            record.error_code = "unauthorized"
            await error_response(exc)(scope, receive, send_and_watch)
        except Exception as exc:  # whatever escaped the app becomes a clean 500
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            error = InternalError.logged(exc, f"request {record.request_id} failed")
            record.error_code = error.code
            if not response_started:
                await error_response(error)(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - record.started
            record.error_code = record.error_code or scope["state"].get("error_code")
            self.metrics.record_request(endpoint, record.outcome_status, seconds)
            request_log.info("%s", record.log_line(seconds))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
