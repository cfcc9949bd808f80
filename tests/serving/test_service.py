"""The running service over HTTP: Ray Serve on a free loopback port, tiny model, 2 replicas.

Serve starts once for this module; the videos are indexed by the indexing job beforehand.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-not-secret"
MERGE = {"layer": 2}  # the tiny model has 4 decoder layers
QUESTIONS = ["what happens?", "which colour dominates?", "is anything moving?"]

pytestmark = pytest.mark.slow


@dataclass
class Service:
    url: str
    videos: list[str]  # indexed video ids
    failed_video: str  # a video whose indexing failed
    model: str

    def client(self, api_key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@pytest.fixture(scope="module")
def service(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from ray import serve

    from serving.app import build_app

    root = tmp_path_factory.mktemp("serve")
    store = str(root / "store")
    catalog_url = f"sqlite:///{root / 'catalog.sqlite'}"
    videos, failed = _index_videos(root, store, catalog_url)
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
            }
        )
    finally:
        if saved_key is None:
            os.environ.pop("TOKENREEL_API_KEY")
        else:
            os.environ["TOKENREEL_API_KEY"] = saved_key
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name="tokenreel-test", route_prefix="/")
    try:
        yield Service(f"http://127.0.0.1:{port}", videos, failed, "tiny-llava-ov")
    finally:
        serve.shutdown()


def ask(client: httpx.Client, video: str, question: str, **body: object) -> httpx.Response:
    return client.post(
        f"/v1/videos/{video}/ask",
        json={"question": question, "max_new_tokens": 6, "merge": MERGE, **body},
    )


def assert_clean_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    text = response.text
    assert "Traceback" not in text and "/work/" not in text and "/tmp/" not in text
    error = response.json()["error"]
    assert error["message"]
    return error


# -- answers ------------------------------------------------------------------------------------


def test_ask_returns_the_answer_with_its_figures(service: Service) -> None:
    with service.client() as client:
        response = ask(client, service.videos[0], QUESTIONS[0])
    assert response.status_code == 200, response.text
    body = response.json()
    tokens, flops = body["tokens"], body["flops"]
    assert body["video_id"] == service.videos[0] and body["model"] == service.model
    assert body["merge"] == {"method": "text_aware", "layer": 2, "keep_ratio": 0.5, "lam": 0.5}
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
        'kind="visual_after_merge"',
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
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model=service.model, messages=[{"role": "user", "content": "no video"}], max_tokens=2
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="wrong", max_retries=0).models.list()


# -- catalog endpoints --------------------------------------------------------------------------


def test_models_and_videos_listing(service: Service) -> None:
    with service.client() as client:
        models = client.get("/v1/models").json()
        listing = client.get("/v1/videos", params={"status": "indexed"}).json()
        one = client.get(f"/v1/videos/{service.videos[0]}").json()
        failed = client.get(f"/v1/videos/{service.failed_video}").json()
        docs = client.get("/docs")
        schema = client.get("/openapi.json").json()
    assert [m["id"] for m in models["data"]] == [service.model]
    assert {v["video_id"] for v in listing["data"]} == set(service.videos)
    assert listing["total"] == len(service.videos)
    assert one["status"] == "indexed" and one["visual_tokens"] > 0
    assert failed["status"] == "failed" and failed["error"]
    assert docs.status_code == 200
    assert "/v1/chat/completions" in schema["paths"]


# -- errors ---------------------------------------------------------------------------------------


def test_api_key_is_required_except_for_healthz(service: Service) -> None:
    with service.client(api_key=None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        for path in ("/v1/models", "/v1/videos", "/docs", "/openapi.json"):
            assert_clean_error(anonymous.get(path), 401)
        assert_clean_error(ask(anonymous, service.videos[0], "q"), 401)
    with service.client(api_key="wrong") as wrong:
        assert_clean_error(wrong.get("/v1/videos"), 401)


def test_unknown_video_is_404(service: Service) -> None:
    with service.client() as client:
        error = assert_clean_error(ask(client, "0123456789abcdef", "q"), 404)
        assert_clean_error(client.get("/v1/videos/0123456789abcdef"), 404)
    assert error["code"] == "video_not_found"


def test_failed_video_is_409_with_its_reason(service: Service) -> None:
    with service.client() as client:
        error = assert_clean_error(ask(client, service.failed_video, "q"), 409)
    assert error["code"] == "video_failed" and "failed indexing" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"question": "x" * 5000},
        {"question": ""},
        {"question": "q", "merge": {"layer": 4}},
        {"question": "q", "merge": {"keep_ratio": 0}},
        {"question": "q", "temperature": 9},
        {"question": "q", "max_new_tokens": 100000},
        {"question": "q", "unknown": 1},
    ],
)
def test_out_of_range_settings_are_422(service: Service, body: dict) -> None:
    with service.client() as client:
        response = client.post(f"/v1/videos/{service.videos[0]}/ask", json=body)
    assert_clean_error(response, 422)


def test_malformed_bodies_and_ids_are_422(service: Service) -> None:
    with service.client() as client:
        url = f"/v1/videos/{service.videos[0]}/ask"
        not_json = client.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_clean_error(not_json, 422)
        assert_clean_error(client.post(url, json=["a list"]), 422)
        assert_clean_error(ask(client, "..etc", "q"), 422)
        assert_clean_error(ask(client, "bad id", "q"), 422)
        assert_clean_error(ask(client, "..%2Fetc", "q"), 404)  # decoded to a path: no route
        assert_clean_error(ask(client, "a" * 200, "q"), 422)


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


def _model_replicas() -> list[tuple[str, str]]:
    import ray

    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "ModelServer" in actor["name"] and actor["name"].startswith("SERVE_REPLICA")
    ]


def _wait_for_replacement(killed: str, count: int, timeout_s: float = 90) -> None:
    """Until Serve runs `count` healthy model replicas again, none of them the killed one."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [name for name, _ in _model_replicas()]
        status = serve.status().applications["tokenreel-test"].deployments["ModelServer"]
        running = status.replica_states.get("RUNNING", 0)
        replaced = killed not in names and len(names) == count and running == count
        if replaced and status.status == "HEALTHY":
            return
        time.sleep(0.5)
    raise AssertionError(f"ModelServer did not get back to {count} running replicas")


def test_service_recovers_when_a_model_replica_is_killed_under_load(service: Service) -> None:
    import ray

    replicas = _model_replicas()
    assert len(replicas) == 2
    killed, namespace = replicas[0]

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
            ray.kill(ray.get_actor(killed, namespace=namespace), no_restart=True)
            return await asyncio.gather(*requests)

    during = asyncio.run(load_and_kill())
    # In-flight questions are retried on the other replica, or end in a clean 503.
    for response in during:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert_clean_error(response, 503)
    _wait_for_replacement(killed, 2)
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
    assert "HTTP 422" in capsys.readouterr().err
    monkeypatch.setenv("TOKENREEL_API_KEY", "wrong")
    assert main(argv) == 1
    assert "HTTP 401" in capsys.readouterr().err
