"""Failure reasons without server paths (issue 12); the service-level check is in
test_service.py."""

from __future__ import annotations

import pytest

from serving.redact import strip_paths


@pytest.mark.parametrize(
    ("reason", "stripped"),
    [
        ("file not found: /srv/videos/a.mp4", "file not found: <path>"),
        ("[Errno 2] No such file: '/data/my videos/x.mp4'", "[Errno 2] No such file: '<path>'"),
        (
            "cannot open file:///tmp/a.mp4 (3/4 frames, and/or)",
            "cannot open <path> (3/4 frames, and/or)",
        ),
        ("decord failed on ~/clips/a.mp4", "decord failed on <path>"),
        ("bad C:\\videos\\a.mp4 here", "bad <path> here"),
        ("bad s3://bucket/key.mp4 here", "bad <source> here"),
        ("the video stream has no frames", "the video stream has no frames"),
    ],
)
def test_paths_and_uris_are_removed(reason: str, stripped: str) -> None:
    assert strip_paths(reason) == stripped


def test_exposed_uris_stay_but_local_paths_never() -> None:
    assert strip_paths("bad s3://b/k.mp4", keep_uris=True) == "bad s3://b/k.mp4"
    assert strip_paths("bad /srv/a.mp4 and file:///x", keep_uris=True) == "bad <path> and <path>"


def test_the_videos_own_source_is_removed_even_when_relative() -> None:
    assert strip_paths("cannot read clips/a b.mp4: boom", "clips/a b.mp4") == (
        "cannot read <path>: boom"
    )
    assert strip_paths("gone: s3://b/k.mp4", "s3://b/k.mp4") == "gone: <source>"
    assert strip_paths("gone: s3://b/k.mp4", "s3://b/k.mp4", keep_uris=True) == (
        "gone: s3://b/k.mp4"
    )
