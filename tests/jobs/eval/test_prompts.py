"""The prompts lmms-eval builds: each benchmark's user text, its generation settings, and the
system turn as the tiny models' chat templates and the real checkpoints' templates render it."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.models import Question, load_video_llm
from jobs.eval.benchmarks import MultipleChoiceItem, OpenEndedItem
from jobs.eval.prompts import SYSTEM_PROMPT, generation_for, question_prompt, system_prompt

OPTIONS = ("a red ball", "a blue cube", "a green cone", "nothing")
PUBLISHED = ("A. a red ball", "B. a blue cube", "C. a green cone", "D. nothing")
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _item(benchmark: str, published: tuple[str, ...] = ()) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        benchmark, "t", "q1", Path("v.mp4"), "What is shown?", OPTIONS, 1, published
    )


@pytest.mark.parametrize(
    ("benchmark", "published", "expected"),
    [
        (
            "mvbench",
            (),
            "Question:What is shown?\nOption:\n(A) a red ball\n(B) a blue cube\n"
            "(C) a green cone\n(D) nothing\nOnly give the best option.\n",
        ),
        (
            "egoschema",
            PUBLISHED,
            "What is shown?\nA. a red ball\nB. a blue cube\nC. a green cone\nD. nothing\n"
            + INSTRUCTION,
        ),
        (
            "mlvu",
            (),
            "What is shown?\n(A) a red ball\n(B) a blue cube\n(C) a green cone\n(D) nothing\n"
            "\nOnly give the best option.\nBest option: (",
        ),
        (
            "longvideobench",
            (),
            "What is shown?\nA. a red ball\nB. a blue cube\nC. a green cone\nD. nothing\n"
            + INSTRUCTION
            + "\n",
        ),
        (
            "videomme",
            PUBLISHED,
            "Select the best answer to the following multiple-choice question based on the video "
            "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct "
            "option.\nWhat is shown?\nA. a red ball\nB. a blue cube\nC. a green cone\nD. nothing"
            "\n\n" + INSTRUCTION,
        ),
    ],
)
def test_multiple_choice_prompts_as_lmms_eval_builds_them(
    benchmark: str, published: tuple[str, ...], expected: str
) -> None:
    assert question_prompt(_item(benchmark, published)) == expected


def test_published_options_are_printed_verbatim_and_lettered_when_plain() -> None:
    odd = ("(A) a red ball", "(B) a blue cube", "(C) a green cone", "(D) nothing")
    assert "\n(B) a blue cube\n" in question_prompt(_item("videomme", odd))
    # EgoSchema's original release has plain option texts: lettered "A. " as lmms-eval's copy
    assert "\nB. a blue cube\n" in question_prompt(_item("egoschema"))


def test_activitynetqa_prompt_capitalises_and_asks_for_a_short_answer() -> None:
    item = OpenEndedItem("activitynetqa", "type 0", "v_1_0", Path("v.mp4"), "what is he DOING", "x")
    assert question_prompt(item) == (
        "What is he doing? Answer the question using a single word or phrase."
    )


def test_generation_settings_per_benchmark() -> None:
    assert generation_for("videomme").max_new_tokens == 16
    assert generation_for("longvideobench").max_new_tokens == 32
    aqa = generation_for("activitynetqa")
    assert (aqa.max_new_tokens, aqa.stop, aqa.greedy) == (64, ("ASSISTANT:",), True)
    assert generation_for("mlvu", 4).max_new_tokens == 4
    with pytest.raises(ValueError):
        generation_for("nope")


# -- the system turn, as chat templates render it ------------------------------------------------
# The checkpoints' own templates, as published with them: llava-hf/llava-onevision-qwen2-7b-ov-hf
# (its chat_template.json, also the template of transformers' LLaVA-OneVision processor tests) and
# Qwen/Qwen2.5-VL-7B-Instruct (its chat_template.json).
LLAVA_OV_HF_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>' }}{% endfor %}{# Render all video then #}{% for content "
    "in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content "
    "in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + "
    "content['text'] }}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ '\\n' + content['text'] }}"
    "{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>"
    "{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == "
    "'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' "
    "in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_MODELS: dict = {}


def _rendered(model: str, question: Question, template: str | None = None) -> str:
    """The chat prompt text the model builds for `question`, with its own chat template or
    `template`."""
    if model not in _MODELS:
        _MODELS[model] = load_video_llm(model)
    tokenizer = _MODELS[model].tokenizer
    own_template = tokenizer.chat_template
    tokenizer.chat_template = template or own_template
    try:  # prompt_ids also checks that the template places exactly one video token
        _MODELS[model].prompt_ids(question)
        return _MODELS[model].prompt_text(question)
    finally:
        tokenizer.chat_template = own_template


def test_the_system_turn_lmms_eval_gives_both_families() -> None:
    assert system_prompt("llava_onevision") == system_prompt("qwen2_5_vl") == SYSTEM_PROMPT
    assert SYSTEM_PROMPT == "You are a helpful assistant."
    assert system_prompt("other") is None


def test_tiny_llava_ov_renders_the_system_turn_as_lmms_eval_does() -> None:
    prompt = question_prompt(_item("videomme", PUBLISHED))
    text = _rendered("tiny-llava-ov", Question(None, prompt, system_prompt("llava_onevision")))
    # lmms-eval's llava_onevision: LLaVA's qwen_1_5 conversation, "<image>" where ours has the
    # video placeholder
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<video>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    # without it, the tiny template adds no system turn of its own
    assert _rendered("tiny-llava-ov", Question(None, prompt)).startswith("<|im_start|>user\n")


def test_tiny_qwen2_5_vl_renders_the_system_turn_as_lmms_eval_does() -> None:
    prompt = question_prompt(_item("mvbench"))
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|video_pad|><|vision_end|>{prompt}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    system = system_prompt("qwen2_5_vl")
    assert _rendered("tiny-qwen2.5-vl", Question(None, prompt, system)) == expected
    # the template's default system turn is the same text
    assert _rendered("tiny-qwen2.5-vl", Question(None, prompt)) == expected


def test_the_real_templates_render_the_system_turn() -> None:
    prompt = question_prompt(_item("mlvu"))
    system = system_prompt("qwen2_5_vl")
    qwen = _rendered("tiny-qwen2.5-vl", Question(None, prompt, system), QWEN2_5_VL_TEMPLATE)
    assert qwen == _rendered("tiny-qwen2.5-vl", Question(None, prompt, system))
    # The LLaVA-OneVision -hf template renders the same turns with its own whitespace (a space
    # after the role, no newline after <|im_end|>): not byte-identical to LLaVA's conversation.
    llava = _rendered("tiny-llava-ov", Question(None, prompt, SYSTEM_PROMPT), LLAVA_OV_HF_TEMPLATE)
    assert llava == (
        "<|im_start|>system \nYou are a helpful assistant.<|im_end|>"
        f"<|im_start|>user <video>\n{prompt}<|im_end|><|im_start|>assistant\n"
    )
