"""Letter extraction (the rules listed in jobs/eval/choices.py)."""

from __future__ import annotations

import pytest

from jobs.eval.choices import extract_choice

OPTIONS = ("a red ball", "a blue cube", "a green cone", "nothing")


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
        ("A) a red ball", 0),  # MLVU's prompt ends in "Best option: (": the answer closes it
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
