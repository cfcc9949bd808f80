"""From an indexed video to its figure: the token set from the store, its sampled frames decoded
again from the source, and (for a question) the answer with the tokens kept at layer K."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from compression.token_set import TokenSet
from jobs.visualize.render import render_token_fates

if TYPE_CHECKING:
    from compression.models import Answer
    from storage import Store


@dataclass
class Visualization:
    """What `visualize_video` drew: the figure, its token set, and the answer when asked."""

    image: Image.Image
    token_set: TokenSet
    frames: np.ndarray
    answer: Answer | None = None


def resolve_video_id(video: str) -> str:
    """A video id as given, or the id of a video named by its path/URI (as the indexer names it)."""
    from jobs.index.sources import normalize_uri
    from storage.ids import VIDEO_ID_PATTERN, video_id_for

    if "/" not in video and "://" not in video and VIDEO_ID_PATTERN.fullmatch(video):
        return video
    return video_id_for(normalize_uri(video))


def decode_sampled_frames(token_set: TokenSet, frame_size: int | None = None) -> np.ndarray:
    """The token set's sampled frames, decoded again from its source (the same uniform sampling
    of `frame_count` frames the indexer used); refuses a source whose bytes or sampled
    timestamps changed since indexing."""
    from jobs.index.decode import DecodeSettings, shared_decoder
    from jobs.index.sources import local_copy

    if not token_set.source_uri or not token_set.frame_count:
        raise ValueError("the token set names no source video or no sampled frames")
    settings = DecodeSettings(num_frames=token_set.frame_count, frame_size=frame_size)
    with local_copy(token_set.source_uri) as copy:
        if token_set.content_hash and copy.content_hash != token_set.content_hash:
            raise ValueError(f"{token_set.source_uri} changed since it was indexed")
        decoded = shared_decoder().decode(copy.path, settings)
    if not np.allclose(decoded.timestamps, token_set.frame_timestamps, atol=1e-3):
        raise ValueError(
            f"re-decoding {token_set.source_uri} sampled frames at {decoded.timestamps}, "
            f"the token set at {token_set.frame_timestamps}"
        )
    return decoded.frames


def visualize_video(
    video: str,
    store: Store,
    *,
    model_id: str | None = None,
    config_hash: str | None = None,
    question: str | None = None,
    merge_method: str = "text_aware",
    merge_layer: int | None = None,
    keep_ratio: float = 0.5,
    lam: float = 0.5,
    device: str = "cpu",
    panel_width: int = 192,
    columns: int = 8,
) -> Visualization:
    """Draw an indexed video's token fates (and, for a question, what layer K kept).

    video: a video id, or the path/URI it was indexed from. store: a `storage.Store`.
    model_id / config_hash select the token set (default: the most recently written one).
    merge_*: the in-LLM merge for the question (`MergeConfig`); K defaults to
    `compression.default_merge_layer`.
    """
    from compression.config import MergeConfig, default_merge_layer
    from compression.models import GenerationConfig, Question, load_video_llm

    token_set = store.load(resolve_video_id(video), model_id, config_hash)
    frames = decode_sampled_frames(token_set, frame_size=panel_width)
    config = token_set.config
    caption = [
        _clip(token_set.source_uri),
        f"{token_set.model_id}: {config.method} at r = {config.retention_ratio:g}, "
        f"{token_set.kept_count} of {token_set.original_count} tokens kept",
    ]
    answer = None
    if question:
        llm = load_video_llm(token_set.model_id, device=device)
        if merge_layer is None:
            layer = default_merge_layer(llm.num_layers, merge_method)
        else:
            layer = merge_layer
        if not 0 < layer < llm.num_layers:
            raise ValueError(f"merge layer K must lie in [1, {llm.num_layers - 1}], got {layer}")
        merge = MergeConfig(merge_method, layer, keep_ratio, lam)
        [answer] = llm.answer([Question(token_set, question)], merge, GenerationConfig())
        caption += [_clip(f"Q: {question}"), _clip(f"A: {answer.text.strip()}")]
    kept = None if answer is None else answer.kept_visual
    image = render_token_fates(
        frames, token_set, kept_rows=kept, panel_width=panel_width, columns=columns,
        caption=caption,
    )  # fmt: skip
    return Visualization(image, token_set, frames, answer)


def _clip(text: str, limit: int = 140) -> str:
    """One caption line: long questions, answers and URIs are cut, not drawn off the figure."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
