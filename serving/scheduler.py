"""`RequestScheduler`: the replica's request side of continuous batching.

One model thread drives the model's `DecodeBatch` (`compression.models.scheduler`): between
decoding steps it admits waiting questions (up to `max_running` in the batch; they are prefilled
and join), runs one step for every running question, and hands each question's text pieces and
final `AskResponse` (or its own error) to the coroutine that submitted it. Streamed and
non-streamed questions share the batch: `ask` simply keeps the last item. A question whose
caller stops listening (client gone, deadline) leaves the batch at the next step.

Decisions: `batch_wait_timeout_s` keeps the meaning `@serve.batch` gave it, the wait for
company: when nothing runs, the first question waits that long for others to share its prefill
(while a batch runs, newcomers join at the next step anyway). The static path
(`AnswerEngine.answer_batch`, one batch run to its longest answer) stays for the benchmark's
baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from compression.models import BatchEvent, DecodeBatch, JoinRequest
from serving.engine import AnswerEngine, PreparedQuestion, question_error
from serving.errors import ServingError
from serving.schemas import AskResponse


@dataclass
class _Ticket:
    """A submitted question and the way back to its coroutine."""

    prepared: PreparedQuestion
    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue = field(default_factory=asyncio.Queue)
    batch_size: int = 0
    joined_at: float = 0.0

    def deliver(self, item: object) -> None:
        # RuntimeError: the loop is gone, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)


_DONE = object()


class RequestScheduler:
    """Feeds a `DecodeBatch` from many coroutines (module doc). Thread-safe `submit`."""

    def __init__(
        self,
        engine: AnswerEngine,
        batch: DecodeBatch,
        *,
        max_running: int,
        wait_for_company_s: float = 0.0,
        on_load: Callable[[int, int], None] = lambda running, waiting: None,
        on_join: Callable[[int], None] = lambda batch_size: None,
    ) -> None:
        if max_running < 1:
            raise ValueError("max_running must be >= 1")
        self.engine = engine
        self.batch = batch
        self.max_running = max_running
        self.wait_for_company_s = wait_for_company_s
        self._on_load = on_load
        self._on_join = on_join
        self._ids = itertools.count()
        self._waiting: dict[int, _Ticket] = {}  # insertion order: first come, first served
        self._running: dict[int, _Ticket] = {}
        self._cancelled: set[int] = set()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def load(self) -> tuple[int, int]:
        """(questions running, questions waiting)."""
        with self._condition:
            return len(self._running), len(self._waiting)

    async def submit(self, prepared: PreparedQuestion) -> AsyncIterator[str | AskResponse]:
        """Text pieces as they are decoded, then the `AskResponse`; raises the question's own
        `ServingError` if it fails. Closing the iterator early withdraws the question."""
        ticket = _Ticket(prepared, asyncio.get_running_loop())
        prepared.enqueued = time.perf_counter()
        with self._condition:
            key = next(self._ids)
            self._waiting[key] = ticket
            self._start()
            self._condition.notify()
        self._load_changed()
        try:
            while (item := await ticket.items.get()) is not _DONE:
                if isinstance(item, ServingError):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            with self._condition:
                if self._waiting.pop(key, None) is None and key in self._running:
                    self._cancelled.add(key)
            self._load_changed()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="decode-batch", daemon=True)
            self._thread.start()

    def _load_changed(self) -> None:
        self._on_load(*self.load)

    # -- the model thread -------------------------------------------------------------------
    def _admit(self) -> tuple[list[tuple[int, _Ticket]], set[int]]:
        """Wait for work; take the waiting questions that fit and the withdrawn ones."""
        with self._condition:
            while not self._waiting and not self._running:
                self._condition.wait()
            if not self._running and self.wait_for_company_s > 0:
                deadline = time.monotonic() + self.wait_for_company_s
                while len(self._waiting) < self.max_running:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._condition.wait(left)
            room = self.max_running - len(self._running)
            admitted = list(itertools.islice(self._waiting.items(), max(room, 0)))
            for key, ticket in admitted:
                del self._waiting[key]
                self._running[key] = ticket
            cancelled, self._cancelled = self._cancelled, set()
        return admitted, cancelled

    def _loop(self) -> None:
        while True:
            admitted, cancelled = self._admit()
            try:
                self._iterate(admitted, cancelled)
            except Exception as exc:  # a bug outside the batch's own isolation: fail loudly
                self._fail_all(exc)

    def _iterate(self, admitted: list[tuple[int, _Ticket]], cancelled: set[int]) -> None:
        """Withdraw, admit (prefill and join), one decoding step, hand out the events."""
        if cancelled:
            self.batch.cancel(cancelled)
            with self._condition:
                for key in cancelled:
                    self._running.pop(key, None)
        self._load_changed()
        if admitted:
            joined_at = time.perf_counter()
            requests = [
                JoinRequest(
                    key, t.prepared.question, t.prepared.job.merge, t.prepared.job.generation
                )
                for key, t in admitted
            ]
            events = self.batch.join(requests)
            # The batch right after the join, counting the questions the join already finished
            # (an answer of one token leaves at once: without them a lone one reads as 0).
            size = len(self.batch) + sum(1 for event in events if event.finished)
            for _, ticket in admitted:
                ticket.joined_at, ticket.batch_size = joined_at, size
            self._on_join(size)
            self._deliver(events)  # first tokens now, not after the next step (TTFT)
        self._deliver(self.batch.step())

    def _fail_all(self, exc: Exception) -> None:
        with self._condition:
            running, self._running = self._running, {}
        self.batch.cancel(set(running))
        error = question_error(exc)
        for ticket in running.values():
            ticket.deliver(error)
            ticket.deliver(_DONE)
        self._load_changed()

    def _deliver(self, events: list[BatchEvent]) -> None:
        finished = []
        with self._condition:
            tickets = [(e, self._running.get(e.key)) for e in events]  # type: ignore[arg-type]
        for event, ticket in tickets:
            if ticket is None:  # withdrawn meanwhile
                continue
            try:
                if event.piece:
                    ticket.deliver(event.piece)
                if event.error is not None:
                    ticket.deliver(question_error(event.error))
                elif event.answer is not None:
                    queue_s = max(0.0, ticket.joined_at - ticket.prepared.enqueued)
                    response = self.engine.response(
                        ticket.prepared, event.answer, ticket.batch_size, queue_s
                    )
                    ticket.deliver(response)
            except Exception as exc:  # building this question's response: its failure only
                ticket.deliver(question_error(exc))
                finished.append(event.key)
                ticket.deliver(_DONE)
                continue
            if event.finished:
                ticket.deliver(_DONE)
                finished.append(event.key)
        if finished:
            with self._condition:
                for key in finished:
                    self._running.pop(key, None)  # type: ignore[arg-type]
            self._load_changed()
