"""The encode actors' loader: by name it gives a vision-only encoder, never the whole Video-LLM
(issue 13: no language-model weights on the encode workers)."""

from __future__ import annotations

from pathlib import Path

from compression.models import VideoEncoder, VideoLLM, load_video_llm
from jobs.index import ModelLoader


def test_by_name_loads_only_the_vision_side(tmp_path: Path) -> None:
    tiny = ModelLoader.by_name("tiny-llava-ov").load(device="cpu")
    assert isinstance(tiny, VideoEncoder) and not isinstance(tiny, VideoLLM)

    whole = load_video_llm("tiny-qwen2.5-vl")
    whole.model.save_pretrained(tmp_path, max_shard_size="40KB")
    loader = ModelLoader.by_name(str(tmp_path))
    encoder = loader.load(device="cpu")
    assert isinstance(encoder, VideoEncoder) and not isinstance(encoder, VideoLLM)
    assert encoder.model_id == loader.model_id == str(tmp_path)
    read = encoder.checkpoint_read.tensors
    assert read and all(key.startswith("visual.") for key in read)
