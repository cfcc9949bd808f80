"""OpenAI chat-completions compatibility: request -> one question (with its conversation),
answer -> OpenAI bodies/chunks.

Convention for the video (documented in the README): the first user message holds a content part
`{"type": "video_url", "video_url": {"url": "tokenreel://VIDEO_ID"}}`, or the request carries the
extension field `video_id` (with the official client: `extra_body={"video_id": ...}`). Merge
settings go in the extension field `merge` (same keys as the ask endpoint), a time range in
`time_range` ([start_s, end_s], as on the ask endpoint).

OpenAI parameters tokenreel does not implement are never ignored silently (issue 12): each is
accepted only at a value that changes nothing (`n: 1`, `logprobs: false`, `tools: []`, penalties
0, ...) and otherwise rejected with a 400 naming it; an unknown parameter is rejected too.
Parameters that only label a request for the caller (`user`, `metadata`) are accepted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compression.models import GenerationConfig, Turn
from serving.errors import InvalidRequest
from serving.schemas import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_CONVERSATION_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_SYSTEM_CHARS,
    AskResponse,
    ChatCompletionRequest,
    ChatMessage,
    MergeSettings,
    TextPart,
    VideoPart,
)

VIDEO_URL_SCHEME = "tokenreel://"


def _off(*neutral: object) -> Callable[[object], bool]:
    return lambda value: (
        value is None or any(value == n and type(value) is type(n) for n in neutral)
    )


def _empty(value: object) -> bool:
    return value is None or value == [] or value == {}


# OpenAI's (and vLLM's) parameters that change the answer, at the values where they do not.
NEUTRAL_VALUES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "n": ("1", _off(1)),
    "logprobs": ("false", _off(False)),
    "top_logprobs": ("0", _off(0)),
    "frequency_penalty": ("0", _off(0, 0.0)),
    "presence_penalty": ("0", _off(0, 0.0)),
    "repetition_penalty": ("1", _off(1, 1.0)),
    "min_p": ("0", _off(0, 0.0)),
    "logit_bias": ("{}", _empty),
    "tools": ("[]", _empty),
    "functions": ("[]", _empty),
    "tool_choice": ('"none"', _off("none", "auto")),
    "function_call": ('"none"', _off("none", "auto")),
    "parallel_tool_calls": ("a boolean (no tools)", lambda v: v is None or isinstance(v, bool)),
    "response_format": ('{"type": "text"}', lambda v: v is None or v == {"type": "text"}),
    "modalities": ('["text"]', lambda v: v is None or v == ["text"]),
    "audio": ("null", _off()),
    "prediction": ("null", _off()),
    "reasoning_effort": ("null", _off()),
    "verbosity": ("null", _off()),
    "web_search_options": ("null", _off()),
    "store": ("false", _off(False)),
    "service_tier": ('"auto"', _off("auto", "default")),
}
# Labels for the caller's own bookkeeping: they change nothing here.
LABELS = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key"})


@dataclass(frozen=True)
class ChatQuestion:
    video_id: str
    question: str
    system: str | None
    history: tuple[Turn, ...]
    generation: GenerationConfig
    merge: MergeSettings
    time_range: list[float] | None = None


def check_parameters(request: ChatCompletionRequest) -> None:
    """`InvalidRequest` naming the first parameter tokenreel would otherwise have to ignore."""
    for name, value in (request.model_extra or {}).items():
        if name in LABELS:
            continue
        if name not in NEUTRAL_VALUES:
            raise InvalidRequest(
                f"unsupported parameter {name!r}", code="unsupported_parameter", param=name
            )
        neutral, is_neutral = NEUTRAL_VALUES[name]
        if not is_neutral(value):
            raise InvalidRequest(
                f"{name!r} is not supported: only {neutral} (or leaving it out) is",
                code="unsupported_parameter",
                param=name,
            )


def _text_of(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text for part in message.content if isinstance(part, TextPart))


def _video_ids_of(message: ChatMessage, index: int) -> list[str]:
    if not isinstance(message.content, list):
        return []
    ids = []
    for part in message.content:
        if isinstance(part, VideoPart):
            url = part.video_url.url
            if not url.startswith(VIDEO_URL_SCHEME):
                raise InvalidRequest(
                    f"video_url must be {VIDEO_URL_SCHEME}VIDEO_ID (a video from GET /v1/videos)",
                    param=f"messages.{index}.content",
                )
            ids.append(url.removeprefix(VIDEO_URL_SCHEME))
    return ids


def _conversation(request: ChatCompletionRequest) -> tuple[str, list[tuple[int, ChatMessage]]]:
    """(the system text, the user/assistant messages with their indices), shape checked."""
    system_parts, turns = [], []
    for i, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            if turns:
                raise InvalidRequest(
                    "system and developer messages go before the conversation",
                    param=f"messages.{i}.role",
                )
            if text := _text_of(message):
                system_parts.append(text)
        else:
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if message.role != expected:
                raise InvalidRequest(
                    f"expected a {expected} message: after the system messages, user and "
                    "assistant messages alternate, starting and ending with a user message",
                    param=f"messages.{i}.role",
                )
            turns.append((i, message))
    if not turns or turns[-1][1].role != "user":
        raise InvalidRequest("the last message must be a user message", param="messages")
    return "\n\n".join(system_parts), turns


def chat_question(request: ChatCompletionRequest) -> ChatQuestion:
    """The question a chat request asks, with its conversation, or `InvalidRequest` saying
    what is off (and which field)."""
    check_parameters(request)
    system, turns = _conversation(request)
    video_ids = set()
    for position, (i, message) in enumerate(turns):
        ids = _video_ids_of(message, i)
        if ids and position != 0:
            raise InvalidRequest(
                "the video goes in the first user message", param=f"messages.{i}.content"
            )
        video_ids.update(ids)
    for i, message in enumerate(request.messages):
        if message.role in ("system", "developer") and _video_ids_of(message, i):
            raise InvalidRequest(
                "the video goes in the first user message", param=f"messages.{i}.content"
            )
    if request.video_id is not None:
        video_ids.add(request.video_id)
    if len(video_ids) != 1:
        raise InvalidRequest(
            "name exactly one video: a content part "
            f'{{"type": "video_url", "video_url": {{"url": "{VIDEO_URL_SCHEME}VIDEO_ID"}}}} '
            "in the first user message, or the field video_id",
            param="messages",
        )
    texts = [_text_of(message).strip() for _, message in turns]
    for (i, message), text in zip(turns, texts, strict=True):
        if message.role == "user" and not text:
            raise InvalidRequest("a user message has no text", param=f"messages.{i}.content")
    if sum(map(len, texts)) > MAX_CONVERSATION_CHARS:
        raise InvalidRequest(
            f"the conversation is longer than {MAX_CONVERSATION_CHARS} characters",
            param="messages",
        )
    if len(system) > MAX_SYSTEM_CHARS:
        raise InvalidRequest(
            f"the system messages are longer than {MAX_SYSTEM_CHARS} characters", param="messages"
        )
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
    max_new_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_NEW_TOKENS
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=0.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=request.top_k or 0,
        seed=request.seed,
        stop=tuple(stop),
    )
    history = tuple(
        Turn(message.role, text)  # type: ignore[arg-type]
        for (_, message), text in zip(turns[:-1], texts[:-1], strict=True)
    )
    return ChatQuestion(
        video_id=video_ids.pop(),
        question=texts[-1],
        system=system or None,
        history=history,
        generation=generation,
        merge=request.merge or MergeSettings(),
        time_range=request.time_range,
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


FIGURES = {"video_id", "merge", "tokens", "flops", "timings", "cache_hit", "kept_visual"}


def figures(response: AskResponse) -> dict[str, Any]:
    """tokenreel's figures (those of the ask endpoint) for the chat responses' extension;
    `kept_visual` only when asked for."""
    figures = response.model_dump(include=FIGURES)
    if figures["kept_visual"] is None:
        del figures["kept_visual"]
    return figures


def usage(response: AskResponse) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts the prompt tokens
    served from the per-video prefix cache (as OpenAI and vLLM report prompt caching)."""
    return {
        "prompt_tokens": response.tokens.prompt,
        "completion_tokens": response.tokens.completion,
        "total_tokens": response.tokens.prompt + response.tokens.completion,
        "prompt_tokens_details": {"cached_tokens": response.tokens.prompt_cached},
    }


def completion_body(response: AskResponse, request_id: str, model: str) -> dict[str, Any]:
    """A `chat.completion` object (`model`: the name the request used); tokenreel's figures
    ride along under `tokenreel`."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.answer},
                "finish_reason": response.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(response),
        "tokenreel": figures(response),
    }


def chunk(
    request_id: str,
    model: str,
    delta: dict[str, str] | None,
    *,
    finish_reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `chat.completion.chunk`; `delta=None` makes the usage-only chunk (no choices)."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    body.update(extra or {})
    return body


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")
