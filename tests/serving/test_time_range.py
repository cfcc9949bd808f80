"""`time_range` on the ask and chat endpoints (issue 14): the request schemas, the range checks
and the choice of chunks, without Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.engine import AnswerEngine, AskJob
from serving.errors import InvalidRequest
from serving.openai_compat import chat_question
from serving.schemas import AskRequest, ChatCompletionRequest
from serving.time_range import check_time_range, chunks_for_range
from storage.catalog import Catalog, ChunkRecord, IndexedVideo
from storage.ids import video_id_for
from storage.token_files import TokenSetLocation

URI = "/srv/film.mp4"


def _location(row_group: int, config: str) -> TokenSetLocation:
    return TokenSetLocation(
        "/store/tokensets/f.parquet", row_group, 0, 1, b"x", video_id_for(URI), "m", config, 1
    )


@pytest.mark.parametrize("value", [[0, 10], [12.5, 13.0]])
def test_a_range_is_two_numbers(value: list) -> None:
    assert AskRequest(question="q", time_range=value).time_range == value
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], "video_id": "v",
         "time_range": value}
    )  # fmt: skip
    assert chat_question(chat).time_range == value


@pytest.mark.parametrize("value", [[1], [1, 2, 3], ["1", 2], [True, 2], "0-10", None])
def test_a_malformed_range_is_rejected_by_the_schema(value: object) -> None:
    body = {"question": "q", "time_range": value}
    if value is None:
        assert AskRequest.model_validate(body).time_range is None
        return
    with pytest.raises(ValidationError):
        AskRequest.model_validate(body)


def test_an_infinite_range_is_rejected_by_the_schema() -> None:
    with pytest.raises(ValidationError):
        AskRequest.model_validate_json('{"question": "q", "time_range": [0, Infinity]}')
    with pytest.raises(ValidationError):
        AskRequest.model_validate_json(json.dumps({"question": "q", "time_range": [0, 1e400]}))


@pytest.mark.parametrize("value", [(5.0, 5.0), (6.0, 5.0), (-1.0, 5.0), (0.0, float("nan"))])
def test_a_range_needs_start_before_end(value: tuple) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_time_range(value)
    assert caught.value.param == "time_range"


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}", store_url="/store")
    chunks = [
        ChunkRecord(k, 40.0 * k, 40.0 * (k + 1), "video", _location(k + 1, "chunk"))
        for k in range(3)
    ]
    catalog.record_chunks(IndexedVideo(URI, "", _location(0, "video")), chunks)
    return catalog


def test_the_chunks_overlapping_a_range_are_chosen(catalog: Catalog) -> None:
    video = _location(0, "video")
    assert [c.window for c in chunks_for_range(catalog, video, (50.0, 70.0))] == [1]
    assert [c.window for c in chunks_for_range(catalog, video, (30.0, 90.0))] == [0, 1, 2]
    # A live video grows: an end past what is indexed means "up to now".
    assert [c.window for c in chunks_for_range(catalog, video, (100.0, 500.0))] == [2]


def test_a_range_past_the_indexed_part_or_on_a_one_pass_video_is_a_400(catalog: Catalog) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chunks_for_range(catalog, _location(0, "video"), (120.0, 130.0))
    assert caught.value.code == "time_range_out_of_bounds"
    with pytest.raises(InvalidRequest) as caught:
        chunks_for_range(catalog, _location(0, "other-config"), (0.0, 10.0))
    assert caught.value.code == "no_time_chunks"


# -- over HTTP, without Ray: the API's routes with a stand-in for the model deployment's handle --


class _Call:
    """`handle.method.remote(...)`: a task, awaitable and cancellable like a DeploymentResponse."""

    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self.method = method

    def remote(self, *args: Any) -> asyncio.Future:
        return asyncio.ensure_future(self.method(*args))


class _EngineHandle:
    """What `ApiServer` calls on the model deployment, answered by a real `AnswerEngine`."""

    def __init__(self, engine: AnswerEngine) -> None:
        self.engine = engine
        self.describe = _Call(self._describe)
        self.ask = _Call(self._ask)

    async def _describe(self) -> Any:
        return self.engine.info

    async def _ask(self, job: AskJob) -> Any:
        prepared = await self.engine.prepare(job)
        [result] = self.engine.answer_batch([prepared])
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    from compression import CompressionConfig
    from jobs.index.chunks import index_long_video
    from jobs.index.decode import DecodeSettings
    from jobs.index.video import index_video
    from serving.api import ApiServer, create_api
    from serving.settings import ServeSettings
    from storage import open_store
    from tokenreel.sample_videos import write_long_video

    root = tmp_path_factory.mktemp("http")
    store = open_store(str(root / "store"))
    engine = AnswerEngine("tiny-llava-ov", device="cpu", cache_bytes=10**7)
    long_video = write_long_video(root / "long.mp4", 30, fps=1, size=64, events=[(12.0, 3.0)])
    config = CompressionConfig(retention_ratio=0.1, frames=4, frame_size=70, chunk_seconds=10.0)
    long_set, _ = index_long_video(engine.llm, str(long_video), config, store)
    short_video = write_long_video(root / "short.mp4", 4, fps=2, size=64)
    one_pass = CompressionConfig(retention_ratio=0.1, frames=4, frame_size=70)
    [short_set] = index_video(engine.llm, str(short_video), DecodeSettings(4, 70), [one_pass])
    store.save([short_set])
    settings = ServeSettings(
        model="tiny-llava-ov", store_url=store.store_url, catalog_url=store.catalog.url
    )
    # The class under Serve's ingress wrapper (whose __init__ is Serve's own, a coroutine).
    plain = ApiServer.__mro__[1]
    server = plain.__new__(plain)
    plain.__init__(server, _EngineHandle(engine), settings, None)
    with TestClient(create_api(server)) as test_client:
        yield test_client, {"long": long_set.video_id, "short": short_set.video_id}


def _ask(client: TestClient, video_id: str, **body: Any) -> Any:
    return client.post(
        f"/v1/videos/{video_id}/ask",
        json={"question": "what happens", "max_new_tokens": 3, **body},
    )


def test_a_time_range_question_is_answered_over_its_chunk(client: tuple) -> None:
    http, videos = client
    whole = _ask(http, videos["long"])
    assert whole.status_code == 200, whole.text
    assert whole.json()["tokens"]["original_visual"] == 3 * 4 * 9  # 3 windows x 4 frames
    ranged = _ask(http, videos["long"], time_range=[11, 14.5])
    assert ranged.status_code == 200, ranged.text
    assert ranged.json()["tokens"]["original_visual"] == 4 * 9  # the window [10, 20) only
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "tiny-llava-ov", "video_id": videos["long"], "max_tokens": 3,
              "messages": [{"role": "user", "content": "when"}], "time_range": [0, 25]},
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert chat.json()["tokenreel"]["tokens"]["original_visual"] == 3 * 4 * 9


@pytest.mark.parametrize(
    ("video", "time_range", "code"),
    [
        ("long", [5, 5], None),
        ("long", [-1, 5], None),
        ("long", [30, 40], "time_range_out_of_bounds"),
        ("short", [0, 1], "no_time_chunks"),
    ],
)
def test_a_bad_time_range_is_a_400_naming_it(
    client: tuple, video: str, time_range: list, code: str | None
) -> None:
    http, videos = client
    response = _ask(http, videos[video], time_range=time_range)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "time_range"
    if code is not None:
        assert error["code"] == code
    assert "/tmp/" not in response.text and "Traceback" not in response.text
