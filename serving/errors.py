"""The errors a client may see, and the handlers that turn every failure into a clean JSON body.

Every response error has the shape OpenAI clients understand:
`{"error": {"message": ..., "type": ..., "code": ...}}`. A message never carries a stack trace or a
server path: unexpected exceptions are logged on the server (with a request id) and answered with
a generic 500 that names only that id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# Serve routes this logger to the replica log files, tagged with the request id.
logger = logging.getLogger("ray.serve")


class ServingError(Exception):
    """An error with a status code and a message that is safe to show to the client."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidRequest(ServingError):
    status_code = 422
    error_type = "invalid_request_error"


class Unauthorized(ServingError):
    status_code = 401
    error_type = "authentication_error"


class NotFound(ServingError):
    status_code = 404
    error_type = "not_found_error"


class VideoNotReady(ServingError):
    """The video is in the catalog but has no usable token set (failed or still pending)."""

    status_code = 409
    error_type = "conflict_error"


class ServiceUnavailable(ServingError):
    status_code = 503
    error_type = "service_unavailable"


def error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "code": code}}


def _serving_error_response(exc: ServingError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.code),
        status_code=exc.status_code,
        headers=headers,
    )


def _describe_validation_error(error: dict[str, Any]) -> str:
    # The location without the leading "body"/"path" marker, e.g. "merge.layer".
    location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "path"))
    message = str(error.get("msg", "invalid value"))
    return f"{location}: {message}" if location else message


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through one of three handlers, none of which leaks internals."""

    @app.exception_handler(ServingError)
    async def _on_serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return _serving_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's own messages name the field and the limit; the raw input is not echoed back.
        details = "; ".join(_describe_validation_error(e) for e in exc.errors()[:5])
        return JSONResponse(
            error_body(f"invalid request: {details}", InvalidRequest.error_type, "invalid_value"),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = NotFound.error_type if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), error_type), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(exc)


def internal_error_response(exc: BaseException) -> JSONResponse:
    """Log the full failure under a fresh id; tell the client only the id."""
    incident = uuid.uuid4().hex[:12]
    logger.error("internal error %s", incident, exc_info=exc)
    return JSONResponse(
        error_body(f"internal server error (incident {incident})", "server_error"),
        status_code=500,
    )
