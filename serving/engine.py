"""The replica-side engine: one Video-LLM, a token-set cache, and batched answering.

Plain Python, no Ray: `ModelServer` (the Serve deployment) answers through continuous batching
(`serving.scheduler`, which turns the model's answers into responses here); `answer_batch`, the
static path (one padded batch run to its longest answer), stays for the serving benchmark's
baseline and direct callers.

A question goes: `prepare` (token set from the cache, else from the store at the location the
catalog gave) -> `answer_batch` (questions with equal merge and generation settings share one
padded forward: the plug-in's `answer` takes a list) -> the `AskResponse` the API returns, with
its figures (tokens, FLOPs, timings); the API only sets the end-to-end time.

One question can never fail another (issue 12): `answer_batch` answers each question or gives it
its own error. When a shared forward fails, its questions are answered in halves, recursively, so
only the questions that fail alone get an error (the others still share forwards: a bad question
in a batch of 8 costs 3 more, quick, failed attempts): `InvalidRequest` (400) when the plug-in
says the question itself is at fault (`InvalidQuestion`), else a logged `InternalError` (500).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compression.config import MergeConfig
from compression.flops import flops_report
from compression.models import (
    Answer,
    GenerationConfig,
    InvalidQuestion,
    Question,
    Turn,
    VideoLLM,
    load_video_llm,
)
from compression.token_set import TokenSet
from serving.cache import ByteLRUCache
from serving.errors import InternalError, InvalidRequest, ServingError, logger
from serving.schemas import AskResponse, FlopsFigures, MergeApplied, Timings, TokenCounts
from serving.time_range import range_token_set, video_time_span
from storage.token_files import TokenSetLocation, TokenSetReadError, read_token_set

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    family: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    device: str


@dataclass(frozen=True)
class AskJob:
    """One question as the HTTP layer hands it to a model replica (validated already)."""

    video_id: str
    location: TokenSetLocation  # as the catalog returned it
    question: str
    system: str | None
    merge: MergeConfig
    generation: GenerationConfig
    history: tuple[Turn, ...] = ()  # earlier turns of a conversation (see `Question`)
    # A question over a time range (`serving.time_range`): the chunk sets overlapping it and
    # their span; empty: the video-level set at `location`.
    chunks: tuple[TokenSetLocation, ...] = ()
    chunks_span: tuple[float, float] | None = None
    include_kept_visual: bool = False  # answer with the rows the merge kept (Fig. S2)


@dataclass
class PreparedQuestion:
    job: AskJob
    question: Question
    cache_hit: bool
    load_s: float
    started: float  # time.perf_counter() when the replica received the job
    enqueued: float = 0.0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class AnswerEngine:
    """Loads the Video-LLM once; answers questions over cached token sets."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str | None = None,
        cache_bytes: int = 2 * 1024**3,
        llm: VideoLLM | None = None,
    ) -> None:
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.llm = llm or load_video_llm(
            model, device=resolve_device(device), dtype=DTYPES.get(dtype or "")
        )
        self.cache: ByteLRUCache[Hashable, TokenSet] = ByteLRUCache(
            cache_bytes, size_of=lambda token_set: token_set.nbytes
        )
        self.info = ModelInfo(
            model_id=self.llm.model_id,
            family=self.llm.family,
            num_layers=self.llm.num_layers,
            hidden_size=self.llm.hidden_size,
            intermediate_size=self.llm.intermediate_size,
            device=str(self.llm.device),
        )

    # -- token sets ---------------------------------------------------------------------------
    def _read(self, location: TokenSetLocation) -> TokenSet:
        try:
            return read_token_set(location, expected_model_id=self.info.model_id)
        except TokenSetReadError as exc:
            # The reason names store paths: it goes to the log, the client gets the video id.
            logger.error("cannot read the token set of %s: %s", location.video_id, exc)
            raise ServingError(
                f"the token set of video {location.video_id!r} could not be read from the store "
                "(missing or corrupt); re-index the video",
                code="token_set_unreadable",
            ) from None

    async def prepare(self, job: AskJob) -> PreparedQuestion:
        """Fetch the job's token set (cache, else store) and build the plug-in's `Question`."""
        if job.merge.active and job.merge.layer >= self.info.num_layers:
            # The HTTP layer checks this too; a direct caller gets the same clear error.
            raise InvalidRequest(
                f"merge layer {job.merge.layer} is beyond the model's {self.info.num_layers} layers"
            )
        started = time.perf_counter()
        token_set, hit = await self._cached(job.location)
        span = video_time_span(token_set)
        if job.chunks:
            token_set = await range_token_set(
                token_set, job.chunks, lambda location: self._cached(location, only_set=True)
            )
            span = job.chunks_span
        try:
            question = Question(token_set, job.question, job.system, job.history, span)
        except InvalidQuestion as exc:
            raise question_error(exc) from None
        load_s = time.perf_counter() - started
        return PreparedQuestion(job, question, cache_hit=hit, load_s=load_s, started=started)

    async def _cached(self, location: TokenSetLocation, only_set: bool = False) -> Any:
        """(token set, cache hit) at `location` (the token set alone with `only_set`)."""
        # Token-set files are written once and never changed: their place is a safe cache key.
        key = (location.file_url, location.row_group)
        token_set, hit = await self.cache.get_or_load(
            key, lambda: asyncio.to_thread(self._read, location)
        )
        return token_set if only_set else (token_set, hit)

    # -- answering ----------------------------------------------------------------------------
    def answer_batch(
        self, prepared: Sequence[PreparedQuestion]
    ) -> list[AskResponse | ServingError]:
        """Answer questions in as few forwards as possible: one per distinct settings pair.
        Each question gets its answer or its own error (see the module docstring)."""
        begun = time.perf_counter()
        groups: dict[tuple[MergeConfig, GenerationConfig], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault((p.job.merge, p.job.generation), []).append(i)
        results: list[AskResponse | ServingError | None] = [None] * len(prepared)
        for (merge, generation), members in groups.items():
            questions = [prepared[i].question for i in members]
            outcomes = self._answer_isolated(questions, merge, generation)
            for i, (outcome, batch_size) in zip(members, outcomes, strict=True):
                if isinstance(outcome, ServingError):
                    results[i] = outcome
                    continue
                queue_s = max(0.0, begun - prepared[i].enqueued) if prepared[i].enqueued else 0.0
                results[i] = self.response(prepared[i], outcome, batch_size, queue_s)
        return [r for r in results if r is not None]

    def _answer_isolated(
        self, questions: list[Question], merge: MergeConfig, generation: GenerationConfig
    ) -> list[tuple[Answer | ServingError, int]]:
        """(answer or error, the size of the forward that answered it) per question."""
        try:
            return [(a, len(questions)) for a in self.llm.answer(questions, merge, generation)]
        except Exception as exc:
            if len(questions) == 1:
                return [(question_error(exc), 1)]
            logger.warning(
                "a forward of %d questions failed (%s); answering them in halves",
                len(questions),
                type(exc).__name__,
            )
            half = len(questions) // 2
            return self._answer_isolated(
                questions[:half], merge, generation
            ) + self._answer_isolated(questions[half:], merge, generation)

    def answer_stream(self, prepared: PreparedQuestion) -> Iterator[str | AskResponse]:
        """Text pieces as the model produces them, then the `AskResponse`."""
        job = prepared.job
        stream = self.llm.answer_stream(prepared.question, job.merge, job.generation)
        try:
            for item in stream:
                if isinstance(item, str):
                    if item:
                        yield item
                else:
                    yield self.response(prepared, item, batch_size=1, queue_s=0.0)
        except InvalidQuestion as exc:
            raise question_error(exc) from None

    def response(
        self, prepared: PreparedQuestion, answer: Answer, batch_size: int, queue_s: float
    ) -> AskResponse:
        """The API's answer with its figures; `timings.total_s` is the time on this replica
        (the HTTP layer replaces it with the end-to-end time)."""
        token_set = prepared.question.token_set
        flops = flops_report(
            answer.layer_tokens,
            answer.layer_visual_tokens,
            token_set.original_count,
            self.info.hidden_size,
            self.info.intermediate_size,
        )
        return AskResponse(
            video_id=prepared.job.video_id,
            model=self.info.model_id,
            answer=answer.text,
            finish_reason=answer.finish_reason,
            merge=MergeApplied.of(prepared.job.merge),
            tokens=TokenCounts(
                original_visual=token_set.original_count,
                visual_in=answer.visual_tokens_in,
                visual_after_merge=answer.visual_tokens_after_merge,
                prompt=answer.prompt_tokens,
                completion=len(answer.token_ids),
                prompt_cached=answer.cached_prompt_tokens,
            ),
            flops=FlopsFigures(**dataclasses.asdict(flops)),
            timings=Timings(
                queue_s=queue_s,
                load_s=prepared.load_s,
                prefill_s=answer.prefill_s,
                decode_s=answer.decode_s,
                total_s=time.perf_counter() - prepared.started,
            ),
            cache_hit=prepared.cache_hit,
            batch_size=batch_size,
            kept_visual=_kept_rows(answer) if prepared.job.include_kept_visual else None,
        )


def _kept_rows(answer: Answer) -> list[int] | None:
    return None if answer.kept_visual is None else [int(r) for r in answer.kept_visual.tolist()]


def question_error(exc: Exception) -> ServingError:
    """The error a client gets for a question that failed on its own."""
    if isinstance(exc, InvalidQuestion):
        return InvalidRequest(str(exc), code="invalid_question")
    return InternalError.logged(exc, "answering a question failed")
