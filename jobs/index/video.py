"""One video, end to end: its bytes -> F sampled frames -> visual tokens -> one compressed token
set per outer config, with the metadata that keys it in the store.

The one way every caller indexes a video: the Ray job's decode stage calls `sample_video` and its
encode stage `compress_encoded` (decoding and encoding scale apart there), the evaluator calls
`index_video`, and the benchmarks `compress_encoded` on frames of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jobs.index.decode import DecodeSettings, shared_decoder
from jobs.index.sources import local_copy
from storage.ids import video_id_for

if TYPE_CHECKING:  # torch: the decode workers, which only sample, stay light
    from compression import CompressionConfig, EncodedVideo, TokenSet
    from compression.models import VideoLLM


@dataclass(frozen=True)
class SampledVideo:
    """The sampled frames of the video at `uri` (uint8 [F, H, W, 3]), their timestamps in
    seconds, and the sha256 of the bytes they were decoded from."""

    uri: str
    content_hash: str
    frames: np.ndarray
    timestamps: tuple[float, ...]


def sample_video(uri: str, settings: DecodeSettings) -> SampledVideo:
    """Fetch and hash the video's bytes, decode its sampled frames under the time limit.

    Raises `DecodeError` (not a readable video) or `OSError` (cannot be read): the video's
    fault, which callers record as its failure."""
    with local_copy(uri) as copy:
        decoded = shared_decoder().decode(copy.path, settings)
    return SampledVideo(uri, copy.content_hash, decoded.frames, tuple(decoded.timestamps))


def compress_encoded(
    encoded: EncodedVideo,
    configs: Sequence[CompressionConfig],
    *,
    model_id: str,
    uri: str,
    content_hash: str,
) -> list[TokenSet]:
    """The outer stage under each config, on the CPU, with the video's key metadata."""
    from compression import compress_video

    metadata = {
        "model_id": model_id,
        "video_id": video_id_for(uri),
        "source_uri": uri,
        "content_hash": content_hash,
    }
    return [compress_video(encoded, c).with_metadata(**metadata).to("cpu") for c in configs]


def index_video(
    llm: VideoLLM, uri: str, settings: DecodeSettings, configs: Sequence[CompressionConfig]
) -> list[TokenSet]:
    """Decode, encode once, compress under every config: the token sets of one video."""
    video = sample_video(uri, settings)
    encoded = llm.encode(video.frames, video.timestamps)
    return compress_encoded(
        encoded, configs, model_id=llm.model_id, uri=uri, content_hash=video.content_hash
    )
