"""`ApiServer`: the HTTP ingress (FastAPI) in front of the model replicas.

It holds no model. Per request it checks the API key, validates the body and the video id, asks
the catalog where the video's token set is (404 unknown, 409 failed or not indexed), and hands a
validated `AskJob` to a `ModelServer` replica. Calls that fail because a model replica died are
retried (answering a question has no side effects) before the client sees a 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serving import openai_compat
from serving.auth import check_authorization
from serving.engine import AskJob, ModelInfo
from serving.errors import (
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    ServingError,
    Unauthorized,
    VideoNotReady,
    error_body,
    install_error_handlers,
    internal_error_response,
    logger,
)
from serving.metrics import ApiMetrics
from serving.schemas import (
    MAX_LIST_LIMIT,
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    MergeSettings,
    ModelCard,
    ModelList,
    VideoInfo,
    VideoList,
)
from serving.settings import ServeSettings
from storage.catalog import Catalog, VideoRecord, VideoStatus
from storage.ids import validate_video_id

UNAUTHENTICATED_PATHS = frozenset({"/healthz"})
API_DESCRIPTION = """Questions over the compressed visual-token sets of indexed videos.

* `POST /v1/videos/{video_id}/ask`: one question, with token counts, FLOPs ratio and timings.
* `POST /v1/chat/completions`: OpenAI-compatible (streaming with `stream: true`). Name the video
  with a content part `{"type": "video_url", "video_url": {"url": "tokenreel://VIDEO_ID"}}` in
  the user message, or the extra field `video_id`; merge settings go in the extra field `merge`
  (with the `openai` client: `extra_body={"video_id": ..., "merge": {"layer": 18}}`). One user
  message per request (system/developer messages allowed); greedy decoding unless `temperature`
  is set.
* Authentication, when the server has `TOKENREEL_API_KEY`: `Authorization: Bearer <key>` on
  every path but `/healthz`.
"""
REPLICA_RETRIES = 3


@serve.ingress()
class ApiServer:
    """Deployment class; `serving.app.build_app` binds it to the `ModelServer` handle."""

    def __init__(
        self, engine: DeploymentHandle, settings: ServeSettings, key_digest: str | None
    ) -> None:
        self.engine = engine
        self.catalog = Catalog(settings.catalog_url, store_url=settings.store_url)
        self.key_digest = key_digest
        self.metrics = ApiMetrics()
        self.created = int(time.time())
        self._model_info: ModelInfo | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    # -- model replicas ---------------------------------------------------------------------
    async def model_info(self) -> ModelInfo:
        if self._model_info is None:
            self._model_info = await self._with_retries(lambda: self.engine.describe.remote())
        return self._model_info

    async def _with_retries(self, call: Any) -> Any:
        for attempt in range(REPLICA_RETRIES):
            try:
                return await call()
            except RayActorError:
                logger.warning("model replica died during a call (attempt %d)", attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        raise ServiceUnavailable("no model replica could answer; retry shortly")

    async def ask(self, job: AskJob) -> AskResponse:
        return await self._with_retries(lambda: self.engine.ask.remote(job))

    async def ask_stream(self, job: AskJob) -> tuple[Any, DeploymentResponseGenerator]:
        """(first item, the stream): the first item is awaited here so that a failure before
        any text (unknown token set, dead replica) is still an HTTP error, not a broken stream."""

        async def start() -> tuple[Any, DeploymentResponseGenerator]:
            stream = self.engine.options(stream=True).ask_stream.remote(job)
            return await stream.__anext__(), stream

        return await self._with_retries(start)

    # -- catalog ----------------------------------------------------------------------------
    async def job_for(
        self, video_id: str, question: str, system: str | None, merge: MergeSettings, generation
    ) -> AskJob:
        """Validate everything about one question and locate its token set."""
        video_id = checked_video_id(video_id)
        info = await self.model_info()
        try:
            merge_config = merge.to_config(info.num_layers)
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_merge_layer") from None
        location = await asyncio.to_thread(self.catalog.locate, video_id, model_id=info.model_id)
        if location is None:
            await self._raise_unavailable(video_id, info.model_id)
        return AskJob(video_id, location, question, system, merge_config, generation)

    async def _raise_unavailable(self, video_id: str, model_id: str) -> None:
        record = await asyncio.to_thread(self.catalog.get_video, video_id, model_id)
        if record is None:
            record = await asyncio.to_thread(self.catalog.get_video, video_id)
        if record is None:
            raise NotFound(f"video {video_id!r} not found", code="video_not_found")
        if record.model_id != model_id:
            raise VideoNotReady(
                f"video {video_id!r} is indexed for model {record.model_id!r}, not for the "
                f"served model {model_id!r}",
                code="video_not_indexed_for_model",
            )
        if record.status == VideoStatus.FAILED:
            raise VideoNotReady(
                f"video {video_id!r} failed indexing: {record.error or 'unknown'}",
                code="video_failed",
            )
        raise VideoNotReady(f"video {video_id!r} is still being indexed", code="video_pending")


def checked_video_id(video_id: str) -> str:
    try:
        return validate_video_id(video_id)
    except ValueError:
        raise InvalidRequest(
            "invalid video id: 1-128 characters from A-Z a-z 0-9 . _ - (not starting with . _ -)",
            code="invalid_video_id",
        ) from None


def video_info(record: VideoRecord) -> VideoInfo:
    return VideoInfo(
        video_id=record.video_id,
        uri=record.uri,
        model_id=record.model_id,
        config_hash=record.config_hash,
        status=record.status.value,
        error=record.error,
        attempts=record.attempts,
        visual_tokens=record.location.kept_count if record.location else None,
        indexed_at=record.indexed_at,
        updated_at=record.updated_at,
    )


# -- the HTTP endpoints ---------------------------------------------------------------------------

router = APIRouter()


def server_of(request: Request) -> ApiServer:
    """The `ApiServer` whose FastAPI app serves this request (see `create_api`)."""
    return request.app.state.server


Server = Annotated[ApiServer, Depends(server_of)]


@router.get("/healthz", tags=["service"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/models", response_model=ModelList, tags=["service"])
async def list_models(server: Server) -> ModelList:
    info = await server.model_info()
    return ModelList(data=[ModelCard(id=info.model_id, created=server.created)])


@router.get("/v1/videos", response_model=VideoList, tags=["videos"])
async def list_videos(
    server: Server,
    status: str | None = Query(default=None, pattern="^(pending|indexed|failed)$"),
    search: str | None = Query(default=None, max_length=256),
    limit: int = Query(default=100, ge=1, le=MAX_LIST_LIMIT),
    offset: int = Query(default=0, ge=0),
) -> VideoList:
    catalog = server.catalog
    records, total = await asyncio.gather(
        asyncio.to_thread(catalog.list_videos, status, search, limit=limit, offset=offset),
        asyncio.to_thread(catalog.count_videos, status, search),
    )
    return VideoList(data=[video_info(r) for r in records], total=total, limit=limit, offset=offset)


@router.get("/v1/videos/{video_id}", response_model=VideoInfo, tags=["videos"])
async def get_video(server: Server, video_id: str) -> VideoInfo:
    record = await asyncio.to_thread(server.catalog.get_video, checked_video_id(video_id))
    if record is None:
        raise NotFound(f"video {video_id!r} not found", code="video_not_found")
    return video_info(record)


@router.post("/v1/videos/{video_id}/ask", response_model=AskResponse, tags=["questions"])
async def ask(server: Server, video_id: str, body: AskRequest) -> AskResponse:
    """Answer one question about one indexed video, with token counts, FLOPs and timings."""
    started = time.perf_counter()
    job = await server.job_for(
        video_id, body.question, body.system, body.merge, body.generation_config()
    )
    response = await server.ask(job)
    response.timings.total_s = time.perf_counter() - started
    return response


@router.post("/v1/chat/completions", tags=["questions"])
async def chat_completions(server: Server, body: ChatCompletionRequest) -> Response:
    """OpenAI-compatible; the video is named by a `tokenreel://VIDEO_ID` video_url part or the
    `video_id` field. `stream: true` answers with server-sent events."""
    started = time.perf_counter()
    info = await server.model_info()
    if body.model != info.model_id:
        raise NotFound(
            f"model {body.model!r} is not served here; GET /v1/models lists {info.model_id!r}",
            code="model_not_found",
        )
    chat = openai_compat.chat_question(body)
    job = await server.job_for(
        chat.video_id, chat.question, chat.system, chat.merge, chat.generation
    )
    request_id = openai_compat.completion_id()
    if not body.stream:
        response = await server.ask(job)
        response.timings.total_s = time.perf_counter() - started
        return JSONResponse(openai_compat.completion_body(response, request_id))
    first, stream = await server.ask_stream(job)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _chat_events(first, stream, request_id, info.model_id, include_usage, started)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def authenticate_and_count(request: Request, call_next: Any) -> Response:
    """HTTP middleware: the API key on every path but the unauthenticated ones, a clean 500 for
    whatever escaped the app, and the request metrics."""
    server: ApiServer = request.app.state.server
    started = time.perf_counter()
    try:
        if request.url.path not in UNAUTHENTICATED_PATHS:
            check_authorization(request.headers.get("authorization"), server.key_digest)
        response = await call_next(request)
        # Label by route template (bounded), never by raw path (one series per video id).
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")
    except Unauthorized as exc:
        response = JSONResponse(
            error_body(exc.message, exc.error_type),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        endpoint = "unauthenticated"
    except Exception as exc:  # whatever escaped the app becomes a clean 500
        response = internal_error_response(exc)
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")
    server.metrics.record_request(endpoint, response.status_code, time.perf_counter() - started)
    return response


def create_api(server: ApiServer) -> FastAPI:
    """The FastAPI app of one `ApiServer` replica: the endpoints above, answering for `server`."""
    api = FastAPI(title="tokenreel", description=API_DESCRIPTION, version="0.1.0")
    api.state.server = server
    install_error_handlers(api)
    api.middleware("http")(authenticate_and_count)
    api.include_router(router)
    return api


async def _chat_events(
    first: Any,
    stream: DeploymentResponseGenerator,
    request_id: str,
    model: str,
    include_usage: bool,
    started: float,
) -> AsyncIterator[str]:
    """SSE chunks: the role, each text piece as decoded, the finish reason, (usage), [DONE]."""
    yield openai_compat.sse(openai_compat.chunk(request_id, model, {"role": "assistant"}))
    item, finished = first, False
    try:
        while True:
            if isinstance(item, AskResponse):
                item.timings.total_s = time.perf_counter() - started
                figures = {"tokenreel": openai_compat.figures(item)}
                yield openai_compat.sse(
                    openai_compat.chunk(
                        request_id, model, {}, finish_reason=item.finish_reason, extra=figures
                    )
                )
                if include_usage:
                    usage = {"usage": openai_compat.usage(item)}
                    yield openai_compat.sse(
                        openai_compat.chunk(request_id, model, None, extra=usage)
                    )
                finished = True
                break
            yield openai_compat.sse(openai_compat.chunk(request_id, model, {"content": item}))
            item = await stream.__anext__()
    except Exception as exc:  # headers are sent: report in-band, without internals
        finished = True
        message = exc.message if isinstance(exc, ServingError) else "internal server error"
        if not isinstance(exc, ServingError):
            logger.error("stream %s failed", request_id, exc_info=exc)
        yield openai_compat.sse(error_body(message, "server_error"))
    finally:
        if not finished:  # the client hung up: stop generating on the model replica too
            stream.cancel()
    yield openai_compat.SSE_DONE
