"""`GET /v1/videos/{id}/tokens` one window of frames at a time (issue 16): a long video's view is
bounded, each window holds exactly the tokens of its frames (the matching slice of the whole
assignment, and the rows it points to), and a bad window is a 400 naming its parameter. Over
HTTP without Ray (the API's routes; no model is asked anything), on token sets built directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from compression import CompressionConfig, compress_video
from compression.token_set import EncodedVideo, TokenSet, grid_index
from serving.api import token_set_view
from serving.schemas import MAX_VIEW_FRAMES

HEIGHT, WIDTH = 3, 3
LONG_STEPS, PER_STEP = 150, 2  # 300 sampled frames, two per grid step (as Qwen2.5-VL)
SHORT_STEPS = 4


def _token_set(video_id: str, steps: int, per_step: int) -> TokenSet:
    """A VisionZip token set (kept, merged and dropped tokens) of `steps` grid steps over
    `steps * per_step` sampled frames, of random tokens."""
    grid = (steps, HEIGHT, WIDTH)
    count = math.prod(grid)
    generator = torch.Generator().manual_seed(steps)
    encoded = EncodedVideo(
        tokens=torch.randn(count, 8, generator=generator),
        index=grid_index(grid),
        scores=torch.rand(count, generator=generator),
        grid=grid,
        frame_timestamps=tuple(0.5 * f for f in range(steps * per_step)),
    )
    config = CompressionConfig(retention_ratio=0.25, method="visionzip")
    return compress_video(encoded, config).with_metadata(
        model_id="tiny-llava-ov", video_id=video_id, source_uri=f"/srv/archive/{video_id}.mp4"
    )


@pytest.fixture(scope="module")
def sets() -> dict[str, TokenSet]:
    return {
        "long": _token_set("longvideo01", LONG_STEPS, PER_STEP),
        "short": _token_set("shortvideo02", SHORT_STEPS, 1),
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, sets: dict) -> Iterator[TestClient]:
    from serving.api import ApiServer, create_api
    from serving.settings import ServeSettings
    from storage import open_store

    store = open_store(str(tmp_path_factory.mktemp("views") / "store"))
    store.save(list(sets.values()))
    settings = ServeSettings(
        model="tiny-llava-ov", store_url=store.store_url, catalog_url=store.catalog.url
    )
    # The class under Serve's ingress wrapper (whose __init__ is Serve's own, a coroutine); the
    # token views never call the model deployment, so it has no handle.
    plain = ApiServer.__mro__[1]
    server = plain.__new__(plain)
    plain.__init__(server, None, settings, None)
    with TestClient(create_api(server)) as test_client:
        yield test_client


def _view(client: TestClient, token_set: TokenSet, **window: object) -> dict:
    response = client.get(f"/v1/videos/{token_set.video_id}/tokens", params=window)
    assert response.status_code == 200, response.text
    return response.json()


def _check_window(view: dict, token_set: TokenSet, frame_start: int, frame_count: int) -> None:
    """`view` holds exactly the tokens of the frames [frame_start, frame_start + frame_count):
    those of the grid steps the frames fall in, and the rows those tokens point to or that are
    centred in those steps."""
    per_step = token_set.frame_count // token_set.grid[0]
    frames = range(frame_start, min(frame_start + frame_count, token_set.frame_count))
    steps = sorted({f // per_step for f in frames})
    cells = HEIGHT * WIDTH
    assignment = token_set.assignment.reshape(token_set.grid[0], cells)[steps].flatten()
    assert (view["frame_start"], view["frame_count"]) == (frame_start, len(frames))
    assert (view["step_start"], view["step_count"]) == (steps[0], len(steps))
    assert view["frames_total"] == view["frames"] == token_set.frame_count
    assert view["frames_per_step"] == per_step
    assert view["frame_timestamps"] == [token_set.frame_timestamps[f] for f in frames]
    assert view["assignment"] == assignment.tolist()
    centred = {r for r, t in enumerate(token_set.index[:, 0].tolist()) if t in steps}
    rows = sorted(centred | {r for r in assignment.tolist() if r >= 0})
    assert view["rows"] == rows
    assert view["kind"] == token_set.kind[rows].tolist()
    assert view["index"] == token_set.index[rows].tolist()
    assert view["size"] == token_set.size[rows].tolist()
    # The whole video's figures stay the whole video's.
    assert view["grid"] == list(token_set.grid)
    assert (view["original_count"], view["kept_count"]) == (
        token_set.original_count,
        token_set.kept_count,
    )


def test_a_long_video_is_viewed_one_bounded_window_at_a_time(client: TestClient, sets) -> None:
    long_set = sets["long"]
    view = _view(client, long_set)  # no window asked: the first one
    _check_window(view, long_set, 0, MAX_VIEW_FRAMES)
    # Bounded: the first 32 of 150 steps, not an entry for every token of the video.
    assert len(view["assignment"]) == MAX_VIEW_FRAMES // PER_STEP * HEIGHT * WIDTH
    assert len(view["rows"]) < long_set.kept_count
    assert {-1, *view["rows"]} >= set(view["assignment"])  # all three fates in reach
    assert {0, 1} == set(view["kind"]) and -1 in view["assignment"]


@pytest.mark.parametrize(
    ("frame_start", "frame_count"),
    [(64, 64), (63, 10), (1, 1), (290, 64), (299, 64), (0, 1)],
)
def test_a_window_holds_exactly_its_frames_tokens(
    client: TestClient, sets: dict, frame_start: int, frame_count: int
) -> None:
    long_set = sets["long"]
    view = _view(client, long_set, frame_start=frame_start, frame_count=frame_count)
    _check_window(view, long_set, frame_start, frame_count)


def test_the_windows_page_through_the_whole_video(client: TestClient, sets: dict) -> None:
    long_set = sets["long"]
    assignment, start = [], 0
    while start < long_set.frame_count:
        view = _view(client, long_set, frame_start=start)
        assignment += view["assignment"]
        start += view["frame_count"]
    assert assignment == long_set.assignment.tolist()


def test_a_short_video_is_one_window_read_as_before(client: TestClient, sets: dict) -> None:
    """Its first window is the whole video: every field means what it meant before windows."""
    short = sets["short"]
    view = _view(client, short)
    _check_window(view, short, 0, MAX_VIEW_FRAMES)
    assert view["frame_count"] == view["frames"] == SHORT_STEPS
    assert view["assignment"] == short.assignment.tolist()
    assert view["rows"] == list(range(short.kept_count))
    assert view["kind"] == short.kind.tolist() and view["index"] == short.index.tolist()
    assert view["frame_timestamps"] == list(short.frame_timestamps)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("frame_start", -1),
        ("frame_start", LONG_STEPS * PER_STEP),  # one past the last frame
        ("frame_start", "first"),
        ("frame_count", 0),
        ("frame_count", MAX_VIEW_FRAMES + 1),
        ("frame_count", "1.5"),
    ],
)
def test_a_bad_window_is_a_400_naming_it(
    client: TestClient, sets: dict, param: str, value: object
) -> None:
    response = client.get(f"/v1/videos/{sets['long'].video_id}/tokens", params={param: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_openapi_document_declares_the_window(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/videos/{video_id}/tokens"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}
    assert params["frame_start"]["minimum"] == 0
    assert params["frame_count"]["maximum"] == MAX_VIEW_FRAMES


def test_without_recorded_frames_or_fates_a_window_is_of_grid_steps(sets: dict) -> None:
    """A token set made before frames or fates were kept: one panel per grid step, and the rows
    centred in the window's steps."""
    legacy = dataclasses.replace(sets["long"], assignment=None, frame_timestamps=())
    view = token_set_view(legacy.video_id, legacy, 100, MAX_VIEW_FRAMES).model_dump()
    assert (view["frames_total"], view["frames_per_step"]) == (LONG_STEPS, 1)
    assert (view["frame_start"], view["frame_count"]) == (100, LONG_STEPS - 100)
    assert (view["step_start"], view["step_count"]) == (100, LONG_STEPS - 100)
    assert view["assignment"] is None and view["frame_timestamps"] == []
    steps = legacy.index[:, 0]
    assert view["rows"] == torch.nonzero(steps >= 100).flatten().tolist()
