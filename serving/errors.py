"""The errors a client may see (`serving.error_handlers` turns them into responses).

Every response error has the shape OpenAI clients understand:
`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}` (`param`: the request field
at fault, or null). A message never carries a stack trace or a server path: unexpected exceptions
are logged on the server (with an incident id) and answered with a generic 500 that names only
that id. Invalid requests are 400 with the field in `param`, as OpenAI and vLLM answer them.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

# Serve routes this logger to the replica log files (and stderr), tagged with the request id.
logger = logging.getLogger("ray.serve")


class ServingError(Exception):
    """An error with a status code and a message that is safe to show to the client."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def headers(self) -> dict[str, str] | None:
        return None

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)


class InvalidRequest(ServingError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(ServingError):
    status_code = 401
    error_type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServingError):
    status_code = 404
    error_type = "not_found_error"


class VideoNotReady(ServingError):
    """The video is in the catalog but has no usable token set (failed or still pending)."""

    status_code = 409
    error_type = "conflict_error"


class ServiceUnavailable(ServingError):
    """No model replica can take the request now: none answers, or the queue is full (then
    `retry_after_s` says when to try again, sent as the `Retry-After` header)."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        if self.retry_after_s is None:
            return None
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class RequestTimeout(ServingError):
    """The request did not finish within the server's per-request deadline."""

    status_code = 504
    error_type = "timeout_error"


class InternalError(ServingError):
    """An unexpected failure: logged in full under a fresh incident id; the client gets the id."""

    @classmethod
    def logged(cls, exc: BaseException, what: str = "internal error") -> InternalError:
        incident = uuid.uuid4().hex[:12]
        logger.error("%s (incident %s)", what, incident, exc_info=exc)
        return cls(f"internal server error (incident {incident})", code="internal_error")


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def field_path(location: tuple[Any, ...] | list[Any]) -> str | None:
    """A validation error's location as the request field it names, e.g. "merge.layer",
    "messages.1.content" (without FastAPI's "body"/"query"/"path" marker); None for the body."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or None
