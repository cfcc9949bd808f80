"""The running service over HTTP: Ray Serve on a free loopback port, tiny model, 2 replicas.

Serve starts once for this module; the videos are indexed by the indexing job beforehand, and a
few awkward catalog entries are added (a failure whose reason quotes a server path, token sets
corrupted on disk). Deadlines, full queues and replica crashes are in test_service_limits.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from service_helpers import free_port, kill_model_replica, model_replicas, wait_for_replacement

API_KEY = "test-key-not-secret"
MERGE = {"layer": 2}  # the tiny model has 4 decoder layers
QUESTIONS = ["what happens?", "which colour dominates?", "is anything moving?"]
APP = "tokenreel-test"
ALIAS = "tiny-alias"  # a second served model name
SECRET_PATH = "/srv/private-archive/clips/secret.mp4"
CORRUPTIONS = ("flipped", "truncated", "deleted")

pytestmark = pytest.mark.slow


@dataclass
class Service:
    url: str
    videos: list[str]  # indexed video ids
    failed_video: str  # a video whose indexing failed
    model: str
    path_failed_video: str  # failed with a reason that quotes SECRET_PATH
    corrupted: dict[str, str]  # corruption -> id of an indexed video whose token set has it
    interrupted_video: str  # pending under an indexing run that ended (Ctrl-C)

    def client(self, api_key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def _index_videos(root: Path, store: str, catalog_url: str) -> tuple[list[str], str]:
    """3 small sample videos and one corrupt file, through the real indexing job."""
    from video_files import make_corrupt_video

    from compression.config import CompressionConfig
    from jobs.index import index_videos
    from storage.catalog import Catalog
    from storage.ids import video_id_for
    from tokenreel.sample_videos import make_sample_videos

    videos = root / "videos"
    make_sample_videos(videos, 3, frames=8)
    broken = make_corrupt_video(videos / "broken.mp4")
    summary = index_videos(
        str(videos),
        store_url=store,
        catalog_url=catalog_url,
        model="tiny-llava-ov",
        config=CompressionConfig(retention_ratio=0.1),
        frames=8,
        progress=False,
    )
    assert (summary.indexed, summary.failed) == (3, 1), summary
    indexed = Catalog(catalog_url).list_videos("indexed")
    return sorted(r.video_id for r in indexed), video_id_for(str(broken))


def _add_awkward_videos(store: str, catalog_url: str, video: str) -> tuple[str, dict[str, str]]:
    """A failure quoting a server path, and copies of `video`'s token set corrupted on disk."""
    from storage.catalog import Catalog, IndexedVideo
    from storage.ids import video_id_for
    from storage.token_files import read_token_set, write_token_sets

    catalog = Catalog(catalog_url, store_url=store)
    source = catalog.locate(video)
    assert source is not None
    reason = f"file not found: {SECRET_PATH} (and [Errno 2] '{SECRET_PATH}')"
    catalog.record_failed(SECRET_PATH, source.model_id, source.config_hash, reason)
    token_set = read_token_set(source)
    corrupted = {}
    for kind in CORRUPTIONS:
        uri = f"/srv/private-archive/{kind}.mp4"
        copy = token_set.with_metadata(video_id=f"corrupt-{kind}", source_uri=uri)
        (location,) = write_token_sets(store, [copy])
        catalog.record_indexed([IndexedVideo(uri, copy.content_hash, location)])
        path = Path(location.file_url.removeprefix("file://"))
        middle = location.offset + location.length // 2
        if kind == "flipped":
            data = bytearray(path.read_bytes())
            data[middle] ^= 0xFF
            path.write_bytes(bytes(data))
        elif kind == "truncated":
            path.write_bytes(path.read_bytes()[:middle])
        else:
            path.unlink()
        corrupted[kind] = copy.video_id
    return video_id_for(SECRET_PATH), corrupted


def _add_interrupted_video(catalog_url: str, model_id: str, config_hash: str) -> str:
    """A video registered by an indexing run that then stopped (as on Ctrl-C) before it."""
    from storage.catalog import Catalog

    catalog = Catalog(catalog_url)
    run_id = catalog.start_run({})
    (video_id,) = catalog.register_pending(
        ["/archive/cut-short.mp4"], model_id, config_hash, run_id=run_id
    )
    catalog.finish_run(run_id, {"indexed": 0, "interrupted": 1})
    return video_id


@pytest.fixture(scope="module")
def service(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from ray import serve

    from serving.app import build_app
    from storage.catalog import Catalog

    root = tmp_path_factory.mktemp("serve")
    store = str(root / "store")
    catalog_url = f"sqlite:///{root / 'catalog.sqlite'}"
    videos, failed = _index_videos(root, store, catalog_url)
    path_failed, corrupted = _add_awkward_videos(store, catalog_url, videos[0])
    key = Catalog(catalog_url).get_video(videos[0])
    interrupted = _add_interrupted_video(catalog_url, key.model_id, key.config_hash)
    saved_key = os.environ.get("TOKENREEL_API_KEY")
    os.environ["TOKENREEL_API_KEY"] = API_KEY
    try:
        app = build_app(
            {
                "model": "tiny-llava-ov",
                "store_url": store,
                "catalog_url": catalog_url,
                "device": "cpu",
                "num_cpus": 0.5,
                "min_replicas": 2,
                "max_replicas": 2,
                "max_batch_size": 16,
                "batch_wait_timeout_s": 0.05,
                "cache_bytes": 10**7,
                "served_model_names": ["tiny-llava-ov", ALIAS],
            }
        )
    finally:
        if saved_key is None:
            os.environ.pop("TOKENREEL_API_KEY")
        else:
            os.environ["TOKENREEL_API_KEY"] = saved_key
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=APP, route_prefix="/")
    try:
        yield Service(
            f"http://127.0.0.1:{port}",
            videos,
            failed,
            "tiny-llava-ov",
            path_failed,
            corrupted,
            interrupted,
        )
    finally:
        serve.shutdown()


def ask(client: httpx.Client, video: str, question: str, **body: object) -> httpx.Response:
    return client.post(
        f"/v1/videos/{video}/ask",
        json={"question": question, "max_new_tokens": 6, "merge": MERGE, **body},
    )


def assert_clean_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    text = response.text
    assert "Traceback" not in text and "/work/" not in text and "/tmp/" not in text
    assert "/srv/" not in text
    error = response.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


# -- answers ------------------------------------------------------------------------------------


def test_ask_returns_the_answer_with_its_figures(service: Service) -> None:
    with service.client() as client:
        response = ask(client, service.videos[0], QUESTIONS[0])
    assert response.status_code == 200, response.text
    body = response.json()
    tokens, flops = body["tokens"], body["flops"]
    assert body["video_id"] == service.videos[0] and body["model"] == service.model
    assert body["merge"] == {
        "method": "text_aware",
        "layer": 2,
        "keep_ratio": 0.5,
        "lam": 0.5,
        "later_steps": [],
    }
    assert tokens["visual_in"] < tokens["original_visual"]
    assert tokens["visual_after_merge"] == -(-tokens["visual_in"] // 2)  # ceil(R |V|)
    assert 1 <= tokens["completion"] <= 6
    assert 0 < flops["ratio_visual_only"] < 1 and 0 < flops["ratio_with_text"] < 1
    assert all(value >= 0 for value in body["timings"].values())


def test_second_question_reuses_the_cached_token_set(service: Service) -> None:
    with service.client() as client:
        ask(client, service.videos[1], QUESTIONS[0])
        again = ask(client, service.videos[1], QUESTIONS[1])
    # Affinity routing sends the video to the replica that loaded it.
    assert again.json()["cache_hit"] is True


def _ray_metrics_text() -> str:
    """What Prometheus would scrape from this node's Ray metrics endpoint."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_metrics_reach_the_prometheus_endpoint(service: Service) -> None:
    with service.client() as client:
        assert ask(client, service.videos[0], QUESTIONS[2]).status_code == 200
    wanted = [
        "tokenreel_http_requests_total{",
        "tokenreel_http_request_seconds_bucket{",
        "tokenreel_token_cache_lookups_total{",
        'stage="after_merge"',
        "tokenreel_prompt_tokens_total{",
        "tokenreel_generation_tokens_total{",
        "tokenreel_prefix_cache_queries_total{",
        "tokenreel_time_to_first_token_seconds_bucket{",
        "tokenreel_request_time_per_output_token_seconds_bucket{",
        "tokenreel_request_queue_time_seconds_bucket{",
        "tokenreel_num_requests_running{",
        "tokenreel_num_requests_waiting{",
        "tokenreel_answer_seconds_count{",
        "tokenreel_batch_size_bucket{",
    ]
    deadline = time.monotonic() + 90  # replicas push their metrics every few seconds
    while True:
        text = _ray_metrics_text()
        missing = [name for name in wanted if name not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"metrics never exported: {missing}"
    requests = [line for line in text.splitlines() if "tokenreel_http_requests_total{" in line]
    assert any('endpoint="' in line and 'status="200"' in line for line in requests)


def test_default_merge_layer_fits_the_model(service: Service) -> None:
    with service.client() as client:
        response = client.post(
            f"/v1/videos/{service.videos[0]}/ask", json={"question": "q", "max_new_tokens": 2}
        )
    assert response.status_code == 200, response.text
    assert response.json()["merge"]["layer"] == 3


# -- OpenAI compatibility -----------------------------------------------------------------------


def _openai(service: Service):
    import openai

    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0)


def _messages(video: str, question: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": f"tokenreel://{video}"}},
                {"type": "text", "text": question},
            ],
        },
    ]


def test_openai_client_chat_completion(service: Service) -> None:
    client = _openai(service)
    completion = client.chat.completions.create(
        model=service.model,
        messages=_messages(service.videos[2], QUESTIONS[2]),
        max_tokens=6,
        extra_body={"merge": MERGE},
    )
    same = client.chat.completions.create(
        model=service.model,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTIONS[2]},
        ],
        max_tokens=6,
        extra_body={"merge": MERGE, "video_id": service.videos[2]},
    )
    assert completion.choices[0].message.content == same.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    with service.client() as http:
        alone = ask(http, service.videos[2], QUESTIONS[2], system="Answer briefly.").json()
    assert completion.choices[0].message.content == alone["answer"]


def test_openai_client_streaming_matches_the_whole_answer(service: Service) -> None:
    client = _openai(service)
    kwargs = {
        "model": service.model,
        "messages": _messages(service.videos[0], QUESTIONS[1]),
        "max_tokens": 6,
        "extra_body": {"merge": MERGE},
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1


def test_stream_ends_with_done(service: Service) -> None:
    body = {
        "model": service.model,
        "messages": _messages(service.videos[1], QUESTIONS[0]),
        "max_tokens": 4,
        "stream": True,
        "merge": MERGE,
    }
    with service.client() as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)


def test_openai_errors_are_openai_shaped(service: Service) -> None:
    import openai

    client = _openai(service)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-4o", messages=_messages(service.videos[0], "q"), max_tokens=2
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=service.model, messages=_messages("0000000000000000", "q"), max_tokens=2
        )
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=service.model, messages=[{"role": "user", "content": "no video"}], max_tokens=2
        )
    assert error.value.param == "messages"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="wrong", max_retries=0).models.list()


# -- catalog endpoints --------------------------------------------------------------------------


def test_models_and_videos_listing(service: Service) -> None:
    with service.client() as client:
        models = client.get("/v1/models").json()
        listing = client.get("/v1/videos", params={"status": "indexed"}).json()
        one = client.get(f"/v1/videos/{service.videos[0]}").json()
        failed = client.get(f"/v1/videos/{service.failed_video}").json()
    assert [m["id"] for m in models["data"]] == [service.model, ALIAS]
    assert {m["root"] for m in models["data"]} == {service.model}
    indexed = set(service.videos) | set(service.corrupted.values())
    assert {v["video_id"] for v in listing["data"]} == indexed
    assert listing["total"] == len(indexed)
    assert one["status"] == "indexed" and one["visual_tokens"] > 0
    assert failed["status"] == "failed" and failed["error"]


def test_each_model_name_has_its_card(service: Service) -> None:
    with service.client() as client:
        for name in (service.model, ALIAS):
            card = client.get(f"/v1/models/{name}")
            assert card.status_code == 200 and card.json()["id"] == name
        missing = assert_clean_error(client.get("/v1/models/gpt-4o"), 404, param="model")
    assert missing["code"] == "model_not_found"
    assert _openai(service).models.retrieve(ALIAS).id == ALIAS


def test_the_alias_answers_under_its_own_name(service: Service) -> None:
    client = _openai(service)
    kwargs = {"messages": _messages(service.videos[1], QUESTIONS[1]), "max_tokens": 4}
    kwargs["extra_body"] = {"merge": MERGE}
    by_alias = client.chat.completions.create(model=ALIAS, **kwargs)
    by_id = client.chat.completions.create(model=service.model, **kwargs)
    assert by_alias.model == ALIAS and by_id.model == service.model
    assert by_alias.choices[0].message.content == by_id.choices[0].message.content


def test_a_conversation_over_one_video(service: Service) -> None:
    client = _openai(service)
    first = client.chat.completions.create(
        model=service.model,
        messages=_messages(service.videos[0], QUESTIONS[0]),
        max_tokens=4,
        extra_body={"merge": MERGE},
    )
    turns = [
        *_messages(service.videos[0], QUESTIONS[0]),
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": QUESTIONS[1]},
    ]
    second = client.chat.completions.create(
        model=service.model, messages=turns, max_tokens=4, extra_body={"merge": MERGE}
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.tokenreel["tokens"]["visual_in"] == first.tokenreel["tokens"]["visual_in"]


# -- what the API shows of the server ---------------------------------------------------------


def test_no_server_path_or_source_uri_is_shown(service: Service) -> None:
    """The issue: a 409 quoted the failed video's local path; /v1/videos showed every uri."""
    with service.client() as client:
        conflict = ask(client, service.path_failed_video, "q")
        video = client.get(f"/v1/videos/{service.path_failed_video}")
        listing = client.get("/v1/videos", params={"limit": 500})
        search = client.get("/v1/videos", params={"search": "secret"})
    error = assert_clean_error(conflict, 409)
    assert error["code"] == "video_failed" and "file not found: <path>" in error["message"]
    for response in (video, listing):
        assert response.status_code == 200 and "/srv/" not in response.text
    assert video.json()["uri"] is None and "<path>" in video.json()["error"]
    assert all(v["uri"] is None for v in listing.json()["data"])
    # Search matches video ids only here: a source URI is no oracle (the reason quotes it).
    assert search.status_code == 200 and search.json()["total"] == 0


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_token_set_is_a_clean_token_set_unreadable(service: Service, kind: str) -> None:
    video = service.corrupted[kind]
    with service.client() as client:
        asked = ask(client, video, "q")
        streamed = client.post(
            "/v1/chat/completions",
            json={
                "model": service.model,
                "messages": _messages(video, "q"),
                "max_tokens": 2,
                "stream": True,
                "merge": MERGE,
            },
        )
    for response in (asked, streamed):
        error = assert_clean_error(response, 500)
        assert error["code"] == "token_set_unreadable" and video in error["message"]
        assert "parquet" not in response.text


# -- errors ---------------------------------------------------------------------------------------


def test_api_key_is_required_except_for_probes_and_docs(service: Service) -> None:
    with service.client(api_key=None) as anonymous:
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
        for path in ("/v1/models", "/v1/videos", f"/v1/videos/{service.videos[0]}"):
            assert_clean_error(anonymous.get(path), 401)
        assert_clean_error(ask(anonymous, service.videos[0], "q"), 401)
        assert_clean_error(anonymous.get("/no/such/path"), 401)
    with service.client(api_key="wrong") as wrong:
        assert_clean_error(wrong.get("/v1/videos"), 401)


def test_openapi_declares_the_bearer_scheme_and_the_errors(service: Service) -> None:
    """So that Swagger UI's Authorize button works in /docs when the API key is on."""
    with service.client(api_key=None) as anonymous:
        document = anonymous.get("/openapi.json").json()
        docs = anonymous.get("/docs")
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the API key",
    }
    paths = document["paths"]
    assert paths["/v1/videos"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/readyz"]["get"]["security"] == []
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "401", "404", "409", "500", "503", "504"):
        reference = chat[status]["content"]["application/json"]["schema"]["$ref"]
        assert reference.endswith("/ErrorResponse"), status
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_probes(service: Service) -> None:
    with service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}


def test_unknown_video_is_404(service: Service) -> None:
    with service.client() as client:
        error = assert_clean_error(ask(client, "0123456789abcdef", "q"), 404)
        assert_clean_error(client.get("/v1/videos/0123456789abcdef"), 404)
    assert error["code"] == "video_not_found"


def test_failed_video_is_409_with_its_reason(service: Service) -> None:
    with service.client() as client:
        error = assert_clean_error(ask(client, service.failed_video, "q"), 409)
    assert error["code"] == "video_failed" and "failed indexing" in error["message"]


def test_interrupted_video_is_409_and_listed_as_interrupted(service: Service) -> None:
    """The issue: after Ctrl-C the run's videos stayed pending, a 409 "still being indexed"
    forever."""
    video = service.interrupted_video
    with service.client() as client:
        error = assert_clean_error(ask(client, video, "q"), 409)
        one = client.get(f"/v1/videos/{video}").json()
        listing = client.get("/v1/videos", params={"status": "interrupted"}).json()
        pending = client.get("/v1/videos", params={"status": "pending"}).json()
    assert error["code"] == "video_interrupted" and "rerun" in error["message"]
    assert one["status"] == "interrupted"
    assert [v["video_id"] for v in listing["data"]] == [video] and pending["total"] == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"question": "x" * 5000}, "question"),
        ({"question": ""}, "question"),
        ({"question": "q", "merge": {"layer": 4}}, "merge.layer"),
        ({"question": "q", "merge": {"keep_ratio": 0}}, "merge.keep_ratio"),
        ({"question": "q", "temperature": 9}, "temperature"),
        ({"question": "q", "max_new_tokens": 100000}, "max_new_tokens"),
        ({"question": "q", "max_new_tokens": "10"}, "max_new_tokens"),
        ({"question": "q", "max_new_tokens": True}, "max_new_tokens"),
        ({"question": "q", "unknown": 1}, "unknown"),
    ],
)
def test_invalid_settings_are_400_naming_the_field(
    service: Service, body: dict, param: str
) -> None:
    with service.client() as client:
        response = client.post(f"/v1/videos/{service.videos[0]}/ask", json=body)
    assert_clean_error(response, 400, param=param)


def test_malformed_bodies_and_ids_are_400(service: Service) -> None:
    with service.client() as client:
        url = f"/v1/videos/{service.videos[0]}/ask"
        not_json = client.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_clean_error(not_json, 400)
        assert_clean_error(client.post(url, json=["a list"]), 400)
        assert_clean_error(ask(client, "..etc", "q"), 400, param="video_id")
        assert_clean_error(ask(client, "bad id", "q"), 400, param="video_id")
        assert_clean_error(ask(client, "..%2Fetc", "q"), 404)  # decoded to a path: no route
        assert_clean_error(ask(client, "a" * 200, "q"), 400, param="video_id")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"offset": 1180591620717411303424}, "offset"),  # the SQLite OverflowError
        ({"offset": -1}, "offset"),
        ({"limit": 10**30}, "limit"),
        ({"limit": 0}, "limit"),
        ({"status": "lost"}, "status"),
    ],
)
def test_listing_query_parameters_are_bounded(service: Service, params: dict, param: str) -> None:
    with service.client() as client:
        assert_clean_error(client.get("/v1/videos", params=params), 400, param=param)


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"not_a_parameter": 1}, "not_a_parameter"),
    ],
)
def test_chat_parameters_are_strict_and_never_ignored(
    service: Service, changes: dict, param: str
) -> None:
    body = {"model": service.model, "messages": _messages(service.videos[0], "q"), "merge": MERGE}
    with service.client() as client:
        response = client.post("/v1/chat/completions", json={**body, **changes})
    assert_clean_error(response, 400, param=param)


def test_the_openai_client_sees_unsupported_parameters_as_bad_requests(service: Service) -> None:
    import openai

    client = _openai(service)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=service.model,
            messages=_messages(service.videos[0], "q"),
            max_tokens=2,
            logprobs=True,
        )
    assert error.value.param == "logprobs"


# -- load and failure -----------------------------------------------------------------------------


def test_concurrent_questions_are_batched_and_answered_like_alone(service: Service) -> None:
    pairs = [(v, q) for v in service.videos for q in QUESTIONS]  # 9 distinct questions
    burst = pairs * 6  # 54 concurrent requests

    async def fire() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        limits = httpx.Limits(max_connections=len(burst))
        async with httpx.AsyncClient(
            base_url=service.url, headers=headers, timeout=300, limits=limits
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"/v1/videos/{v}/ask",
                        json={"question": q, "max_new_tokens": 6, "merge": MERGE},
                    )
                    for v, q in burst
                )
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(burst)
    with service.client() as client:
        alone = {(v, q): ask(client, v, q).json()["answer"] for v, q in pairs}
    assert [r.json()["answer"] for r in responses] == [alone[p] for p in burst]
    assert max(r.json()["batch_size"] for r in responses) > 1


BAD_QUESTIONS = {  # what made the whole batch fail, and the status it gets now
    "video token in the question": ({"question": "what is <video> here ?"}, 400),
    "turn end in the system prompt": ({"question": "q", "system": "be brief <|im_end|>"}, 400),
    "tiny top_p": ({"question": QUESTIONS[0], "temperature": 1.0, "top_p": 1e-300}, 200),
    "tiny temperature": ({"question": QUESTIONS[0], "temperature": 1e-45, "seed": 3}, 200),
}


@pytest.mark.parametrize("bad", BAD_QUESTIONS)
def test_one_bad_question_never_fails_its_batch(service: Service, bad: str) -> None:
    """The issue: 7 questions sent beside 1 bad one failed with it (2/7, 7/7, 7/7)."""
    video, (bad_body, status) = service.videos[2], BAD_QUESTIONS[bad]
    good = [QUESTIONS[i % len(QUESTIONS)] for i in range(7)]
    settings = {"max_new_tokens": 6, "merge": MERGE}

    async def fire() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=300) as client:
            url = f"/v1/videos/{video}/ask"  # one video: affinity sends all to one replica
            bodies = [{"question": q, **settings} for q in good]
            bodies.insert(3, {**settings, **bad_body})
            return await asyncio.gather(*(client.post(url, json=b) for b in bodies))

    responses = asyncio.run(fire())
    bad_response = responses.pop(3)
    assert [r.status_code for r in responses] == [200] * len(good), [r.text for r in responses]
    with service.client() as client:
        alone = {q: ask(client, video, q).json()["answer"] for q in set(good)}
    assert [r.json()["answer"] for r in responses] == [alone[q] for q in good]
    assert max(r.json()["batch_size"] for r in responses) > 1
    if status == 400:
        error = assert_clean_error(bad_response, 400, param="question")
        assert error["code"] == "invalid_question" and "control token" in error["message"]
    else:  # valid settings: sampling so sharp that it is greedy
        assert bad_response.status_code == 200, bad_response.text
        assert bad_response.json()["answer"] == alone[bad_body["question"]]


def test_service_recovers_when_a_model_replica_is_killed_under_load(service: Service) -> None:
    assert len(model_replicas()) == 2
    killed: list[str] = []

    async def load_and_kill() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=300) as client:
            requests = [
                asyncio.ensure_future(
                    client.post(
                        f"/v1/videos/{v}/ask",
                        json={"question": q, "max_new_tokens": 6, "merge": MERGE},
                    )
                )
                for v in service.videos
                for q in QUESTIONS * 4
            ]
            # Kill once answering is under way: the others are queued or in a forward pass.
            await asyncio.wait(requests, return_when=asyncio.FIRST_COMPLETED)
            killed.append(kill_model_replica())
            return await asyncio.gather(*requests)

    during = asyncio.run(load_and_kill())
    # In-flight questions are retried on the other replica, or end in a clean 503.
    for response in during:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert_clean_error(response, 503)
    wait_for_replacement(APP, killed[0], 2)
    with service.client() as client:
        after = [ask(client, v, QUESTIONS[0]) for v in service.videos]
    assert [r.status_code for r in after] == [200] * len(after)


# -- command line ---------------------------------------------------------------------------------


def test_tokenreel_ask_prints_the_answer_and_figures(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenreel.cli import main

    monkeypatch.setenv("TOKENREEL_API_KEY", API_KEY)
    argv = ["ask", service.videos[0], QUESTIONS[0], "--url", service.url]
    code = main([*argv, "--max-new-tokens", "6", "--merge-layer", "2"])
    out = capsys.readouterr().out
    with service.client() as client:
        expected = ask(client, service.videos[0], QUESTIONS[0]).json()["answer"]
    assert code == 0
    assert out.startswith(expected + "\n")
    assert "FLOPs" in out and "after layer 2" in out

    assert main([*argv, "--merge-layer", "9"]) == 1
    assert "HTTP 400" in capsys.readouterr().err
    monkeypatch.setenv("TOKENREEL_API_KEY", "wrong")
    assert main(argv) == 1
    assert "HTTP 401" in capsys.readouterr().err
