"""Argument handling of `tokenreel serve` / `tokenreel ask` (the HTTP round trip is in
test_service.py)."""

from __future__ import annotations

import argparse

import pytest

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


def test_ask_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser("ask").parse_args(
        ["ask", "vid", "q", "--url", "http://127.0.0.1:9", "--timeout", "2"]
    )
    assert ask_command.run(args) == 1
    assert "cannot reach" in capsys.readouterr().err
