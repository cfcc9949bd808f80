"""Questions over a time range of a video indexed in chunks (issue 14).

`POST /v1/videos/{id}/ask` and chat completions take `time_range: [start_s, end_s]`. The API
(`chunks_for_range`) validates it against the chunks the catalog holds for the video's
video-level set and hands the replica the chunk sets that overlap it; the replica
(`range_token_set`) loads them (through its token-set cache) and pools them with
`compression.hierarchy.pool_token_sets` at the video's own config, i.e. to the budget of the
original tokens of those chunks, and the model answers over that set, told the chunks' span and
its frames' times (`Question.time_span`).

Decisions:
* A range selects whole chunks (those overlapping it): the chunk set is the unit that is stored
  and pooled; the prompt states the span of those chunks, which is what the model sees.
* Bounds: 0 <= start < end, both finite, and start before the end of the last indexed chunk
  (a live video grows, so an end past what is indexed so far is allowed, and means "up to
  now"); a video indexed in one pass has no chunks, and a range on it is a 400 that says so.
* Without a range, a chunk-indexed video's video-level set is answered with its span (0 to its
  last frame) and its frames' times in the prompt; a video indexed in one pass keeps the
  prompt without times (the paper's evaluation protocol).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from compression.hierarchy import pool_token_sets
from compression.token_set import TokenSet
from serving.errors import InvalidRequest
from storage.token_files import TokenSetLocation

if TYPE_CHECKING:  # the replica (`serving.engine`) imports this module but never the catalog
    from storage.catalog import Catalog, ChunkRecord


def check_time_range(value: Sequence[float]) -> tuple[float, float]:
    """The range as (start_s, end_s), or `InvalidRequest` (param time_range)."""
    if len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise InvalidRequest("time_range is [start_s, end_s]", param="time_range")
    start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or start >= end:
        raise InvalidRequest(
            "time_range needs finite seconds with 0 <= start_s < end_s", param="time_range"
        )
    return start, end


def chunks_for_range(
    catalog: Catalog, location: TokenSetLocation, time_range: tuple[float, float]
) -> list[ChunkRecord]:
    """The chunks of the video-level set at `location` overlapping `time_range` (validated
    against what is indexed; `InvalidRequest` otherwise)."""
    start, end = time_range
    every = catalog.list_chunks(location.video_id, location.model_id, location.config_hash)
    if not every:
        raise InvalidRequest(
            f"video {location.video_id!r} was indexed in one pass, without time chunks: a "
            "time_range needs it indexed with --chunk-seconds",
            code="no_time_chunks",
            param="time_range",
        )
    indexed_end = every[-1].end_s
    if start >= indexed_end:
        raise InvalidRequest(
            f"time_range starts at {start:g} s, after the indexed part of the video "
            f"(0-{indexed_end:g} s)",
            code="time_range_out_of_bounds",
            param="time_range",
        )
    return [c for c in every if c.start_s < end and c.end_s > start]


async def range_token_set(
    video_set: TokenSet,
    chunks: Sequence[TokenSetLocation],
    load: Callable[[TokenSetLocation], Awaitable[TokenSet]],
) -> TokenSet:
    """The chunk sets at `chunks` pooled to the video's budget over them (see the module
    docstring); `load` reads one through the replica's cache."""
    chunk_sets = [await load(location) for location in chunks]
    return pool_token_sets(chunk_sets, video_set.config).with_metadata(
        video_id=video_set.video_id, source_uri=video_set.source_uri
    )


def video_time_span(token_set: TokenSet) -> tuple[float, float] | None:
    """The span the prompt states for a video-level set: (0, its last frame) for a video
    indexed in chunks, None (no times in the prompt) for one indexed in one pass."""
    if token_set.config.chunk_seconds is None or not token_set.frame_timestamps:
        return None
    return 0.0, max(token_set.frame_timestamps)
