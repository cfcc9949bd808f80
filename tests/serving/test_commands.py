"""`tokenreel serve` / `tokenreel ask`: argument handling, and the real `tokenreel serve` in a
subprocess (it fails fast when the cluster is too small, prints one log line per request, and
stops with all of Ray's processes on SIGTERM, start-up included). The HTTP API is in
test_service.py."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import serving, tagged_processes, wait_for_ok, write_indexed_videos

from serving import ask_command, serve_command
from tokenreel.cli import build_parser


def test_parse_bytes() -> None:
    assert serve_command.parse_bytes("2GiB") == 2 * 1024**3
    assert serve_command.parse_bytes("512MB") == 512 * 10**6
    assert serve_command.parse_bytes("1000") == 1000
    for bad in ("", "2 parsecs", "-1GB", "GB"):
        with pytest.raises(argparse.ArgumentTypeError):
            serve_command.parse_bytes(bad)


def test_serve_flags_map_to_settings() -> None:
    args = build_parser("serve").parse_args(
        [
            "serve",
            "--port",
            "9000",
            "--max-batch-size",
            "4",
            "--cache-bytes",
            "1GiB",
            "--no-affinity",
        ]
    )
    settings = {k: getattr(args, k) for k in serve_command.SETTING_KEYS}
    assert settings["max_batch_size"] == 4 and settings["cache_bytes"] == 2**30
    assert settings["affinity"] is False and settings["model"] is None
    assert args.port == 9000
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--port", "70000"])


def test_ask_sends_only_the_settings_given() -> None:
    args = build_parser("ask").parse_args(["ask", "vid", "what?", "--keep-ratio", "0.25"])
    assert ask_command.request_body(args) == {"question": "what?", "merge": {"keep_ratio": 0.25}}
    args = build_parser("ask").parse_args(["ask", "vid", "what?", "--seed", "3"])
    assert ask_command.request_body(args) == {"question": "what?", "seed": 3}
    args = build_parser("ask").parse_args(["ask", "vid", "what?", "--time-range", "770", "790"])
    assert ask_command.request_body(args) == {"question": "what?", "time_range": [770.0, 790.0]}


def test_ask_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser("ask").parse_args(
        ["ask", "vid", "q", "--url", "http://127.0.0.1:9", "--timeout", "2"]
    )
    assert ask_command.run(args) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_edge_flags_map_to_settings() -> None:
    args = build_parser("serve").parse_args(
        [
            "serve",
            "--served-model-name",
            "tiny",
            "alias",
            "--expose-source-uris",
            "--request-timeout-s",
            "30",
            "--max-queued-requests",
            "8",
            "--skip-resource-check",
        ]
    )
    settings = {k: getattr(args, k) for k in serve_command.SETTING_KEYS}
    assert settings["served_model_names"] == ["tiny", "alias"]
    assert settings["expose_source_uris"] is True and settings["request_timeout_s"] == 30
    assert settings["max_queued_requests"] == 8 and args.skip_resource_check
    defaults = build_parser("serve").parse_args(["serve"])
    assert defaults.expose_source_uris is None and not defaults.skip_resource_check


# -- the real command (a subprocess with its own local Ray) ----------------------------------------


def _assert_nothing_left(marker: str) -> None:
    deadline = time.monotonic() + 30  # Ray's processes exit a moment after its shutdown
    while (left := tagged_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    names = [p.name() for p in left if p.is_running()]
    assert not names, f"orphan processes after tokenreel serve stopped: {names}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("served") / "store"
    write_indexed_videos(root, ["servedvideo01"])
    return root, "servedvideo01"


@pytest.mark.slow
def test_serve_fails_fast_when_the_cluster_cannot_hold_it(store) -> None:
    """The issue's `--min-replicas 2` on a 2-CPU host hung silently: now a clear message."""
    half = (os.cpu_count() or 2) / 2  # 2 replicas x half the CPUs + the HTTP replica's 0.1
    flags = ("--min-replicas", "2", "--max-replicas", "2", "--num-cpus", str(half))
    with serving(store[0], *flags) as served:
        output = served.process.communicate(timeout=180)[0]
        assert served.process.returncode == 2, output
        assert "cannot hold the service" in output and "--min-replicas" in output
        _assert_nothing_left(served.marker)


@pytest.mark.slow
def test_serve_logs_each_request_and_stops_cleanly_on_sigterm(store) -> None:
    root, video = store
    with serving(root, "--num-cpus", "0.5") as served:
        wait_for_ok(served, "/readyz")
        response = httpx.post(
            f"{served.url}/v1/videos/{video}/ask",
            json={"question": "what happens ?", "max_new_tokens": 3, "merge": {"layer": 2}},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        missing = httpx.get(f"{served.url}/v1/videos/0123456789abcdef", timeout=30)
        assert missing.status_code == 404
        time.sleep(2)  # the replica's log reaches this command's output through Ray
        output = served.stop()
        assert served.process.returncode == 0, output
        lines = [line for line in output.splitlines() if " -- request " in line]
        asks = [line for line in lines if f"POST /v1/videos/{video}/ask status=200" in line]
        assert len(asks) == 1, output
        assert f"video={video}" in asks[0] and "ttft_s=" in asks[0]
        assert "generated_tokens=" in asks[0]
        assert any("status=404 error=video_not_found" in line for line in lines), output
        assert "stopping..." in output
        _assert_nothing_left(served.marker)


@pytest.mark.slow
def test_sigterm_during_start_up_leaves_no_ray_processes(store) -> None:
    with serving(store[0], "--num-cpus", "0.5") as served:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until Serve starts the replicas (the phase)
            names = [p.name() for p in tagged_processes(served.marker)]
            if any("ServeReplica" in name for name in names):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("Serve never started a replica")
        output = served.stop()
        assert served.process.returncode == 0, output
        _assert_nothing_left(served.marker)
