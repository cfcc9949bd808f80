"""Chat request -> one question: the video convention and the supported conversation shape."""

from __future__ import annotations

import json

import pytest

from serving.errors import InvalidRequest
from serving.openai_compat import chat_question, sse
from serving.schemas import ChatCompletionRequest


def request(messages: list, **fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **fields})


def video_part(video: str) -> dict:
    return {"type": "video_url", "video_url": {"url": f"tokenreel://{video}"}}


def test_video_part_text_parts_and_system_messages() -> None:
    chat = chat_question(
        request(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
                {"role": "user", "content": [video_part("abc"), {"type": "text", "text": "Why?"}]},
            ],
            max_tokens=12,
            temperature=0.7,
            seed=5,
            stop="END",
            merge={"layer": 2},
        )
    )
    assert (chat.video_id, chat.question, chat.system) == ("abc", "Why?", "Be brief.\n\nNo lists.")
    generation = chat.generation
    assert (generation.max_new_tokens, generation.temperature, generation.seed) == (12, 0.7, 5)
    assert generation.stop == ("END",)
    assert chat.merge.layer == 2


def test_video_id_field_and_greedy_default() -> None:
    chat = chat_question(request([{"role": "user", "content": "What?"}], video_id="v1"))
    assert chat.video_id == "v1" and chat.generation.greedy and chat.system is None
    same = request([{"role": "user", "content": [video_part("v1"), {"type": "text", "text": "x"}]}])
    assert chat_question(same.model_copy(update={"video_id": "v1"})).video_id == "v1"


@pytest.mark.parametrize(
    ("messages", "fields", "match"),
    [
        ([{"role": "user", "content": "no video"}], {}, "exactly one video"),
        ([{"role": "user", "content": [video_part("a"), video_part("b")]}], {}, "exactly one"),
        ([{"role": "user", "content": [video_part("a")]}], {}, "no text question"),
        ([{"role": "user", "content": "q"}], {"video_id": "a", "stop": list("abcde")}, "stop"),
        (
            [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
            ],
            {"video_id": "a"},
            "exactly one user message",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "video_url", "video_url": {"url": "http://x"}}],
                }
            ],
            {},
            "tokenreel://",
        ),
    ],
)
def test_unsupported_requests_say_why(messages: list, fields: dict, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        chat_question(request(messages, **fields))


def test_sse_framing() -> None:
    assert sse("[DONE]") == "data: [DONE]\n\n"
    event = sse({"a": "b\nc"})
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    assert json.loads(event[6:]) == {"a": "b\nc"}
