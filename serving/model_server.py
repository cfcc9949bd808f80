"""`ModelServer`: the Serve deployment that holds the Video-LLM (one `AnswerEngine` per replica).

Concurrent `ask` calls meet in `@serve.batch` and are answered by one padded forward; `ask_stream`
answers one question and yields text pieces as they are decoded (the plug-in streams one sequence
at a time, so streamed questions are not batched). A question that fails in a batch fails alone
(`AnswerEngine.answer_batch`): the batch returns its error, and only its `ask` raises it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from ray import serve

from compression.models import VideoLLM
from serving.engine import AnswerEngine, AskJob, ModelInfo, PreparedQuestion
from serving.errors import ServingError
from serving.metrics import EngineMetrics
from serving.schemas import AskResponse
from serving.settings import ServeSettings

T = TypeVar("T")


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
        self._running = 0  # questions in a forward pass (batched or streamed)
        self._waiting: set[int] = set()  # ids of the prepared questions waiting for a batch
        self._answer_batched.set_max_batch_size(settings.max_batch_size)
        self._answer_batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def describe(self) -> ModelInfo:
        """The model's facts; also the readiness probe's ping (`ApiServer.ready`)."""
        return self.engine.info

    async def _prepare(self, job: AskJob) -> PreparedQuestion:
        prepared = await self.engine.prepare(job)
        self.metrics.record_cache(prepared.cache_hit, self.engine.cache.stats().bytes)
        return prepared

    def _load_changed(self, running: int = 0) -> None:
        self._running += running
        self.metrics.record_load(self._running, len(self._waiting))

    def _record(self, response: AskResponse) -> None:
        # No prefix cache yet: every prompt token is prefilled (0 hits).
        self.metrics.record_answer(response, prefix_cache_hit_tokens=0)

    async def ask(self, job: AskJob) -> AskResponse:
        prepared = await self._prepare(job)
        prepared.enqueued = time.perf_counter()
        self._waiting.add(id(prepared))
        self._load_changed()
        try:
            result = await self._answer_batched(prepared)
        finally:  # cancelled (the client left) before its batch began: no longer waiting
            if id(prepared) in self._waiting:
                self._waiting.discard(id(prepared))
                self._load_changed()
        if isinstance(result, ServingError):
            raise result
        self._record(result)
        return result

    # The real limits are set per replica in __init__ from the settings.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _answer_batched(
        self, prepared: list[PreparedQuestion]
    ) -> list[AskResponse | ServingError]:
        self.metrics.record_batch(len(prepared))
        self._waiting.difference_update(id(p) for p in prepared)
        self._load_changed(running=len(prepared))
        try:
            # In a thread: the event loop keeps taking requests (and filling the next batch).
            return await asyncio.to_thread(self.engine.answer_batch, prepared)
        finally:
            self._load_changed(running=-len(prepared))

    async def ask_stream(self, job: AskJob) -> AsyncIterator[str | AskResponse]:
        prepared = await self._prepare(job)
        self._load_changed(running=1)
        try:
            async for item in iterate_in_thread(lambda: self.engine.answer_stream(prepared)):
                if isinstance(item, AskResponse):
                    self._record(item)
                yield item
        finally:
            self._load_changed(running=-1)


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Drive a blocking iterator on a worker thread and yield its items on the event loop.

    When the consumer stops early (a client hung up), the thread stops after the current item.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def deliver(item: object) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            stop.set()

    def pump() -> None:
        try:
            for item in make_iterator():
                if stop.is_set():
                    return
                deliver(item)
        except BaseException as exc:
            deliver(_Failure(exc))
        finally:
            deliver(_END)

    loop.run_in_executor(None, pump)
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
