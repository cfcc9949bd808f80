"""The FastAPI side of `serving.errors`: every handled failure becomes a clean JSON body.

Kept apart from the error types so that the engine (and the GPU suite, which runs it without a
web framework) raises them without importing FastAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import InvalidRequest, NotFound, ServingError, error_body, field_path


def error_response(exc: ServingError) -> JSONResponse:
    """The HTTP response of an error: its body, status and headers."""
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


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
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's own messages name the field and the limit; the raw input is not echoed back.
        errors = exc.errors()
        details = "; ".join(_describe_validation_error(e) for e in errors[:5])
        param = field_path(errors[0].get("loc", ())) if errors else None
        _note_error(request, "invalid_value")
        error = InvalidRequest(f"invalid request: {details}", code="invalid_value", param=param)
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = NotFound.error_type if exc.status_code == 404 else "invalid_request_error"
        _note_error(request, error_type)
        return JSONResponse(error_body(str(exc.detail), error_type), status_code=exc.status_code)
