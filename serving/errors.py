"""The errors a client may see, and the handlers that turn every failure into a clean JSON body.

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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers())


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


def _describe_validation_error(error: dict[str, Any]) -> str:
    location = field_path(error.get("loc", ()))
    message = str(error.get("msg", "invalid value"))
    return f"{location}: {message}" if location else message


def _note_error(request: Request, code: str | None) -> None:
    """What the request log line reports about a failed request (see `serving.middleware`)."""
    request.state.error_code = code


def install_error_handlers(app: FastAPI) -> None:
    """Route every handled exception to a clean body; unexpected exceptions reach the request
    middleware (`serving.middleware`), which answers them with `InternalError`."""

    @app.exception_handler(ServingError)
    async def _on_serving_error(request: Request, exc: ServingError) -> JSONResponse:
        _note_error(request, exc.code or exc.error_type)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's own messages name the field and the limit; the raw input is not echoed back.
        errors = exc.errors()
        details = "; ".join(_describe_validation_error(e) for e in errors[:5])
        param = field_path(errors[0].get("loc", ())) if errors else None
        _note_error(request, "invalid_value")
        error = InvalidRequest(f"invalid request: {details}", code="invalid_value", param=param)
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = NotFound.error_type if exc.status_code == 404 else "invalid_request_error"
        _note_error(request, error_type)
        return JSONResponse(error_body(str(exc.detail), error_type), status_code=exc.status_code)
