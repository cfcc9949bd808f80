"""`ModelServer`: the Serve deployment that holds the Video-LLM (one `AnswerEngine` per replica).

Questions are answered by continuous batching (`serving.scheduler.RequestScheduler` over the
model's `DecodeBatch`): a new question is prefilled and joins the running decode batch between
decoding steps, a finished one leaves, streamed (`ask_stream`) and non-streamed (`ask`) questions
share the batch, and a question that fails fails alone (its own error, raised by its own call).
`max_batch_size` bounds the questions in the running batch; the per-video prefix cache
(`prefix_cache_bytes`) lets a repeated question about a video skip its video's prefill below the
merge layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from compression.models import VideoLLM
from serving.engine import AnswerEngine, AskJob, ModelInfo, PreparedQuestion
from serving.metrics import EngineMetrics
from serving.scheduler import RequestScheduler
from serving.schemas import AskResponse
from serving.settings import ServeSettings


class ModelServer:
    """Deployment class; `serving.app.build_app` sets its resources, autoscaling and router."""

    def __init__(
        self, settings: ServeSettings, llm_factory: Callable[[], VideoLLM] | None = None
    ) -> None:
        # llm_factory: build the model some other way than `load_video_llm(settings.model)`
        # (the serving benchmark's random-weight 7B model); called once, in the replica.
        self.engine = AnswerEngine(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            cache_bytes=settings.cache_bytes,
            llm=llm_factory() if llm_factory is not None else None,
        )
        self.metrics = EngineMetrics()
        self.scheduler = RequestScheduler(
            self.engine,
            self.engine.llm.continuous_batch(settings.prefix_cache_bytes),
            max_running=settings.max_batch_size,
            wait_for_company_s=settings.batch_wait_timeout_s,
            on_load=self.metrics.record_load,
            on_join=self.metrics.record_batch,
        )

    def describe(self) -> ModelInfo:
        """The model's facts; also the readiness probe's ping (`ApiServer.ready`)."""
        return self.engine.info

    async def _prepare(self, job: AskJob) -> PreparedQuestion:
        prepared = await self.engine.prepare(job)
        self.metrics.record_cache(prepared.cache_hit, self.engine.cache.stats().bytes)
        return prepared

    async def ask(self, job: AskJob) -> AskResponse:
        prepared = await self._prepare(job)
        async for item in self.scheduler.submit(prepared):
            if isinstance(item, AskResponse):
                self.metrics.record_answer(item)
                return item
        raise RuntimeError("the scheduler ended a question without its answer")

    async def ask_stream(self, job: AskJob) -> AsyncIterator[str | AskResponse]:
        prepared = await self._prepare(job)
        async for item in self.scheduler.submit(prepared):
            if isinstance(item, AskResponse):
                self.metrics.record_answer(item)
            yield item
