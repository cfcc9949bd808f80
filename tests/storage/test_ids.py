from __future__ import annotations

import pytest

from storage.ids import validate_uri, validate_video_id, video_id_for


def test_video_id_is_stable_and_valid() -> None:
    a = video_id_for("s3://bucket/videos/a.mp4")
    assert a == video_id_for("s3://bucket/videos/a.mp4")
    assert a != video_id_for("s3://bucket/videos/b.mp4")
    assert len(a) == 16 and validate_video_id(a) == a


@pytest.mark.parametrize(
    "bad",
    ["", "../etc/passwd", "a/b", ".hidden", "-x", "a" * 129, "a\x00b", "a b", "é", None, 42],
)
def test_invalid_video_ids_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid video id"):
        validate_video_id(bad)


@pytest.mark.parametrize("good", ["a", "A.b_c-9", "0" * 128, "e6d48eabd560bc60"])
def test_valid_video_ids_pass(good: str) -> None:
    assert validate_video_id(good) == good


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "x\x00", "u" * 4097, None])
def test_invalid_uris_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="URI"):
        validate_uri(bad)
