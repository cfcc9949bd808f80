"""Chat request -> one question: the video convention, conversations, and OpenAI parameters that
are honoured or rejected by name (never ignored)."""

from __future__ import annotations

import json

import pytest

from compression.models import Turn
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


def test_a_conversation_becomes_the_history_of_the_last_question() -> None:
    chat = chat_question(
        request(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [video_part("v"), {"type": "text", "text": "Who?"}]},
                {"role": "assistant", "content": "A man."},
                {"role": "user", "content": "What does he hold?"},
            ]
        )
    )
    assert chat.video_id == "v" and chat.system == "Be brief."
    assert chat.history == (Turn("user", "Who?"), Turn("assistant", "A man."))
    assert chat.question == "What does he hold?"


@pytest.mark.parametrize(
    ("messages", "fields", "match", "param"),
    [
        ([{"role": "user", "content": "no video"}], {}, "exactly one video", "messages"),
        (
            [{"role": "user", "content": [video_part("a"), video_part("b")]}],
            {},
            "exactly one",
            "messages",
        ),
        (
            [{"role": "user", "content": [video_part("a")]}],
            {},
            "no text",
            "messages.0.content",
        ),
        (
            [{"role": "user", "content": "q"}],
            {"video_id": "a", "stop": list("abcde")},
            "stop",
            "stop",
        ),
        (
            [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q"}],
            {"video_id": "a"},
            "expected a user message",
            "messages.0.role",
        ),
        (
            [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
            {"video_id": "a"},
            "last message must be a user message",
            "messages",
        ),
        (
            [
                {"role": "user", "content": "q1"},
                {"role": "user", "content": "q2"},
            ],
            {"video_id": "a"},
            "expected a assistant message",
            "messages.1.role",
        ),
        (
            [
                {"role": "user", "content": "q1"},
                {"role": "system", "content": "late"},
                {"role": "user", "content": "q2"},
            ],
            {"video_id": "a"},
            "before the conversation",
            "messages.1.role",
        ),
        (
            [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": [video_part("a"), {"type": "text", "text": "q2"}]},
            ],
            {},
            "first user message",
            "messages.2.content",
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
            "messages.0.content",
        ),
    ],
)
def test_unsupported_requests_say_why(messages: list, fields: dict, match: str, param: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as error:
        chat_question(request(messages, **fields))
    assert error.value.param == param


ASK = [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("frequency_penalty", 0.5),
        ("presence_penalty", -1),
        ("logit_bias", {"50256": -100}),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("n", True),
        ("store", True),
        ("best_of", 2),  # not an OpenAI chat parameter at all
    ],
)
def test_parameters_that_would_be_ignored_are_rejected_by_name(name: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as error:
        chat_question(request(ASK, video_id="a", **{name: value}))
    assert error.value.param == name and error.value.code == "unsupported_parameter"
    assert name in error.value.message


def test_neutral_values_and_labels_are_accepted() -> None:
    neutral = {
        "n": 1,
        "logprobs": False,
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "user": "someone",
        "metadata": {"k": "v"},
    }
    chat = chat_question(request(ASK, video_id="a", top_k=5, **neutral))
    assert chat.generation.top_k == 5 and chat.question == "q"


def test_sse_framing() -> None:
    assert sse("[DONE]") == "data: [DONE]\n\n"
    event = sse({"a": "b\nc"})
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    assert json.loads(event[6:]) == {"a": "b\nc"}
