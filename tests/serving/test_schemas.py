"""Request limits and the merge-layer rule (default 18, lowered for shallow models)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.schemas import AskRequest, ChatCompletionRequest, MergeApplied, MergeSettings


def test_defaults_are_the_papers_and_greedy() -> None:
    request = AskRequest(question="what happens?")
    merge = request.merge.to_config(num_layers=28)
    assert (merge.method, merge.layer, merge.keep_ratio, merge.lam) == ("text_aware", 18, 0.5, 0.5)
    generation = request.generation_config()
    assert generation.greedy and generation.max_new_tokens == 64


def test_default_layer_is_lowered_for_a_shallow_model() -> None:
    assert MergeSettings().to_config(num_layers=4).layer == 3


def test_explicit_layer_beyond_the_model_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        MergeSettings(layer=4).to_config(num_layers=4)
    assert MergeSettings(layer=3).to_config(num_layers=4).layer == 3


def test_each_method_takes_its_own_published_layer_scaled() -> None:
    assert MergeSettings(method="fastv").to_config(num_layers=28).layer == 2
    assert MergeSettings(method="holitom").to_config(num_layers=28).layer == 18
    assert MergeSettings(method="fastv").to_config(num_layers=4).layer == 1


def test_a_layer_schedule_reaches_the_merge_config() -> None:
    steps = '[{"layer": 2, "keep_ratio": 0.5}, {"layer": 3, "keep_ratio": 0.25}]'
    body = f'{{"layer": 1, "later_steps": {steps}}}'
    merge = MergeSettings.model_validate_json(body).to_config(num_layers=4)
    assert merge.schedule == ((1, 0.5), (2, 0.5), (3, 0.25))
    applied = MergeApplied.of(merge)
    assert [(s.layer, s.keep_ratio) for s in applied.later_steps] == [(2, 0.5), (3, 0.25)]
    beyond = {"layer": 1, "later_steps": [{"layer": 4, "keep_ratio": 0.5}]}
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        MergeSettings.model_validate(beyond).to_config(num_layers=4)
    backwards = {"layer": 2, "later_steps": [{"layer": 1, "keep_ratio": 0.5}]}
    with pytest.raises(ValueError, match="increasing"):
        MergeSettings.model_validate(backwards).to_config(num_layers=4)


@pytest.mark.parametrize(
    "body",
    [
        {"question": ""},
        {"question": "   "},
        {"question": "x" * 4001},
        {"question": "q", "max_new_tokens": 0},
        {"question": "q", "max_new_tokens": 5000},
        {"question": "q", "temperature": -0.1},
        {"question": "q", "top_p": 0},
        {"question": "q", "merge": {"keep_ratio": 1.5}},
        {"question": "q", "merge": {"lam": -1}},
        {"question": "q", "merge": {"method": "magic"}},
        {"question": "q", "merge": {"layer": -1}},
        {"question": "q", "merge": {"later_steps": [{"layer": 2}]}},
        {"question": "q", "merge": {"later_steps": [{"layer": 2, "keep_ratio": 0.5}] * 9}},
        {"question": "q", "max_new_token": 5},  # typo: unknown fields are errors
        {"question": "q", "stop": ["a", "b", "c", "d", "e"]},
    ],
)
def test_out_of_range_requests_are_rejected(body: dict) -> None:
    with pytest.raises(ValidationError):
        AskRequest.model_validate(body)


def test_nan_is_rejected() -> None:
    with pytest.raises(ValidationError):
        AskRequest.model_validate_json('{"question": "q", "temperature": NaN}')


@pytest.mark.parametrize(
    "changes",
    [
        {"max_new_tokens": "10"},
        {"max_new_tokens": True},
        {"max_new_tokens": 10.0},
        {"temperature": "0.5"},
        {"seed": "1"},
        {"question": 5},
        {"merge": {"layer": "2"}},
        {"merge": {"keep_ratio": True}},
    ],
)
def test_ask_request_types_are_strict(changes: dict) -> None:
    with pytest.raises(ValidationError):
        AskRequest.model_validate({"question": "q", **changes})
    assert AskRequest.model_validate({"question": "q", "temperature": 1}).temperature == 1.0


@pytest.mark.parametrize(
    "changes",
    [
        {"max_tokens": "10"},
        {"max_tokens": True},
        {"temperature": "1"},
        {"stream": "yes"},
        {"messages": [{"role": "user", "content": "hi", "name": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ],
)
def test_chat_request_types_are_strict(changes: dict) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({**base, **changes})
    # Other OpenAI fields are kept aside for openai_compat to judge (test_openai_compat.py).
    kept = ChatCompletionRequest.model_validate({**base, "frequency_penalty": 0, "n": 2})
    assert kept.model_extra == {"frequency_penalty": 0, "n": 2}
