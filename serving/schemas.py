"""Request and response bodies of the HTTP API, with the limits every request is held to.

Requests are strict: unknown fields are errors on tokenreel's own endpoints (a typo such as
`max_new_token` is a 400, not a silently ignored setting), and values keep their JSON types
(`"10"` or `true` is not an integer). The OpenAI-compatible request keeps OpenAI's other fields
aside for `serving.openai_compat` to honour or reject by name, never to ignore silently.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compression.config import INNER_METHODS, MergeConfig, default_merge_layer
from compression.models import GenerationConfig

MAX_QUESTION_CHARS = 4000
MAX_SYSTEM_CHARS = 4000
MAX_NEW_TOKENS = 1024
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_MESSAGES = 16
MAX_CONVERSATION_CHARS = 16000
MAX_TOP_K = 1000
MAX_LIST_LIMIT = 500
MAX_LIST_OFFSET = 10**9
MAX_VIEW_FRAMES = 64  # frames of one GET /v1/videos/{id}/tokens window (its default too)
MAX_MERGE_STEPS = 8
DEFAULT_MAX_NEW_TOKENS = 64

InnerMethodName = Literal["text_aware", "fastv", "holitom", "none"]
assert set(InnerMethodName.__args__) == set(INNER_METHODS)  # keep in step with compression

StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class MergeStep(_Strict):
    """One further step of a layer schedule."""

    layer: int = Field(ge=0, le=1024)
    keep_ratio: float = Field(gt=0.0, le=1.0)


class MergeSettings(_Strict):
    """The merge inside the LLM at decoder layer K (METHOD.md sections 5 and 8); paper defaults.

    method: "text_aware" (the paper's), "fastv", "holitom" or "none".
    layer: K. Left out, it is `compression.default_merge_layer` of the model for the method (its
    published K of 28 layers at the same relative depth); an explicit K outside [0, layers - 1]
    is a 400.
    later_steps: a layer schedule's further steps (Fig. S1), each keeping `keep_ratio` of the
    visual tokens that reach its `layer` (see `compression.MergeConfig`).
    """

    method: InnerMethodName = "text_aware"
    layer: int | None = Field(default=None, ge=0, le=1024)
    keep_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    lam: float = Field(default=0.5, ge=0.0, le=1.0)
    later_steps: list[MergeStep] = Field(default_factory=list, max_length=MAX_MERGE_STEPS)

    def to_config(self, num_layers: int) -> MergeConfig:
        layer = default_merge_layer(num_layers, self.method) if self.layer is None else self.layer
        for step_layer in (layer, *(step.layer for step in self.later_steps)):
            if step_layer >= num_layers:
                raise ValueError(
                    f"merge layers must be in [0, {num_layers - 1}] for this model "
                    f"({num_layers} decoder layers), got {step_layer}"
                )
        return MergeConfig(
            method=self.method,
            layer=layer,
            keep_ratio=self.keep_ratio,
            lam=self.lam,
            later_steps=tuple((step.layer, step.keep_ratio) for step in self.later_steps),
        )


class _GenerationFields(BaseModel):
    """Decoding settings shared by the ask endpoint (greedy by default: reproducible answers)."""

    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[StopSequence] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)


# [start_s, end_s] of a question over a time range (issue 14; `serving.time_range` checks it
# against the indexed chunks). Numbers, JSON ints included (strict mode takes ints as floats).
TimeRange = Annotated[list[float], Field(min_length=2, max_length=2)]
TIME_RANGE_DESCRIPTION = (
    "[start_s, end_s]: answer over the chunks of a video indexed with --chunk-seconds that "
    "overlap this range (0 <= start_s < end_s)"
)


class AskRequest(_Strict, _GenerationFields):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    system: str | None = Field(default=None, min_length=1, max_length=MAX_SYSTEM_CHARS)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    time_range: TimeRange | None = Field(default=None, description=TIME_RANGE_DESCRIPTION)
    include_kept_visual: bool = Field(
        default=False, description="also answer with `kept_visual` (what layer K kept)"
    )

    _question_not_blank = field_validator("question", "system")(_not_blank)

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(self.stop),
        )


class TokenCounts(BaseModel):
    original_visual: int = Field(description="tokens of the whole video before compression (N)")
    visual_in: int = Field(description="visual tokens that entered the LLM (the token set)")
    visual_after_merge: int = Field(description="visual tokens left after the merge at layer K")
    prompt: int = Field(description="prompt length in tokens, visual tokens included")
    completion: int = Field(description="generated tokens")
    prompt_cached: int = Field(
        0,
        description="prompt tokens (system prompt and video) whose states came from the "
        "replica's per-video prefix cache instead of being prefilled again",
    )


class FlopsFigures(BaseModel):
    """LLM FLOPs (Eq. S3) of this answer relative to the same question over all the video's
    original tokens with no merge; both figures assume the paper's 100 generated tokens."""

    ratio_visual_only: float = Field(description="paper convention: n_i counts visual tokens only")
    ratio_with_text: float = Field(description="n_i counts visual and text tokens")
    flops_visual_only: float
    flops_with_text: float
    baseline_flops_visual_only: float
    baseline_flops_with_text: float


class Timings(BaseModel):
    queue_s: float = Field(description="waiting for a batch slot on the model replica")
    load_s: float = Field(description="fetching the token set (cache or store)")
    prefill_s: float
    decode_s: float
    total_s: float = Field(description="end to end inside the service")


class MergeApplied(BaseModel):
    method: InnerMethodName
    layer: int
    keep_ratio: float
    lam: float
    later_steps: list[MergeStep]

    @classmethod
    def of(cls, merge: MergeConfig) -> MergeApplied:
        steps = [MergeStep(layer=layer, keep_ratio=ratio) for layer, ratio in merge.later_steps]
        return cls(
            method=merge.method,
            layer=merge.layer,
            keep_ratio=merge.keep_ratio,
            lam=merge.lam,
            later_steps=steps,
        )


class AskResponse(BaseModel):
    video_id: str
    model: str
    answer: str
    finish_reason: Literal["stop", "length"]
    merge: MergeApplied
    tokens: TokenCounts
    flops: FlopsFigures
    timings: Timings
    cache_hit: bool = Field(description="the token set was already in the replica's memory")
    batch_size: int = Field(
        description="questions in the running batch right after this one joined it (continuous "
        "batching; the static path: questions answered in the same forward pass)"
    )
    kept_visual: list[int] | None = Field(
        default=None,
        description="rows of the token set the merge kept after its last step (Fig. S2), "
        "numbered as `assignment` and `rows` of GET /v1/videos/{id}/tokens number them (with a "
        "time range: rows of the token set built for the range); only with "
        "`include_kept_visual`, null when no merge ran",
    )


class VideoInfo(BaseModel):
    """A video under one (model, compression config): one catalog status row."""

    video_id: str
    uri: str | None = Field(
        description="the source URI; null unless the server exposes them (--expose-source-uris)"
    )
    model_id: str
    config_hash: str
    status: Literal["pending", "indexed", "failed", "interrupted"] = Field(
        description="interrupted: the indexing run stopped before it; a rerun resumes it"
    )
    error: str | None = Field(description="why indexing failed (status failed), paths removed")
    attempts: int = Field(description="failed indexing attempts so far")
    visual_tokens: int | None = Field(description="tokens in the stored token set (indexed)")
    bytes: int | None = Field(default=None, description="size of the stored token set")
    tokens_in: int | None = Field(
        default=None, description="tokens before compression (from the preview; null: none)"
    )
    frames: int | None = Field(default=None, description="sampled frames (from the preview)")
    duration_s: float | None = Field(
        default=None, description="last sampled timestamp, about the video's length (preview)"
    )
    indexed_at: datetime | None
    updated_at: datetime


class TokenSetView(BaseModel):
    """What a viewer needs to draw each token's fate (Figs. S2/S3) over one window of the sampled
    frames: no token values. Token cell i of the window (i = ((t - step_start) * H + h) * W + w,
    original order) is represented by row `assignment[i]` of the token set (-1: dropped); the
    window's rows are listed in `rows` (ascending), and row `rows[j]` is a `kind[j]` token (0
    selected, 1 cluster) at grid position `index[j]` (a cluster's centre) standing for `size[j]`
    original tokens. Rows of an answer's `kept_visual` are rows of this token set.

    Decision (issue 16): a long video (hours, thousands of sampled frames) is viewed one window of
    at most `MAX_VIEW_FRAMES` frames at a time, so a response stays bounded whatever the video's
    length: `assignment` covers only the grid steps the window's frames fall in, and `rows` only
    the rows those tokens point to plus the rows centred in those steps. A short video's first
    window is the whole video: then `rows` is 0..kept_count-1 and every field reads as it did
    before windows (`kind[r]` is row r's kind)."""

    video_id: str
    model_id: str
    config_hash: str
    method: str
    retention_ratio: float
    grid: list[int] = Field(description="(T, H, W) of the full token grid")
    frames: int = Field(description="sampled frames (0: not recorded); T divides it")
    frames_total: int = Field(
        description="the frames a window is taken from: `frames`, or T (one panel per grid "
        "step) when the sampled frames are not recorded or do not split evenly over T"
    )
    frames_per_step: int = Field(description="frames one grid step covers (Qwen2.5-VL: 2)")
    frame_start: int = Field(description="the window's first frame (0-based)")
    frame_count: int = Field(description="frames in the window (fewer than asked at the end)")
    step_start: int = Field(description="the first grid step the window's frames fall in")
    step_count: int = Field(description="grid steps `assignment` covers")
    frame_timestamps: list[float] = Field(
        description="seconds of the window's frames (empty when the panels are grid steps)"
    )
    original_count: int = Field(description="original tokens of the whole video")
    kept_count: int = Field(description="rows of the whole token set")
    assignment: list[int] | None = Field(
        description="the row of each original token of the window's steps (-1: dropped); "
        "null: made before fates were kept"
    )
    rows: list[int] = Field(description="the token-set rows `kind`, `index`, `size` describe")
    kind: list[int]
    index: list[list[int]]
    size: list[int]


class RunInfo(BaseModel):
    """An indexing run: state running / finished / interrupted, its counts (final, or live
    while running) and its settings (the source only when the server shows source URIs)."""

    run_id: str
    state: Literal["running", "finished", "interrupted"]
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    settings: dict[str, Any]


class RunList(BaseModel):
    data: list[RunInfo]
    limit: int
    offset: int


class VideoList(BaseModel):
    data: list[VideoInfo]
    total: int
    limit: int
    offset: int


# -- OpenAI-compatible chat completions --------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_QUESTION_CHARS)


class VideoUrl(_Strict):
    url: str = Field(max_length=512)


class VideoPart(_Strict):
    """A video from the catalog: `{"type": "video_url", "video_url": {"url": "tokenreel://ID"}}`."""

    type: Literal["video_url"]
    video_url: VideoUrl


ContentPart = Annotated[TextPart | VideoPart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _bounded(cls, value: str | list[Any] | None) -> str | list[Any] | None:
        if isinstance(value, str) and len(value) > MAX_QUESTION_CHARS:
            raise ValueError(f"at most {MAX_QUESTION_CHARS} characters")
        if isinstance(value, list) and len(value) > 8:
            raise ValueError("at most 8 content parts")
        return value


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body. Extensions: `video_id` (instead of a video part), `merge`,
    `time_range` (issue 14) and vLLM's `top_k`.

    Conversation shape (decision): system/developer messages first, then user and assistant
    messages alternating, starting and ending with a user message; the video belongs to the
    first user message. OpenAI's other fields are kept in `model_extra`: `serving.openai_compat`
    accepts each only at a value that changes nothing and rejects the rest by name.
    """

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    video_id: str | None = Field(default=None, max_length=128)
    merge: MergeSettings | None = None
    time_range: TimeRange | None = Field(default=None, description=TIME_RANGE_DESCRIPTION)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=MAX_TOP_K)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: StopSequence | list[StopSequence] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    include_kept_visual: bool = False  # tokenreel's: `kept_visual` with the figures


class ModelCard(BaseModel):
    id: str = Field(description="a name this server answers to (`model` in requests)")
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tokenreel"
    root: str = Field(description="the model behind the name (the id token sets are keyed by)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None


class ErrorResponse(BaseModel):
    """Every error: OpenAI's shape."""

    error: ErrorDetail
