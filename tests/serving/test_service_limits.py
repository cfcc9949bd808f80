"""The service at its limits (issue 12): a request past its deadline (504), a full queue (503 with
Retry-After), a model replica that crashes mid-stream (an OpenAI error event, counted), and no
model replica at all (/readyz says so, questions do not hang).

One Serve application for the module: one model replica holding one request at a time, one
queued request, a deadline of TIMEOUT_S. Its model is the tiny one behind gates: files this
module creates and removes to hold the replica's constructor, its answers, or its streams.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_helpers import (
    free_port,
    kill_model_replica,
    wait_for_replacement,
    write_indexed_videos,
)

pytestmark = pytest.mark.slow

APP = "tokenreel-limits"
MODEL = "tiny-llava-ov"
MERGE = {"layer": 2}
TIMEOUT_S = 8
RETRY_AFTER_S = 2
VIDEO = "limitsvideo01"


def _wait_while(path: Path) -> None:
    while path.exists():
        time.sleep(0.05)


class GatedLLM:
    """The tiny model (built in the replica) behind the gates in `gates`: the constructor waits
    while `hold_construct` exists; its running batch (`GatedBatch`) holds prefills and steps."""

    def __init__(self, gates: str) -> None:
        from compression.models import load_video_llm

        self.gates = Path(gates)
        _wait_while(self.gates / "hold_construct")
        self.llm = load_video_llm(MODEL, device="cpu")

    def __getattr__(self, name: str) -> object:
        return getattr(self.llm, name)

    def continuous_batch(self, prefix_cache_bytes: int = 0) -> GatedBatch:
        return GatedBatch(self.gates, self.llm.continuous_batch(prefix_cache_bytes))


class GatedBatch:
    """The model's running batch behind the gates: `join` (prefill and first token) marks
    `entered`, then waits while `hold_answers` exists; `step` (every later token) waits while
    `hold_streams` exists, so a stream holds after its first piece."""

    def __init__(self, gates: Path, batch) -> None:
        self.gates, self.batch = gates, batch

    def __len__(self) -> int:
        return len(self.batch)

    def __getattr__(self, name: str) -> object:
        return getattr(self.batch, name)

    def join(self, requests):
        (self.gates / "entered").touch()
        _wait_while(self.gates / "hold_answers")
        return self.batch.join(requests)

    def step(self):
        _wait_while(self.gates / "hold_streams")
        return self.batch.step()


class Service:
    def __init__(self, url: str, gates: Path) -> None:
        self.url, self.gates = url, gates

    def close(self, gate: str) -> None:
        (self.gates / gate).touch()

    def open(self, gate: str) -> None:
        (self.gates / gate).unlink(missing_ok=True)

    def ask(self, question: str = "what happens ?", timeout: float = 60) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/videos/{VIDEO}/ask",
            json={"question": question, "max_new_tokens": 4, "merge": MERGE},
            timeout=timeout,
        )

    def wait_for(self, path: str, status: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if httpx.get(self.url + path, timeout=30).status_code == status:
                return
            time.sleep(0.5)
        raise AssertionError(f"{path} never answered {status}")


@pytest.fixture(scope="module")
def service(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    import ray
    from ray import serve

    from serving.app import application
    from serving.settings import ServeSettings

    root = tmp_path_factory.mktemp("limits")
    catalog_url = write_indexed_videos(root / "store", [VIDEO])
    gates = root / "gates"
    gates.mkdir()
    settings = ServeSettings.from_args(
        {
            "model": MODEL,
            "store_url": str(root / "store"),
            "catalog_url": catalog_url,
            "device": "cpu",
            "num_cpus": 0.5,
            "max_batch_size": 1,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "request_timeout_s": TIMEOUT_S,
            "retry_after_s": RETRY_AFTER_S,
        }
    )
    # The replica unpickles GatedLLM: by value, as Ray's workers cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = application(settings, None, functools.partial(GatedLLM, str(gates)))
    serve.run(app, name=APP, route_prefix="/")
    try:
        yield Service(f"http://127.0.0.1:{port}", gates)
    finally:
        for gate in gates.iterdir():
            gate.unlink()
        serve.shutdown()


def assert_clean_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "/tmp/" not in response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def test_a_request_past_its_deadline_is_a_clean_504(service: Service) -> None:
    assert service.ask().status_code == 200
    service.close("hold_answers")
    try:
        response = service.ask()
    finally:
        service.open("hold_answers")
    error = assert_clean_error(response, 504, "request_timeout")
    assert f"{TIMEOUT_S} s" in error["message"] and error["type"] == "timeout_error"
    assert service.ask().status_code == 200  # the held question does not block the next


def test_a_full_queue_is_a_503_with_retry_after(service: Service) -> None:
    service.open("entered")
    service.close("hold_answers")

    async def fill() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            url, body = f"/v1/videos/{VIDEO}/ask", {"question": "what ?", "max_new_tokens": 2}
            held = asyncio.ensure_future(client.post(url, json=body))  # takes the replica
            while not (service.gates / "entered").exists():
                await asyncio.sleep(0.05)
            # One more may wait in the queue; the other is turned away at once.
            more = [asyncio.ensure_future(client.post(url, json=body)) for _ in range(2)]
            await asyncio.wait(more, return_when=asyncio.FIRST_COMPLETED)
            service.open("hold_answers")
            return await asyncio.gather(held, *more)

    try:
        held, *more = asyncio.run(fill())
    finally:
        service.open("hold_answers")
    assert held.status_code == 200, held.text
    rejected = [r for r in more if r.status_code == 503]
    assert len(rejected) == 1 and [r.status_code for r in more].count(200) == 1
    assert_clean_error(rejected[0], 503, "queue_full")
    assert rejected[0].headers["Retry-After"] == str(RETRY_AFTER_S)


def _metrics_text() -> str:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _counted_as_failed() -> bool:
    lines = _metrics_text().splitlines()
    broken = [
        line
        for line in lines
        if "tokenreel_streams_broken_total{" in line and 'reason="replica_failed"' in line
    ]
    failed = [
        line
        for line in lines
        if "tokenreel_http_requests_total{" in line
        and 'endpoint="/v1/chat/completions"' in line
        and 'status="503"' in line
    ]
    return bool(broken and failed)


def test_a_replica_crash_breaks_streams_cleanly_and_readyz_tells(service: Service) -> None:
    """The issue: streams cut by a replica crash ended with a 200 the `openai` client did not
    raise on, and were not counted as failed; /healthz said healthy for ~11 s while no model
    replica existed, and questions hung. /healthz stays the HTTP layer's liveness; /readyz and
    the deadline now tell the truth."""
    import openai

    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    service.wait_for("/readyz", 200)
    service.close("hold_streams")
    service.close("hold_construct")  # the replacement of the replica killed below cannot start
    try:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "what happens ?"}],
            max_tokens=16,
            stream=True,
            extra_body={"video_id": VIDEO, "merge": MERGE},
        )
        chunks = iter(stream)
        while not (chunk := next(chunks)).choices or not chunk.choices[0].delta.content:
            pass  # the role chunk; then the first piece of text, after which the replica holds
        killed = kill_model_replica()
        with pytest.raises(openai.APIError) as error:
            list(chunks)
        assert error.value.code == "replica_failed"
        # No model replica now.
        service.wait_for("/readyz", 503, timeout_s=60)
        assert_clean_error(httpx.get(f"{service.url}/readyz", timeout=30), 503, "not_ready")
        assert httpx.get(f"{service.url}/healthz", timeout=30).status_code == 200
        question = service.ask(timeout=TIMEOUT_S + 30)  # bounded by the deadline
        assert question.status_code in (503, 504), question.text
    finally:
        service.open("hold_streams")
        service.open("hold_construct")
    wait_for_replacement(APP, killed, 1)
    service.wait_for("/readyz", 200)
    assert service.ask().status_code == 200
    deadline = time.monotonic() + 90  # replicas push their metrics every few seconds
    while not _counted_as_failed() and time.monotonic() < deadline:
        time.sleep(2)
    assert _counted_as_failed(), "the broken stream was not counted as failed"
