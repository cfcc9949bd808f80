"""Prompt layout and letter extraction (the rules listed in jobs/choices.py)."""

from __future__ import annotations

import pytest

from jobs.eval.choices import ANSWER_INSTRUCTION, build_prompt, extract_choice

OPTIONS = ("a red ball", "a blue cube", "a green cone", "nothing")


def test_prompt_lists_lettered_options_then_the_instruction() -> None:
    prompt = build_prompt(" What is shown? ", OPTIONS)
    assert prompt.splitlines() == [
        "What is shown?",
        "A. a red ball",
        "B. a blue cube",
        "C. a green cone",
        "D. nothing",
        ANSWER_INSTRUCTION,
    ]
    with pytest.raises(ValueError):
        build_prompt("q", ["only one"])


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("B", 1),
        (" (B) ", 1),
        ("B.", 1),
        ("B) a blue cube", 1),
        ("C: a green cone", 2),
        ("D is correct", 3),
        ("The answer is B", 1),
        ("The best answer is: (C)", 2),
        ("Answer: D", 3),
        ("Best option: A", 0),
        ("I would pick option C here.", 2),
        ("It must be (A), the ball.", 0),
        ("I think it's C.", 2),
        ("a blue cube", 1),  # option text, exact
        ("The video shows a green cone rolling.", 2),  # the only option named
        ("A man holds a red ball and a blue cube.", None),  # article "A"; two options named
        ("E", None),  # a letter beyond the options
        ("", None),
        ("Everything is unclear", None),
    ],
)
def test_extract_choice(response: str, expected: int | None) -> None:
    assert extract_choice(response, OPTIONS) == expected
