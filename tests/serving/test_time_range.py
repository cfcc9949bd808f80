"""`time_range` on the ask and chat endpoints (issue 14): the request schemas, the range checks
and the choice of chunks, without Ray."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

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
