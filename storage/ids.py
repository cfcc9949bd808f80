"""Video ids: stable, filesystem- and URL-safe strings derived from a video's source URI.

Every id is validated before it touches a path, a query or a file, so a hostile id (``../x``,
a 10 kB string, a NUL byte) is a clear ValueError, never a surprise further down.
"""

from __future__ import annotations

import hashlib
import re

VIDEO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_URI_LENGTH = 4096


def validate_uri(uri: object) -> str:
    """Return `uri` if it is a non-empty string without NUL/newlines of at most 4096 characters."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"a video URI must be a non-empty string, got {uri!r}")
    if len(uri) > MAX_URI_LENGTH:
        raise ValueError(f"video URI longer than {MAX_URI_LENGTH} characters: {uri[:80]!r}...")
    if any(c in uri for c in "\x00\r\n"):
        raise ValueError(f"video URI contains a NUL or newline character: {uri!r}")
    return uri


def video_id_for(uri: str) -> str:
    """The stable id of the video at `uri`: the first 16 hex digits of sha256(uri).

    Same URI, same id, on every machine. 64 bits: the chance of any collision among 10**8
    videos is about 3e-4 (birthday bound n**2 / 2**65).
    """
    return hashlib.sha256(validate_uri(uri).encode("utf-8")).hexdigest()[:16]


def validate_video_id(video_id: object) -> str:
    """Return `video_id` if it matches ``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$``, else ValueError."""
    if not isinstance(video_id, str) or not VIDEO_ID_PATTERN.fullmatch(video_id):
        raise ValueError(
            f"invalid video id {video_id!r}: expected 1-128 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit"
        )
    return video_id
