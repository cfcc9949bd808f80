"""The replica-side engine: one Video-LLM, a token-set cache, and batched answering.

Plain Python, no Ray: `ModelServer` (the Serve deployment) wraps it with `@serve.batch`, and the
serving benchmark calls it directly to measure what the service adds on top.

A question goes: `prepare` (token set from the cache, else from the store at the location the
catalog gave) -> `answer_batch` (questions with equal merge and generation settings share one
padded forward: the plug-in's `answer` takes a list) -> an `AnswerReport` with the figures the
API returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch

from compression import flops
from compression.config import GenerationConfig, MergeConfig
from compression.token_set import TokenSet
from compression.video_llm import Answer, Question, VideoLLM, load_video_llm
from serving.cache import ByteLRUCache
from serving.errors import InvalidRequest, ServingError, logger
from storage.token_files import TokenSetLocation, TokenSetReadError, read_token_set

# Eq. S3 is stated for R_dec = 100 generated tokens; the ratios use it whatever this answer
# generated, so they compare like with like (METHOD.md section 6).
FLOPS_GENERATED_TOKENS = 100

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


@dataclass
class PreparedQuestion:
    job: AskJob
    question: Question
    cache_hit: bool
    load_s: float
    started: float  # time.perf_counter() when the replica received the job
    enqueued: float = 0.0


@dataclass(frozen=True)
class FlopsReport:
    ratio_visual_only: float
    ratio_with_text: float
    flops_visual_only: float
    flops_with_text: float
    baseline_flops_visual_only: float
    baseline_flops_with_text: float


@dataclass(frozen=True)
class AnswerReport:
    video_id: str
    model_id: str
    text: str
    finish_reason: str
    merge: MergeConfig
    original_visual: int
    visual_in: int
    visual_after_merge: int
    prompt_tokens: int
    completion_tokens: int
    flops: FlopsReport
    queue_s: float
    load_s: float
    prefill_s: float
    decode_s: float
    engine_s: float
    cache_hit: bool
    batch_size: int


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def flops_report(answer: Answer, original_visual: int, info: ModelInfo) -> FlopsReport:
    """FLOPs of this answer vs the same question over all `original_visual` tokens, no merge."""
    text_tokens = answer.prompt_tokens - answer.visual_tokens_in
    no_merge = MergeConfig(method="none")

    def cost(layer_tokens: Sequence[int]) -> float:
        return flops.prefill_decode_flops(
            layer_tokens, info.hidden_size, info.intermediate_size, FLOPS_GENERATED_TOKENS
        )

    ours_visual = cost(answer.layer_visual_tokens)
    ours_text = cost(answer.layer_tokens)
    base_visual = cost(flops.layer_token_counts(info.num_layers, original_visual, 0, no_merge))
    base_text = cost(
        flops.layer_token_counts(info.num_layers, original_visual, text_tokens, no_merge)
    )
    return FlopsReport(
        ratio_visual_only=ours_visual / base_visual,
        ratio_with_text=ours_text / base_text,
        flops_visual_only=ours_visual,
        flops_with_text=ours_text,
        baseline_flops_visual_only=base_visual,
        baseline_flops_with_text=base_text,
    )


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
        # Token-set files are written once and never changed: their place is a safe cache key.
        key = (job.location.file_url, job.location.row_group)
        token_set, hit = await self.cache.get_or_load(
            key, lambda: asyncio.to_thread(self._read, job.location)
        )
        question = Question(token_set=token_set, text=job.question, system=job.system)
        load_s = time.perf_counter() - started
        return PreparedQuestion(job, question, cache_hit=hit, load_s=load_s, started=started)

    # -- answering ----------------------------------------------------------------------------
    def answer_batch(self, prepared: Sequence[PreparedQuestion]) -> list[AnswerReport]:
        """Answer questions in as few forwards as possible: one per distinct settings pair."""
        begun = time.perf_counter()
        groups: dict[tuple[MergeConfig, GenerationConfig], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault((p.job.merge, p.job.generation), []).append(i)
        reports: list[AnswerReport | None] = [None] * len(prepared)
        for (merge, generation), members in groups.items():
            answers = self.llm.answer([prepared[i].question for i in members], merge, generation)
            for i, answer in zip(members, answers, strict=True):
                queue_s = max(0.0, begun - prepared[i].enqueued) if prepared[i].enqueued else 0.0
                reports[i] = self.report(prepared[i], answer, len(members), queue_s)
        return [r for r in reports if r is not None]

    def answer_stream(self, prepared: PreparedQuestion) -> Iterator[str | AnswerReport]:
        """Text pieces as the model produces them, then the `AnswerReport`."""
        job = prepared.job
        for item in self.llm.answer_stream(prepared.question, job.merge, job.generation):
            if isinstance(item, str):
                if item:
                    yield item
            else:
                yield self.report(prepared, item, batch_size=1, queue_s=0.0)

    def report(
        self, prepared: PreparedQuestion, answer: Answer, batch_size: int, queue_s: float
    ) -> AnswerReport:
        token_set = prepared.question.token_set
        return AnswerReport(
            video_id=prepared.job.video_id,
            model_id=self.info.model_id,
            text=answer.text,
            finish_reason=answer.finish_reason,
            merge=prepared.job.merge,
            original_visual=token_set.original_count,
            visual_in=answer.visual_tokens_in,
            visual_after_merge=answer.visual_tokens_after_merge,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=len(answer.token_ids),
            flops=flops_report(answer, token_set.original_count, self.info),
            queue_s=queue_s,
            load_s=prepared.load_s,
            prefill_s=answer.prefill_seconds,
            decode_s=answer.decode_seconds,
            engine_s=time.perf_counter() - prepared.started,
            cache_hit=prepared.cache_hit,
            batch_size=batch_size,
        )
