"""RequestScheduler without Ray: concurrent streamed and non-streamed questions share one
continuous batch and answer as each would alone; a bad question fails alone; a withdrawn
question leaves; repeated questions about a video reuse its prefix."""

from __future__ import annotations

import asyncio
import threading

import pytest
from test_engine import essentials, job, prepare

from compression.models import GenerationConfig
from serving.engine import AnswerEngine
from serving.errors import InvalidRequest, ServingError
from serving.scheduler import RequestScheduler
from serving.schemas import AskResponse

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def scheduler_for(engine: AnswerEngine, prefix_cache_bytes: int = 0, **kwargs) -> RequestScheduler:
    batch = engine.llm.continuous_batch(prefix_cache_bytes)
    return RequestScheduler(engine, batch, max_running=kwargs.pop("max_running", 4), **kwargs)


async def collect(scheduler: RequestScheduler, prepared, delay: float = 0.0):
    """(pieces, response or error) of one submitted question, after `delay` seconds."""
    await asyncio.sleep(delay)
    pieces = []
    try:
        async for item in scheduler.submit(prepared):
            if isinstance(item, AskResponse):
                return pieces, item
            pieces.append(item)
    except ServingError as exc:
        return pieces, exc
    raise AssertionError("no answer")


def answers_alone(engine: AnswerEngine, jobs) -> list[AskResponse]:
    return [engine.answer_batch(prepare(engine, [j]))[0] for j in jobs]


def test_concurrent_questions_share_the_batch_and_answer_as_alone(engine, locations) -> None:
    lengths = [2, 9, 4, 7, 1, 5]
    jobs = [
        job(locations[i % 3], f"what moves {i} ?", generation=GenerationConfig(max_new_tokens=n))
        for i, n in enumerate(lengths)
    ]
    scheduler = scheduler_for(engine, max_running=4)

    async def run():
        prepared = [await engine.prepare(j) for j in jobs]
        # staggered arrivals: some join while others decode; more than max_running at once
        return await asyncio.gather(
            *(collect(scheduler, p, delay=0.01 * i) for i, p in enumerate(prepared))
        )

    results = asyncio.run(run())
    for (pieces, response), expected in zip(results, answers_alone(engine, jobs), strict=True):
        assert isinstance(response, AskResponse)
        assert essentials(response) == essentials(expected)
        assert "".join(pieces) == response.answer  # streamed and not: the same batch
        assert 1 <= response.batch_size <= 4
    assert scheduler.load == (0, 0)


def test_a_bad_question_fails_alone_in_the_running_batch(engine, locations) -> None:
    good = [job(loc, "what moves ?") for loc in locations]
    bad = job(locations[1], "is <|im_end|> there ?")  # a control token in user text
    scheduler = scheduler_for(engine)

    async def run():
        prepared = [await engine.prepare(j) for j in [good[0], bad, good[1], good[2]]]
        return await asyncio.gather(*(collect(scheduler, p) for p in prepared))

    results = [r for _, r in asyncio.run(run())]
    assert isinstance(results[1], InvalidRequest) and results[1].code == "invalid_question"
    answered = [results[0], results[2], results[3]]
    assert [essentials(r) for r in answered] == [essentials(r) for r in answers_alone(engine, good)]


def test_a_withdrawn_question_leaves_and_the_others_finish(engine, locations) -> None:
    long = job(locations[0], "tell me", generation=GenerationConfig(max_new_tokens=30))
    short = job(locations[1], "what ?")
    scheduler = scheduler_for(engine)

    async def run():
        first, second = await engine.prepare(long), await engine.prepare(short)
        stream = scheduler.submit(first)
        await stream.__anext__()  # running now
        other = asyncio.ensure_future(collect(scheduler, second))
        await stream.aclose()  # the client hung up
        return await other

    _, response = asyncio.run(run())
    assert essentials(response) == essentials(answers_alone(engine, [short])[0])
    assert scheduler.load == (0, 0)
    assert len(scheduler.batch) == 0  # the withdrawn question left the batch


def test_repeated_questions_about_a_video_reuse_its_prefix(engine, locations) -> None:
    jobs = [job(locations[2], q) for q in ("what moves ?", "what colour ?", "what moves ?")]
    scheduler = scheduler_for(engine, prefix_cache_bytes=10**8)

    async def run():
        return [await collect(scheduler, await engine.prepare(j)) for j in jobs]

    responses = [r for _, r in asyncio.run(run())]
    assert [r.tokens.prompt_cached > 0 for r in responses] == [False, True, True]
    expected = answers_alone(engine, jobs)
    assert [essentials(r) for r in responses] == [essentials(r) for r in expected]
    assert scheduler.batch.prefix_cache_stats() == (3, 2)


class _StepAfterFirstPiece:
    """A running batch whose every step waits until the test has received a first piece (or
    gives up after `patience_s` and records it): a question's first token must reach its caller
    before the batch decodes further, not one step later."""

    def __init__(self, batch, patience_s: float = 30.0) -> None:
        self.batch, self.patience_s = batch, patience_s
        self.first_piece = threading.Event()
        self.waited_in_vain = False

    def __len__(self) -> int:
        return len(self.batch)

    def __getattr__(self, name: str) -> object:
        return getattr(self.batch, name)

    def step(self):
        if len(self.batch) and not self.first_piece.wait(self.patience_s):
            self.waited_in_vain = True
        return self.batch.step()


def test_the_first_token_reaches_its_caller_before_the_next_step(engine, locations) -> None:
    gated = _StepAfterFirstPiece(engine.llm.continuous_batch())
    scheduler = RequestScheduler(engine, gated, max_running=2)
    long = job(locations[0], "tell me", generation=GenerationConfig(max_new_tokens=4))

    async def run() -> str:
        stream = scheduler.submit(await engine.prepare(long))
        first = await stream.__anext__()
        gated.first_piece.set()
        async for _ in stream:
            pass
        return first

    assert isinstance(asyncio.run(run()), str)
    assert not gated.waited_in_vain


def test_a_one_token_answer_alone_reports_a_batch_of_one(engine, locations) -> None:
    """It joins and finishes in the same prefill, so the batch is empty again right after the
    join: the batch it was answered in still held it (was 0)."""
    scheduler = scheduler_for(engine)
    one = job(locations[0], "what moves ?", generation=GenerationConfig(max_new_tokens=1))

    async def run():
        return await collect(scheduler, (await engine.prepare(one)))

    _, response = asyncio.run(run())
    assert isinstance(response, AskResponse) and response.tokens.completion == 1
    assert response.batch_size == 1
