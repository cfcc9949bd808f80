"""Reading the chosen option back out of a model's answer to a multiple-choice question (the
prompts are `jobs.eval.prompts`).

`extract_choice` reads the letter robustly, in this order (first rule that answers wins):

1. the answer, after dropping a lead-in ("The answer is", "Answer:", "Best option:", ...),
   starts with a valid letter standing alone: "B", "B.", "(B)", "B) text", "B is right"
   (but "A"/"I" before a lowercase word are English words: "A man ...");
2. a letter in parentheses anywhere: "... is (C)";
3. "answer/option/choice [is|:] X" anywhere, X a valid letter ("I pick option C");
4. a valid capital letter standing alone and not starting a sentence of words ("A man ..."
   is an article, not option A): followed by end, punctuation or a closing bracket;
5. the option texts: the one option whose normalised text equals the normalised answer, else
   the one option whose text occurs in the answer (none if several do: ambiguous).

Letters beyond the number of options never count. No rule matching gives None, which scores
as wrong (and is counted apart in the predictions, so a parsing problem is visible).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from jobs.eval.benchmarks import LETTERS

# "The best answer is", "Answer:", "Best option:", "The correct choice is" ...
_LEAD_IN = re.compile(
    r"^\s*(?:the\s+)?(?:(?:best|correct|final|right)\s+)?(?:answer|option|choice)\s*(?:is\b|:)\s*",
    flags=re.IGNORECASE,
)


def _normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def _leading_letter(body: str, valid: str) -> str | None:
    """Rule 1: a letter standing alone at the start ("B", "B.", "(B)", "B) ...", "B is ...");
    "A"/"I" followed by a lowercase word are English words, not options."""
    match = re.match(rf"\(?([{valid}])(?![A-Za-z0-9'])", body)
    if match is None:
        return None
    rest = body[match.end() :]
    if match.group(1) in "AI" and re.match(r"\s+[a-z]", rest):
        return None
    return match.group(1)


def _option_text_match(response: str, options: Sequence[str]) -> int | None:
    """Rule 5: the option whose text is the answer, else the only option named in it."""
    said = _normalise(response)
    texts = [_normalise(o) for o in options]
    exact = [i for i, t in enumerate(texts) if t and t == said]
    if len(exact) == 1:
        return exact[0]
    named = [i for i, t in enumerate(texts) if t and re.search(rf"\b{re.escape(t)}\b", said)]
    return named[0] if len(named) == 1 else None


def extract_choice(response: str, options: Sequence[str]) -> int | None:
    """The index of the option the response picks, or None (rules in the module docstring)."""
    valid = LETTERS[: len(options)]
    text = response.strip()
    letter = _leading_letter(_LEAD_IN.sub("", text, count=1), valid)
    if letter is None:
        for pattern in (
            rf"\(([{valid}])\)",
            rf"(?i:answer|option|choice)\s*(?:is|:)?\s*\(?([{valid}])(?![A-Za-z0-9'])",
            rf"(?<![A-Za-z0-9'])([{valid}])(?=\s*$|[).,:;!?\]])",
        ):
            match = re.search(pattern, text)
            if match:
                letter = match.group(1)
                break
    if letter is not None:
        return valid.index(letter)
    return _option_text_match(text, options)
