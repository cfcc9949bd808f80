"""`ApiServer`: the HTTP ingress (FastAPI) in front of the model replicas.

It holds no model. Per request it checks the API key (`serving.middleware`), validates the body and
the video id, asks the catalog where the video's token set is (404 unknown, 409 failed or not
indexed), and hands a validated `AskJob` to a `ModelServer` replica. Every request has a deadline
(`request_timeout_s`: 504 when it passes). Calls that fail because a model replica died are
retried (answering a question has no side effects) before the client sees a 503; a full queue
is a 503 with `Retry-After`; `/readyz` says whether a model replica answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from compression.models import GenerationConfig, Turn
from compression.token_set import TokenSet
from serving import console, openai_compat
from serving.engine import AskJob, ModelInfo
from serving.error_handlers import error_response, install_error_handlers
from serving.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    ServingError,
    VideoNotReady,
    logger,
)
from serving.metrics import ApiMetrics
from serving.middleware import (
    UNAUTHENTICATED_PATHS,
    RequestMiddleware,
    RequestRecord,
    request_record,
)
from serving.redact import strip_paths
from serving.schemas import (
    MAX_LIST_LIMIT,
    MAX_LIST_OFFSET,
    MAX_VIEW_FRAMES,
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    ErrorResponse,
    MergeSettings,
    ModelCard,
    ModelList,
    RunInfo,
    RunList,
    TokenSetView,
    VideoInfo,
    VideoList,
)
from serving.settings import ServeSettings
from serving.time_range import check_time_range, chunks_for_range
from storage.catalog import Catalog, VideoRecord, VideoStatus
from storage.ids import validate_video_id
from storage.previews import PreviewFacts, read_preview_facts, read_preview_jpeg
from storage.run_states import run_row
from storage.token_files import TokenSetReadError, read_token_set

API_DESCRIPTION = """Questions over the compressed visual-token sets of indexed videos.

* `POST /v1/videos/{video_id}/ask`: one question, with token counts, FLOPs ratio and timings.
* `POST /v1/chat/completions`: OpenAI-compatible (streaming with `stream: true`). Name the video
  with a content part `{"type": "video_url", "video_url": {"url": "tokenreel://VIDEO_ID"}}` in
  the first user message, or the extra field `video_id`; merge settings go in the extra field
  `merge` (with the `openai` client: `extra_body={"video_id": ..., "merge": {"layer": 18}}`).
  System/developer messages first, then user and assistant messages alternating (a conversation
  over one video), ending with a user message; greedy decoding unless `temperature` is set.
  Parameters tokenreel does not implement are 400s naming them, unless at a neutral value.
* Errors: `{"error": {"message", "type", "param", "code"}}`; 400 invalid request, 401 API key,
  404 unknown video or model, 409 video not indexed, 503 no model replica or queue full (with
  `Retry-After`), 504 deadline passed.
* Authentication, when the server has `TOKENREEL_API_KEY`: `Authorization: Bearer <key>` on
  every path but `/healthz`, `/readyz`, `/docs` and `/openapi.json` (use Authorize in /docs).
"""
REPLICA_RETRIES = 3
READINESS_TIMEOUT_S = 2.0
READY_IF_ANSWERED_WITHIN_S = 2.0  # a replica that just answered needs no ping (busy replicas)
BEARER_SCHEME = "bearerAuth"

T = TypeVar("T")


@serve.ingress()
class ApiServer:
    """Deployment class; `serving.app.build_app` binds it to the `ModelServer` handle."""

    def __init__(
        self, engine: DeploymentHandle, settings: ServeSettings, key_digest: str | None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.catalog = Catalog(settings.catalog_url, store_url=settings.store_url)
        self.key_digest = key_digest
        self.metrics = ApiMetrics()
        self.created = int(time.time())
        self._model_info: ModelInfo | None = None
        self._last_answer = -math.inf  # time.monotonic() of the last call a replica answered

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    def deadline(self) -> float:
        """The `time.monotonic()` by which a request starting now must be answered."""
        return time.monotonic() + self.settings.request_timeout_s

    # -- model replicas ---------------------------------------------------------------------
    async def _call(self, start: Callable[[], Awaitable[T]], deadline: float) -> T:
        """`start()` on a model replica within the deadline: retried when the replica dies."""
        for attempt in range(REPLICA_RETRIES):
            try:
                result = await asyncio.wait_for(start(), timeout=_remaining(deadline))
            except RayActorError:
                logger.warning("model replica died during a call (attempt %d)", attempt + 1)
                await asyncio.sleep(min(0.5 * (attempt + 1), _remaining(deadline)))
                continue
            except BackPressureError as exc:
                retry_after = exc.retry_after_s or self.settings.retry_after_s
                raise ServiceUnavailable(
                    "the service is at capacity (its queue is full); retry shortly",
                    code="queue_full",
                    retry_after_s=retry_after,
                ) from None
            except asyncio.TimeoutError:
                raise _timeout(self.settings.request_timeout_s) from None
            self._last_answer = time.monotonic()
            return result
        if _remaining(deadline) <= 0:
            raise _timeout(self.settings.request_timeout_s)
        raise ServiceUnavailable(
            "no model replica could answer; retry shortly",
            code="no_model_replica",
            retry_after_s=self.settings.retry_after_s,
        )

    async def model_info(self, deadline: float) -> ModelInfo:
        if self._model_info is None:

            async def describe() -> ModelInfo:
                return await _cancel_on_exit(self.engine.describe.remote())

            self._model_info = await self._call(describe, deadline)
        return self._model_info

    async def ready(self) -> bool:
        """Whether a model replica answers: one answered a moment ago, or answers a ping now."""
        if time.monotonic() - self._last_answer < READY_IF_ANSWERED_WITHIN_S:
            return True
        try:
            self._model_info = None  # the ping is `describe`
            await self.model_info(time.monotonic() + READINESS_TIMEOUT_S)
        except ServingError:
            return False
        return True

    async def ask(self, job: AskJob, deadline: float, param: str) -> AskResponse:
        async def call() -> AskResponse:
            return await _cancel_on_exit(self.engine.ask.remote(job))

        with _question_param(param):
            return await self._call(call, deadline)

    async def ask_stream(
        self, job: AskJob, deadline: float, param: str
    ) -> tuple[Any, DeploymentResponseGenerator]:
        """(first item, the stream): the first item is awaited here so that a failure before
        any text (unknown token set, dead replica) is still an HTTP error, not a broken stream."""

        async def start() -> tuple[Any, DeploymentResponseGenerator]:
            stream = self.engine.options(stream=True).ask_stream.remote(job)
            try:
                return await stream.__anext__(), stream
            except BaseException:
                stream.cancel()
                raise

        with _question_param(param):
            return await self._call(start, deadline)

    async def next_item(self, stream: DeploymentResponseGenerator, deadline: float) -> Any:
        """The stream's next item within the deadline; a failure as the `ServingError` to report
        in-band (the 200 is sent)."""
        try:
            return await asyncio.wait_for(stream.__anext__(), timeout=_remaining(deadline))
        except asyncio.TimeoutError:
            raise _timeout(self.settings.request_timeout_s) from None
        except (RayActorError, StopAsyncIteration):
            # A replica that dies mid-stream may also just end it: without the final answer,
            # both are a broken stream.
            raise ServiceUnavailable(
                "the model replica failed while answering; retry the request",
                code="replica_failed",
            ) from None
        except ServingError:
            raise
        except Exception as exc:
            raise InternalError.logged(exc, "a streamed answer failed") from None

    # -- names and catalog ------------------------------------------------------------------
    def model_names(self, info: ModelInfo) -> tuple[str, ...]:
        return self.settings.model_names(info.model_id)

    def model_card(self, name: str, info: ModelInfo) -> ModelCard:
        return ModelCard(id=name, created=self.created, root=info.model_id)

    async def job_for(
        self,
        video_id: str,
        question: str,
        system: str | None,
        merge: MergeSettings,
        generation: GenerationConfig,
        deadline: float,
        history: tuple[Turn, ...] = (),
        time_range: Sequence[float] | None = None,
        include_kept_visual: bool = False,
    ) -> AskJob:
        """Validate everything about one question and locate its token set (with a time range:
        the chunk sets overlapping it, `serving.time_range`)."""
        video_id = checked_video_id(video_id)
        info = await self.model_info(deadline)
        try:
            merge_config = merge.to_config(info.num_layers)
        except ValueError as exc:
            raise InvalidRequest(
                str(exc), code="invalid_merge_layer", param="merge.layer"
            ) from None
        location = await asyncio.to_thread(self.catalog.locate, video_id, model_id=info.model_id)
        if location is None:
            await self._raise_unavailable(video_id, info.model_id)
        job = AskJob(
            video_id,
            location,
            question,
            system,
            merge_config,
            generation,
            history,
            include_kept_visual=include_kept_visual,
        )
        if time_range is None:
            return job
        chunks = await asyncio.to_thread(
            chunks_for_range, self.catalog, location, check_time_range(time_range)
        )
        return dataclasses.replace(
            job,
            chunks=tuple(c.location for c in chunks),
            chunks_span=(chunks[0].start_s, chunks[-1].end_s),
        )

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
                f"video {video_id!r} failed indexing: {self.failure_reason(record) or 'unknown'}",
                code="video_failed",
            )
        if record.status == VideoStatus.INTERRUPTED:
            raise VideoNotReady(
                f"indexing video {video_id!r} was interrupted; rerunning the indexing job "
                "resumes it",
                code="video_interrupted",
            )
        raise VideoNotReady(f"video {video_id!r} is still being indexed", code="video_pending")

    def failure_reason(self, record: VideoRecord) -> str | None:
        if record.error is None:
            return None
        return strip_paths(record.error, record.uri, keep_uris=self.settings.expose_source_uris)

    async def previews(self, records: list[VideoRecord]) -> list[PreviewFacts | None]:
        """The preview facts of each record's token set (None: no token set, or no preview)."""

        async def facts(record: VideoRecord) -> PreviewFacts | None:
            if record.location is None:
                return None
            key = (record.video_id, record.model_id, record.config_hash)
            return await asyncio.to_thread(read_preview_facts, self.settings.store_url, *key)

        return list(await asyncio.gather(*(facts(r) for r in records)))

    def video_info(self, record: VideoRecord, facts: PreviewFacts | None = None) -> VideoInfo:
        return VideoInfo(
            video_id=record.video_id,
            uri=record.uri if self.settings.expose_source_uris else None,
            model_id=record.model_id,
            config_hash=record.config_hash,
            status=record.status.value,
            error=self.failure_reason(record),
            attempts=record.attempts,
            visual_tokens=record.location.kept_count if record.location else None,
            bytes=record.location.length if record.location else None,
            tokens_in=facts.tokens_in if facts else None,
            frames=facts.frames if facts else None,
            duration_s=facts.duration_s if facts else None,
            indexed_at=record.indexed_at,
            updated_at=record.updated_at,
        )


def checked_video_id(video_id: str) -> str:
    try:
        return validate_video_id(video_id)
    except ValueError:
        raise InvalidRequest(
            "invalid video id: 1-128 characters from A-Z a-z 0-9 . _ - (not starting with . _ -)",
            code="invalid_video_id",
            param="video_id",
        ) from None


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _timeout(seconds: float) -> RequestTimeout:
    return RequestTimeout(
        f"the request did not finish within the server's {seconds:g} s deadline",
        code="request_timeout",
    )


async def _cancel_on_exit(response: Any) -> Any:
    """Await a `DeploymentResponse`; cancel it on the replica if we stop waiting (deadline)."""
    try:
        return await response
    except BaseException:
        response.cancel()
        raise


@contextmanager
def _question_param(param: str) -> Iterator[None]:
    """Name the request field a replica's `invalid_question` error is about."""
    try:
        yield
    except InvalidRequest as exc:
        if exc.code == "invalid_question" and not exc.param:
            raise InvalidRequest(exc.message, code=exc.code, param=param) from None
        raise


# -- the HTTP endpoints ---------------------------------------------------------------------------

router = APIRouter()


def server_of(request: Request) -> ApiServer:
    """The `ApiServer` whose FastAPI app serves this request (see `create_api`)."""
    return request.app.state.server


def record_of(request: Request) -> RequestRecord:
    record = request_record(request.scope)
    if record is None:  # the app without its middleware (never in the service)
        record = RequestRecord("-", request.method, request.url.path)
    return record


Server = Annotated[ApiServer, Depends(server_of)]
Record = Annotated[RequestRecord, Depends(record_of)]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of an endpoint, for the OpenAPI document."""
    what = {
        400: "invalid request (`param` names the field)",
        401: "missing or wrong API key",
        404: "unknown video or model",
        409: "the video has no usable token set (failed, pending, interrupted, other model)",
        500: "internal error (the message names an incident id in the server log)",
        503: "no model replica answers, or the queue is full (`Retry-After`)",
        504: "the request passed the server's deadline",
    }
    return {s: {"model": ErrorResponse, "description": what[s]} for s in (401, *statuses, 500)}


@router.get("/healthz", tags=["service"])
async def healthz() -> dict[str, str]:
    """Liveness: the HTTP layer runs. Whether questions can be answered: `/readyz`."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["service"],
    responses={503: {"model": ErrorResponse, "description": "no model replica answers"}},
)
async def readyz(server: Server) -> Response:
    """Readiness: at least one model replica answers."""
    if await server.ready():
        return JSONResponse({"status": "ready"})
    not_ready = ServiceUnavailable(
        "no model replica answers yet",
        code="not_ready",
        retry_after_s=server.settings.retry_after_s,
    )
    return error_response(not_ready)


@router.get("/v1/models", response_model=ModelList, tags=["service"], responses=errors(503, 504))
async def list_models(server: Server) -> ModelList:
    info = await server.model_info(server.deadline())
    return ModelList(data=[server.model_card(name, info) for name in server.model_names(info)])


@router.get(
    "/v1/models/{model:path}",
    response_model=ModelCard,
    tags=["service"],
    responses=errors(404, 503, 504),
)
async def get_model(server: Server, model: str) -> ModelCard:
    info = await server.model_info(server.deadline())
    if model not in server.model_names(info):
        raise NotFound(f"model {model!r} is not served here", code="model_not_found", param="model")
    return server.model_card(model, info)


@router.get("/v1/videos", response_model=VideoList, tags=["videos"], responses=errors(400))
async def list_videos(
    server: Server,
    status: str | None = Query(default=None, pattern="^(pending|indexed|failed|interrupted)$"),
    search: str | None = Query(
        default=None,
        max_length=256,
        description="substring of the video id (or of the source URI, when URIs are exposed)",
    ),
    limit: int = Query(default=100, ge=1, le=MAX_LIST_LIMIT),
    offset: int = Query(default=0, ge=0, le=MAX_LIST_OFFSET),
) -> VideoList:
    # Source URIs are searched only where they are shown: else a search would be an oracle.
    uris = server.settings.expose_source_uris
    catalog = server.catalog
    records, total = await asyncio.gather(
        asyncio.to_thread(
            catalog.list_videos, status, search, limit=limit, offset=offset, search_uris=uris
        ),
        asyncio.to_thread(catalog.count_videos, status, search, search_uris=uris),
    )
    facts = await server.previews(records)
    data = [server.video_info(r, f) for r, f in zip(records, facts, strict=True)]
    return VideoList(data=data, total=total, limit=limit, offset=offset)


@router.get(
    "/v1/videos/{video_id}", response_model=VideoInfo, tags=["videos"], responses=errors(400, 404)
)
async def get_video(server: Server, record: Record, video_id: str) -> VideoInfo:
    record.video_id = video_id = checked_video_id(video_id)
    found = await asyncio.to_thread(server.catalog.get_video, video_id)
    if found is None:
        raise NotFound(f"video {video_id!r} not found", code="video_not_found")
    [facts] = await server.previews([found])
    return server.video_info(found, facts)


async def _indexed_record(server: ApiServer, video_id: str) -> VideoRecord:
    """The video's status row that has a token set (404 unknown, 409 none usable)."""
    video_id = checked_video_id(video_id)
    found = await asyncio.to_thread(server.catalog.get_video, video_id)
    if found is None:
        raise NotFound(f"video {video_id!r} not found", code="video_not_found")
    if found.location is None:
        reason = "failed indexing" if found.status == VideoStatus.FAILED else "is not indexed yet"
        raise VideoNotReady(f"video {video_id!r} {reason}", code=f"video_{found.status.value}")
    return found


@router.get(
    "/v1/videos/{video_id}/thumbnail",
    tags=["videos"],
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the sampled frames side by side"},
        **errors(400, 404, 409),
    },
)
async def get_thumbnail(server: Server, record: Record, video_id: str) -> Response:
    """The video's preview made at indexing: its sampled frames side by side, one JPEG (the
    first frame is the thumbnail; the console draws the tokens' fates over each frame)."""
    record.video_id = video_id
    found = await _indexed_record(server, video_id)
    key = (found.video_id, found.model_id, found.config_hash)
    jpeg = await asyncio.to_thread(read_preview_jpeg, server.settings.store_url, *key)
    if jpeg is None:
        raise NotFound(f"video {found.video_id!r} has no preview", code="preview_not_found")
    return Response(
        jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"}
    )


@router.get(
    "/v1/videos/{video_id}/tokens",
    response_model=TokenSetView,
    tags=["videos"],
    responses=errors(400, 404, 409),
)
async def get_token_layout(
    server: Server,
    record: Record,
    video_id: str,
    frame_start: int = Query(
        default=0, ge=0, description="the window's first sampled frame (0-based, < frames_total)"
    ),
    frame_count: int = Query(
        default=MAX_VIEW_FRAMES,
        ge=1,
        le=MAX_VIEW_FRAMES,
        description=f"frames in the window (at most {MAX_VIEW_FRAMES}; fewer at the end)",
    ),
) -> TokenSetView:
    """Where the tokens of one window of the video's sampled frames went in the outer stage (no
    token values): what the console draws as Fig. S3, and the rows `kept_visual` of an answer
    refer to (Fig. S2). The default window is the first `MAX_VIEW_FRAMES` frames (a short
    video's whole), so a response is bounded whatever the video's length."""
    record.video_id = video_id
    found = await _indexed_record(server, video_id)
    try:
        token_set = await asyncio.to_thread(read_token_set, found.location)
    except TokenSetReadError as exc:
        logger.error("cannot read the token set of %s: %s", found.video_id, exc)
        raise ServingError(
            f"the token set of video {found.video_id!r} could not be read from the store "
            "(missing or corrupt); re-index the video",
            code="token_set_unreadable",
        ) from None
    return token_set_view(found.video_id, token_set, frame_start, frame_count)


def view_panels(token_set: TokenSet) -> tuple[int, int]:
    """(panels, frames per grid step) a viewer lays the token set out on: one panel per sampled
    frame, each grid step covering `frames / T` of them (Qwen2.5-VL: 2); one panel per grid
    step when the frames are not recorded or do not split evenly over the steps (as
    `jobs.visualize.render.frames_per_step` refuses them)."""
    steps, frames = token_set.grid[0], token_set.frame_count
    if frames and frames % steps == 0:
        return frames, frames // steps
    return steps, 1


def token_set_view(
    video_id: str, token_set: TokenSet, frame_start: int = 0, frame_count: int = MAX_VIEW_FRAMES
) -> TokenSetView:
    """The `TokenSetView` of the frames [frame_start, frame_start + frame_count) (clipped at the
    end); a `frame_start` past the last frame is a 400 naming it."""
    panels, per_step = view_panels(token_set)
    if not 0 <= frame_start < panels:
        raise InvalidRequest(
            f"frame_start must be below the video's {panels} frames, got {frame_start}",
            code="frame_start_out_of_bounds",
            param="frame_start",
        )
    frame_end = min(frame_start + frame_count, panels)
    step_start, step_end = frame_start // per_step, -(-frame_end // per_step)
    _, height, width = token_set.grid
    # The rows the window's tokens point to, and those centred in its steps (so a whole-video
    # window lists every row, and a set without assignment still shows its kept tokens).
    steps = token_set.index[:, 0].cpu()
    in_window = (steps >= step_start) & (steps < step_end)
    assignment = None
    if token_set.assignment is not None:
        cells = token_set.assignment.cpu()[step_start * height * width : step_end * height * width]
        assignment = cells.tolist()
        in_window[cells[cells >= 0].long()] = True
    rows = torch.nonzero(in_window).flatten()
    recorded = panels == token_set.frame_count  # else the panels are grid steps, not frames
    stamps = token_set.frame_timestamps[frame_start:frame_end] if recorded else ()
    return TokenSetView(
        video_id=video_id,
        model_id=token_set.model_id,
        config_hash=token_set.config_hash,
        method=token_set.config.method,
        retention_ratio=token_set.config.retention_ratio,
        grid=list(token_set.grid),
        frames=token_set.frame_count,
        frames_total=panels,
        frames_per_step=per_step,
        frame_start=frame_start,
        frame_count=frame_end - frame_start,
        step_start=step_start,
        step_count=step_end - step_start,
        frame_timestamps=list(stamps),
        original_count=token_set.original_count,
        kept_count=token_set.kept_count,
        assignment=assignment,
        rows=rows.tolist(),
        kind=token_set.kind.cpu()[rows].tolist(),
        index=token_set.index.cpu()[rows].tolist(),
        size=token_set.size.cpu()[rows].tolist(),
    )


@router.get("/v1/runs", response_model=RunList, tags=["videos"], responses=errors(400))
async def list_runs(
    server: Server,
    limit: int = Query(default=20, ge=1, le=MAX_LIST_LIMIT),
    offset: int = Query(default=0, ge=0, le=MAX_LIST_OFFSET),
) -> RunList:
    """Recent indexing runs, newest first, with their counts and settings."""
    runs = await asyncio.to_thread(server.catalog.list_runs, limit, offset)
    data = []
    for summary in runs:
        row = run_row(summary)
        if not server.settings.expose_source_uris:
            row["settings"] = {k: v for k, v in row["settings"].items() if k != "source"}
        data.append(RunInfo(**row))
    return RunList(data=data, limit=limit, offset=offset)


@router.post(
    "/v1/videos/{video_id}/ask",
    response_model=AskResponse,
    tags=["questions"],
    responses=errors(400, 404, 409, 503, 504),
)
async def ask(server: Server, record: Record, video_id: str, body: AskRequest) -> AskResponse:
    """Answer one question about one indexed video, with token counts, FLOPs and timings."""
    started, deadline = time.perf_counter(), server.deadline()
    record.video_id = video_id
    generation = body.generation_config()
    job = await server.job_for(
        video_id,
        body.question,
        body.system,
        body.merge,
        generation,
        deadline,
        time_range=body.time_range,
        include_kept_visual=body.include_kept_visual,
    )
    response = await server.ask(job, deadline, param="question")
    response.timings.total_s = time.perf_counter() - started
    record.response = response
    return response


@router.post("/v1/chat/completions", tags=["questions"], responses=errors(400, 404, 409, 503, 504))
async def chat_completions(server: Server, record: Record, body: ChatCompletionRequest) -> Response:
    """OpenAI-compatible; the video is named by a `tokenreel://VIDEO_ID` video_url part or the
    `video_id` field. `stream: true` answers with server-sent events."""
    started, deadline = time.perf_counter(), server.deadline()
    record.stream = body.stream
    info = await server.model_info(deadline)
    if body.model not in server.model_names(info):
        raise NotFound(
            f"model {body.model!r} is not served here; GET /v1/models lists the names",
            code="model_not_found",
            param="model",
        )
    record.model = body.model
    chat = openai_compat.chat_question(body)
    record.video_id = chat.video_id
    job = await server.job_for(
        chat.video_id,
        chat.question,
        chat.system,
        chat.merge,
        chat.generation,
        deadline,
        history=chat.history,
        time_range=chat.time_range,
        include_kept_visual=body.include_kept_visual,
    )
    request_id = openai_compat.completion_id()
    if not body.stream:
        response = await server.ask(job, deadline, param="messages")
        response.timings.total_s = time.perf_counter() - started
        record.response = response
        return JSONResponse(openai_compat.completion_body(response, request_id, body.model))
    first, stream = await server.ask_stream(job, deadline, param="messages")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _chat_events(
        server, record, first, stream, request_id, body.model, include_usage, started, deadline
    )
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def _chat_events(
    server: ApiServer,
    record: RequestRecord,
    first: Any,
    stream: DeploymentResponseGenerator,
    request_id: str,
    model: str,
    include_usage: bool,
    started: float,
    deadline: float,
) -> AsyncIterator[str]:
    """SSE chunks: the role, each text piece as decoded, the finish reason, (usage), [DONE].

    A failure after the first chunk (the 200 is sent) ends the stream with an OpenAI-style error
    event, which the `openai` client raises as an `APIError`, and counts as a broken stream."""
    yield openai_compat.sse(openai_compat.chunk(request_id, model, {"role": "assistant"}))
    item, finished = first, False
    try:
        while not isinstance(item, AskResponse):
            yield openai_compat.sse(openai_compat.chunk(request_id, model, {"content": item}))
            item = await server.next_item(stream, deadline)
        item.timings.total_s = time.perf_counter() - started
        record.response = item
        figures = {"tokenreel": openai_compat.figures(item)}
        yield openai_compat.sse(
            openai_compat.chunk(
                request_id, model, {}, finish_reason=item.finish_reason, extra=figures
            )
        )
        if include_usage:
            usage = {"usage": openai_compat.usage(item)}
            yield openai_compat.sse(openai_compat.chunk(request_id, model, None, extra=usage))
        finished = True
    except ServingError as error:
        finished = True
        stream.cancel()
        record.fail_stream(error)
        server.metrics.record_stream_broken(error.code or error.error_type)
        yield openai_compat.sse(error.body())
    finally:
        if not finished:  # the client hung up: stop generating on the model replica too
            stream.cancel()
    yield openai_compat.SSE_DONE


# -- the application --------------------------------------------------------------------------


def create_api(server: ApiServer) -> FastAPI:
    """The FastAPI app of one `ApiServer` replica: the endpoints above, answering for `server`."""
    api = FastAPI(title="tokenreel", description=API_DESCRIPTION, version="0.1.0")
    api.state.server = server
    install_error_handlers(api)
    api.add_middleware(RequestMiddleware, metrics=server.metrics, key_digest=server.key_digest)
    api.include_router(router)
    api.include_router(console.router)
    api.openapi = lambda: openapi_document(api, bearer=server.key_digest is not None)  # type: ignore[method-assign]
    return api


def openapi_document(api: FastAPI, *, bearer: bool) -> dict[str, Any]:
    """FastAPI's document, plus (with an API key) the bearer scheme on every authenticated
    operation, so Swagger UI's Authorize button sends the key."""
    if api.openapi_schema is None:
        document = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        if bearer:
            components = document.setdefault("components", {})
            components["securitySchemes"] = {
                BEARER_SCHEME: {"type": "http", "scheme": "bearer", "description": "the API key"}
            }
            for path, operations in document["paths"].items():
                for operation in operations.values():
                    public = path in UNAUTHENTICATED_PATHS
                    operation["security"] = [] if public else [{BEARER_SCHEME: []}]
        api.openapi_schema = document
    return api.openapi_schema
