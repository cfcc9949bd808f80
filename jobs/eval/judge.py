"""Scoring free-text answers (ActivityNet-QA, Table S3) with a judge model behind any
OpenAI-compatible chat-completions endpoint.

The paper scored ActivityNet-QA with GPT-3.5-Turbo through lmms-eval. Each answer is one
request: the system and user messages below (lmms-eval's ActivityNet-QA judge prompt, itself
Video-ChatGPT's, reproduced byte for byte, run-on sentences and double space included: the judge
must read the protocol's text), temperature 0, at most 64 tokens. The judge replies with a
Python dict string such as ``{'pred': 'yes', 'score': 4}``: 'pred' says whether the answer
matches the reference, 'score' grades the match from 0 to 5.

Reading a reply (`parse_judgement`), robustly: a Markdown code fence around it is dropped; the
first ``{...}`` in it is read as JSON, else as a Python literal (single quotes); failing that,
``pred: yes`` / ``score: 4`` pairs are looked for anywhere. 'pred' is yes when its text contains
"yes", else no when it contains "no" (lmms-eval's rule; a JSON boolean counts too); 'score' is
a number in [0, 5], truncated to an integer as lmms-eval's ``int()`` does (4.8 -> 4). A reply
missing either field, with a score outside [0, 5], or with no such content is "unparsed".

Aggregating as lmms-eval does: accuracy = share of "yes" among all judged answers, in percent;
score = mean score. An unparsed reply counts as "no" with score 0 (lmms-eval's fallback), and
the number of unparsed replies is reported beside the scores, so a judge that does not follow
the format is visible rather than silently folded in.

The client (`Judge`): httpx, a bounded number of requests in flight (`concurrency`), retries
with exponential backoff (honouring Retry-After) on connection errors, timeouts, HTTP 429, 5xx
and malformed responses; other HTTP errors (401, 404 ...) stop at once. A request that still
fails raises `JudgeError`: the run stops and a rerun continues (judgements are logged as they
come), instead of scoring an unjudged answer 0. The API key is read from an environment
variable (default OPENAI_API_KEY), sent only in the Authorization header, and never written to
a log, a report or an error message.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

JUDGE_SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative "
    "outputs for question-answer pairs. Your task is to compare the predicted answer with the "
    "correct answer and determine if they match meaningfully. Here's how you can accomplish "
    "the task:------##INSTRUCTIONS: - Focus on the meaningful match between the predicted "
    "answer and the correct answer.\n- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
JUDGE_USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {prediction}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value "
    "between 0 and 5, with 5 indicating the highest meaningful match. Please generate the "
    "response in the form of a Python dictionary string with keys 'pred' and 'score', where "
    "value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not "
    "STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python "
    "dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4.8}}."
)
MAX_SCORE = 5


def judge_messages(question: str, answer: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages asking the judge about one answer."""
    user = JUDGE_USER_PROMPT.format(question=question, answer=answer, prediction=prediction)
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one answer. Unparsed replies score as "no" and 0."""

    correct: bool
    score: int
    parsed: bool
    reply: str


_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*(.*?)\s*```", re.DOTALL)
_PRED = re.compile(r"""pred['"]?\s*[:=]\s*['"]?\s*([A-Za-z]+)""", re.IGNORECASE)
_SCORE = re.compile(r"""score['"]?\s*[:=]\s*['"]?\s*(-?\d+(?:\.\d+)?)""", re.IGNORECASE)


def _as_dict(block: str) -> dict | None:
    for reader in (json.loads, ast.literal_eval):
        try:
            value = reader(block)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.lower()
        if "yes" in text:
            return True
        if "no" in text:
            return False
    return None


def _grade(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if not 0 <= value <= MAX_SCORE:
        return None
    return int(value)


def parse_judgement(reply: str) -> Judgement:
    """Read a judge's reply (rules in the module docstring)."""
    text = reply if isinstance(reply, str) else ""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    pred = score = None
    start = body.find("{")
    end = body.find("}", start)
    data = _as_dict(body[start : end + 1]) if 0 <= start < end else None
    if data is not None:
        pred, score = _verdict(data.get("pred")), _grade(data.get("score"))
    else:
        pred_match, score_match = _PRED.search(body), _SCORE.search(body)
        pred = _verdict(pred_match.group(1)) if pred_match else None
        score = _grade(score_match.group(1)) if score_match else None
    if pred is None or score is None:
        return Judgement(correct=False, score=0, parsed=False, reply=text)
    return Judgement(correct=pred, score=score, parsed=True, reply=text)


@dataclass(frozen=True)
class JudgeSettings:
    """Where and how to ask the judge.

    url: the endpoint's base URL (".../v1"; a URL ending in /chat/completions is used as is).
    key_env: the environment variable holding the API key (unset: no Authorization header, for
        local endpoints that need none).
    max_attempts: requests per answer before giving up (lmms-eval: 5); backoff_s: the first
        wait, doubled after each failed attempt (capped at 60 s).
    """

    url: str = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"
    key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 64
    temperature: float = 0.0
    concurrency: int = 4
    max_attempts: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^/\s]+", self.url or ""):
            raise ValueError(f"the judge URL must be an http(s) URL, got {self.url!r}")
        if not self.model or not isinstance(self.model, str):
            raise ValueError("the judge needs a model name")
        for name in ("max_tokens", "concurrency", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"judge {name} must be a positive integer, got {value!r}")
        for name in ("backoff_s", "timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"judge {name} must be a non-negative number, got {value!r}")

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def identity(self) -> dict[str, Any]:
        """What decides the verdicts (not where the endpoint is, nor how it is reached)."""
        prompt = hashlib.sha256((JUDGE_SYSTEM_PROMPT + JUDGE_USER_PROMPT).encode()).hexdigest()
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "prompt": prompt[:16],
        }


class JudgeError(RuntimeError):
    """The judge endpoint gave no usable answer."""


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class Judge:
    """An OpenAI-compatible judge client (see the module docstring)."""

    def __init__(self, settings: JudgeSettings = JudgeSettings()) -> None:
        import httpx

        self.settings = settings
        self._key = os.environ.get(settings.key_env) or None
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._client = httpx.Client(headers=headers, timeout=settings.timeout_s)
        self._httpx = httpx

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redacted(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def reply(self, question: str, answer: str, prediction: str) -> str:
        """The judge's raw reply to one answer (retrying as the module docstring says)."""
        payload = {
            "model": self.settings.model,
            "messages": judge_messages(question, answer, prediction),
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
        }
        endpoint = self.settings.endpoint
        reason = ""
        for attempt in range(self.settings.max_attempts):
            try:
                return self._post(endpoint, payload)
            except _Retry as retry:
                reason = str(retry)
                if attempt + 1 < self.settings.max_attempts:
                    wait_s = self.settings.backoff_s * 2**attempt
                    if retry.wait_s is not None:
                        wait_s = max(wait_s, retry.wait_s)
                    time.sleep(min(wait_s, 60.0))
        raise JudgeError(
            f"judge {endpoint}: no answer after {self.settings.max_attempts} attempts ({reason})"
        )

    def _post(self, endpoint: str, payload: dict[str, Any]) -> str:
        try:
            response = self._client.post(endpoint, json=payload)
        except self._httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
        if status >= 400:
            body = self._redacted(response.text[:300])
            raise JudgeError(f"judge {endpoint} answered HTTP {status}: {body}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry("a response without choices[0].message.content") from None
        return content if isinstance(content, str) else ""

    def judge(self, question: str, answer: str, prediction: str) -> Judgement:
        return parse_judgement(self.reply(question, answer, prediction))

    def judge_many(
        self,
        requests: Sequence[tuple[Hashable, str, str, str]],
        on_result: Callable[[Hashable, Judgement], None],
    ) -> None:
        """Judge (key, question, answer, prediction) requests, at most `concurrency` in flight;
        `on_result(key, judgement)` runs in this thread as each verdict arrives. The first
        `JudgeError` stops the rest (after delivering what was already judged) and is raised."""
        if not requests:
            return
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            futures = {pool.submit(self.judge, q, a, p): key for key, q, a, p in requests}
            pending = set(futures)
            error: BaseException | None = None
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        error = error or future.exception()
                    else:
                        on_result(futures[future], future.result())
                if error is not None:
                    for future in pending:
                        future.cancel()
                    wait(pending)
                    for future in pending:
                        if not future.cancelled() and future.exception() is None:
                            on_result(futures[future], future.result())
                    raise error


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
