"""What each benchmark is asked, as lmms-eval asks LLaVA-OneVision and Qwen2.5-VL.

The evaluation the paper follows (METHOD.md section 8) is lmms-eval's: per task, its
`doc_to_text` builds the user text from the task's default pre/post prompt (neither
`llava_onevision` nor `qwen2_5_vl` has model-specific prompt settings in these tasks), its
`generation_kwargs` set the decoding, and the model wraps the text in its chat markup with a
system turn. This module writes those texts and settings down; the strings are the protocol's
own (a score is only comparable when the model read the same bytes), the code is ours.

User text per benchmark (``q`` the question, options lettered A, B, ...):

* MVBench: ``"Question:" q "\\nOption:\\n"``, one ``"(A) option\\n"`` per option, then
  ``"Only give the best option.\\n"`` (the same post prompt for all 20 tasks).
* EgoSchema: ``q``, each option as published on its own line (``"\\nA. option"``), then
  ``"\\nAnswer with the option's letter from the given choices directly."``.
* MLVU (dev): lmms-eval's copy of MLVU carries the options inside its question field as one
  ``"(A) option"`` line each, ending with a newline; the post prompt is ``"\\nOnly give the best
  option.\\nBest option: ("``. We rebuild that question field from MLVU's own candidates.
* LongVideoBench (``longvideobench_val_v``, no subtitles): ``q``, ``"\\nA. option"`` lines, then
  ``"\\nAnswer with the option's letter from the given choices directly.\\n"``.
* VideoMME (no subtitles): a fixed preamble, ``"\\n" q "\\n"``, the options as published
  (``"A. option"``) one per line, then ``"\\n"`` and the post prompt ``"\\nAnswer with the
  option's letter from the given choices directly."`` (so a blank line before it). The preamble
  mentions subtitles although none are given: lmms-eval's text, kept as is.
* ActivityNet-QA: ``q.capitalize() + "?"`` (lmms-eval's; Python's capitalize lowercases the
  rest), then ``" Answer the question using a single word or phrase."``.

Generation (greedy): at most 16 new tokens, LongVideoBench 32, ActivityNet-QA 64 with
lmms-eval's stop string "ASSISTANT:". `--max-new-tokens` overrides the length for every
benchmark.

The system turn: lmms-eval's `llava_onevision` renders LLaVA's ``qwen_1_5`` conversation, whose
system turn is "You are a helpful assistant.", and its `qwen2_5_vl` passes the same text as an
explicit system message (which Qwen2.5-VL's chat template would also add by default). So the
evaluator asks every question with ``Question.system = "You are a helpful assistant."`` and the
model's chat template renders it. Where the checkpoint's template renders that turn differently
from LLaVA's conversation (the LLaVA-OneVision -hf template puts a space after the role and no
newline after ``<|im_end|>``), the difference is the template's; tests pin what each template
renders.
"""

from __future__ import annotations

from collections.abc import Sequence

from compression.models import GenerationConfig
from jobs.eval.benchmarks import LETTERS, Item, MultipleChoiceItem, OpenEndedItem

SYSTEM_PROMPT = "You are a helpful assistant."
# The model families whose lmms-eval model class sends SYSTEM_PROMPT (see the module docstring).
SYSTEM_PROMPTS: dict[str, str] = {
    "llava_onevision": SYSTEM_PROMPT,
    "qwen2_5_vl": SYSTEM_PROMPT,
}

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MVBENCH_POST_PROMPT = "Only give the best option.\n"
MLVU_POST_PROMPT = "\nOnly give the best option.\nBest option: ("
VIDEOMME_PREAMBLE = (
    "Select the best answer to the following multiple-choice question based on the video and "
    "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
)
ACTIVITYNETQA_POST_PROMPT = " Answer the question using a single word or phrase."

# lmms-eval's generation_kwargs per task: max_new_tokens, and "until" stop strings.
MAX_NEW_TOKENS: dict[str, int] = {
    "mvbench": 16,
    "egoschema": 16,
    "mlvu": 16,
    "longvideobench": 32,
    "videomme": 16,
    "activitynetqa": 64,
}
STOP_STRINGS: dict[str, tuple[str, ...]] = {"activitynetqa": ("ASSISTANT:",)}


def system_prompt(family: str) -> str | None:
    """The system turn lmms-eval gives a model of this family; None leaves it to the template."""
    return SYSTEM_PROMPTS.get(family)


def _lettered(options: Sequence[str], style: str) -> list[str]:
    """ "A. option" (style ".") or "(A) option" (style "()") lines."""
    if style == ".":
        return [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return [f"({LETTERS[i]}) {option}" for i, option in enumerate(options)]


def _as_published(item: MultipleChoiceItem) -> list[str]:
    """The options as the annotation prints them ("A. option"), lettered here when it does not."""
    return list(item.published_options) or _lettered(item.options, ".")


def multiple_choice_prompt(item: MultipleChoiceItem) -> str:
    """The user text lmms-eval builds for one multiple-choice question (module docstring)."""
    q = item.question
    if item.benchmark == "mvbench":
        options = "".join(line + "\n" for line in _lettered(item.options, "()"))
        return f"Question:{q}\nOption:\n{options}{MVBENCH_POST_PROMPT}"
    if item.benchmark == "egoschema":
        options = "".join("\n" + line for line in _as_published(item))
        return f"{q}{options}\n{LETTER_INSTRUCTION}"
    if item.benchmark == "mlvu":
        question_field = q + "\n" + "".join(line + "\n" for line in _lettered(item.options, "()"))
        return question_field + MLVU_POST_PROMPT
    if item.benchmark == "longvideobench":
        options = "\n".join(_lettered(item.options, "."))
        return f"{q}\n{options}\n{LETTER_INSTRUCTION}\n"
    if item.benchmark == "videomme":
        options = "\n".join(_as_published(item))
        return f"{VIDEOMME_PREAMBLE}\n{q}\n{options}\n\n{LETTER_INSTRUCTION}"
    raise ValueError(f"no multiple-choice prompt for benchmark {item.benchmark!r}")


def open_ended_prompt(item: OpenEndedItem) -> str:
    """The user text lmms-eval builds for one ActivityNet-QA question."""
    if item.benchmark != "activitynetqa":
        raise ValueError(f"no open-ended prompt for benchmark {item.benchmark!r}")
    return item.question.capitalize() + "?" + ACTIVITYNETQA_POST_PROMPT


def question_prompt(item: Item) -> str:
    """The user text of any item."""
    if isinstance(item, MultipleChoiceItem):
        return multiple_choice_prompt(item)
    return open_ended_prompt(item)


def generation_for(benchmark: str, max_new_tokens: int | None = None) -> GenerationConfig:
    """Greedy decoding with the benchmark's lmms-eval length (or `max_new_tokens` when given)
    and stop strings."""
    if benchmark not in MAX_NEW_TOKENS:
        raise ValueError(f"no generation settings for benchmark {benchmark!r}")
    return GenerationConfig(
        max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[benchmark],
        temperature=0.0,
        stop=STOP_STRINGS.get(benchmark, ()),
    )
