"""OpenAI chat-completions compatibility: request -> one question, answer -> OpenAI bodies/chunks.

Convention for the video (documented in the README): the user message holds a content part
`{"type": "video_url", "video_url": {"url": "tokenreel://VIDEO_ID"}}`, or the request carries the
extension field `video_id` (with the official client: `extra_body={"video_id": ...}`). Merge
settings go in the extension field `merge` (same keys as the ask endpoint).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from compression.models import GenerationConfig
from serving.errors import InvalidRequest
from serving.schemas import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_QUESTION_CHARS,
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


@dataclass(frozen=True)
class ChatQuestion:
    video_id: str
    question: str
    system: str | None
    generation: GenerationConfig
    merge: MergeSettings


def _text_of(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text for part in message.content if isinstance(part, TextPart))


def _video_ids_of(message: ChatMessage) -> list[str]:
    if not isinstance(message.content, list):
        return []
    ids = []
    for part in message.content:
        if isinstance(part, VideoPart):
            url = part.video_url.url
            if not url.startswith(VIDEO_URL_SCHEME):
                raise InvalidRequest(
                    f"video_url must be {VIDEO_URL_SCHEME}VIDEO_ID (a video from GET /v1/videos)"
                )
            ids.append(url.removeprefix(VIDEO_URL_SCHEME))
    return ids


def chat_question(request: ChatCompletionRequest) -> ChatQuestion:
    """The single question a chat request asks, or `InvalidRequest` saying what is off."""
    users = [m for m in request.messages if m.role == "user"]
    if len(users) != 1 or any(m.role == "assistant" for m in request.messages):
        raise InvalidRequest(
            "send system/developer messages and exactly one user message: each request asks "
            "one question about one video (no conversation history)"
        )
    video_ids = set(_video_ids_of(users[0]))
    if request.video_id is not None:
        video_ids.add(request.video_id)
    if len(video_ids) != 1:
        raise InvalidRequest(
            "name exactly one video: a content part "
            f'{{"type": "video_url", "video_url": {{"url": "{VIDEO_URL_SCHEME}VIDEO_ID"}}}} '
            "or the field video_id"
        )
    question = _text_of(users[0]).strip()
    if not question:
        raise InvalidRequest("the user message has no text question")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidRequest(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    system = "\n\n".join(
        t for m in request.messages if m.role in ("system", "developer") if (t := _text_of(m))
    )
    if len(system) > MAX_SYSTEM_CHARS:
        raise InvalidRequest(f"the system messages are longer than {MAX_SYSTEM_CHARS} characters")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences")
    max_new_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_NEW_TOKENS
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=0.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=tuple(stop),
    )
    return ChatQuestion(
        video_id=video_ids.pop(),
        question=question,
        system=system or None,
        generation=generation,
        merge=request.merge or MergeSettings(),
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


FIGURES = {"video_id", "merge", "tokens", "flops", "timings", "cache_hit"}


def figures(response: AskResponse) -> dict[str, Any]:
    """tokenreel's figures (those of the ask endpoint) for the chat responses' extension."""
    return response.model_dump(include=FIGURES)


def usage(response: AskResponse) -> dict[str, int]:
    return {
        "prompt_tokens": response.tokens.prompt,
        "completion_tokens": response.tokens.completion,
        "total_tokens": response.tokens.prompt + response.tokens.completion,
    }


def completion_body(response: AskResponse, request_id: str) -> dict[str, Any]:
    """A `chat.completion` object; tokenreel's figures ride along under `tokenreel`."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
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
