"""Vision-only encoders (`load_video_encoder`) from sharded checkpoints saved here by the tiny
models of both families: what is read from disk (spied on `safetensors.safe_open`, the only way
the loader reads tensors), that no language-model tensor is read or held, and that encodings
equal the whole model's loaded from the same checkpoint, exactly (fp32)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch

from compression.models import VideoEncoder, VideoLLM, load_video_encoder, load_video_llm
from compression.models.llava_onevision import LlavaOneVision
from compression.models.qwen2_5_vl import Qwen2_5_VL

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Per family: the tiny plug-in, its processor settings file, the vision modules of the inner HF
# model, and how the checkpoint (as save_pretrained writes it) names the vision tensors.
FAMILIES = {
    "llava_onevision": (
        LlavaOneVision,
        ("preprocessor_config.json", {"size": {"height": 70, "width": 70}}),
        ("vision_tower", "multi_modal_projector", "image_newline"),
        ("vision_tower.", "multi_modal_projector.", "image_newline"),
    ),
    "qwen2_5_vl": (
        Qwen2_5_VL,
        (
            "video_preprocessor_config.json",
            {"size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, "merge_size": 2},
        ),
        ("visual",),
        ("visual.",),
    ),
}


class SafeOpenSpy:
    """Wraps the real `safetensors.safe_open`: every file opened and tensor read is recorded,
    then the real call runs."""

    def __init__(self, real) -> None:
        self.real = real
        self.files: list[str] = []
        self.tensors: dict[str, int] = {}

    def __call__(self, path, *args, **kwargs):
        self.files.append(os.path.basename(path))
        return _SpiedHandle(self, self.real(path, *args, **kwargs))


class _SpiedHandle:
    def __init__(self, spy: SafeOpenSpy, handle) -> None:
        self.spy, self.handle = spy, handle

    def __enter__(self):
        self.handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def keys(self):
        return self.handle.keys()

    def get_tensor(self, key):
        tensor = self.handle.get_tensor(key)
        self.spy.tensors[key] = tensor.numel() * tensor.element_size()
        return tensor


def save_checkpoint(llm, directory: Path, settings: tuple[str, dict], shard: str | None) -> None:
    """The whole tiny model as a checkpoint: weights (sharded when `shard` is a size),
    tokenizer, processor settings."""
    if shard is None:
        llm.model.save_pretrained(directory)
    else:
        llm.model.save_pretrained(directory, max_shard_size=shard)
    llm.tokenizer.save_pretrained(directory)
    filename, values = settings
    (directory / filename).write_text(json.dumps(values))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    family = request.param
    plugin, settings, parts, prefixes = FAMILIES[family]
    llm = plugin.tiny()
    directory = tmp_path_factory.mktemp(family)
    save_checkpoint(llm, directory, settings, shard="40KB")
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    return family, llm, directory, weight_map, parts, prefixes


def frames(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 90, 110, 3), dtype=np.uint8)


def test_only_the_vision_tensors_are_read(checkpoint, monkeypatch) -> None:
    family, llm, directory, weight_map, parts, prefixes = checkpoint
    vision_keys = {k for k in weight_map if k.startswith(prefixes)}
    shards: dict[str, set[str]] = {}
    for key, filename in weight_map.items():
        shards.setdefault(filename, set()).add(key)
    language_only = {f for f, keys in shards.items() if not keys & vision_keys}
    assert len(shards) > 3 and language_only  # the checkpoint this test needs

    spy = SafeOpenSpy(safetensors.safe_open)
    monkeypatch.setattr(safetensors, "safe_open", spy)
    encoder = load_video_encoder(str(directory))
    monkeypatch.undo()

    assert isinstance(encoder, VideoEncoder) and not isinstance(encoder, VideoLLM)
    assert encoder.family == family and encoder.model_id == str(directory)
    assert set(spy.tensors) == vision_keys  # every vision tensor, nothing else
    assert not language_only & set(spy.files)  # language-model shards are never opened
    assert set(spy.files) == {weight_map[k] for k in vision_keys}
    # The whole model's vision modules, counted independently of the checkpoint.
    whole = {
        name: tensor
        for name, tensor in llm.model.model.state_dict().items()
        if name.split(".")[0] in parts
    }
    assert len(spy.tensors) == len(whole)
    assert sum(spy.tensors.values()) == sum(t.numel() * t.element_size() for t in whole.values())
    # The documented record says the same as the spy.
    read = encoder.checkpoint_read
    assert read.tensors == spy.tensors and sorted(read.files) == sorted(set(spy.files))
    assert read.skipped == len(weight_map) - len(vision_keys)
    # What the encoder holds: the vision modules and nothing of the language model.
    assert not hasattr(encoder.vision, "language_model")
    assert sum(p.numel() for p in encoder.vision.parameters()) == sum(
        p.numel() for name, p in llm.model.model.named_parameters() if name.split(".")[0] in parts
    )


def test_encodings_equal_the_whole_models(checkpoint) -> None:
    """Same tokens, scores, grid and index, exactly, as the whole model loaded from the same
    checkpoint (fp32, CPU): a batch of two videos and a single one."""
    _, _, directory, *_ = checkpoint
    encoder = load_video_encoder(str(directory))
    whole = load_video_llm(str(directory))
    assert encoder.preprocessing == whole.preprocessing
    videos = [frames(4, seed=1), frames(2, seed=2)]
    stamps = [[0.5 * i for i in range(len(v))] for v in videos]
    for ours, theirs in zip(
        encoder.encode_batch(videos, stamps), whole.encode_batch(videos, stamps), strict=True
    ):
        assert torch.equal(ours.tokens, theirs.tokens)
        assert torch.equal(ours.scores, theirs.scores)
        assert torch.equal(ours.index, theirs.index) and ours.grid == theirs.grid
        assert ours.extras == theirs.extras and ours.frame_timestamps == theirs.frame_timestamps
    single = frames(3, seed=3)
    assert torch.equal(encoder.encode(single).tokens, whole.encode(single).tokens)
    assert torch.equal(encoder.encode(single).scores, whole.encode(single).scores)


def test_a_single_file_checkpoint_loads_too(tmp_path) -> None:
    plugin, settings, *_ = FAMILIES["llava_onevision"]
    llm = plugin.tiny()
    save_checkpoint(llm, tmp_path, settings, shard=None)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    encoder = load_video_encoder(str(tmp_path))
    assert encoder.checkpoint_read.files == ["model.safetensors"]
    assert not any("language_model" in key for key in encoder.checkpoint_read.tensors)
    video = frames(2, seed=4)
    assert torch.equal(encoder.encode(video).tokens, llm.encode(video).tokens)


def test_a_checkpoint_without_a_vision_tensor_is_refused(checkpoint, tmp_path) -> None:
    """A vision tensor the index does not list would otherwise keep its random (meta) init."""
    _, _, directory, weight_map, _, prefixes = checkpoint
    for path in directory.iterdir():
        (tmp_path / path.name).symlink_to(path)
    dropped = sorted(k for k in weight_map if k.startswith(prefixes))[0]
    index = {"metadata": {}, "weight_map": {k: v for k, v in weight_map.items() if k != dropped}}
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lacks 1 vision tensors"):
        load_video_encoder(str(tmp_path))


def test_tiny_models_by_name_give_their_encoder() -> None:
    for name, plugin in (("tiny-llava-ov", LlavaOneVision), ("tiny-qwen2.5-vl", Qwen2_5_VL)):
        encoder = load_video_encoder(name)
        assert isinstance(encoder, plugin.encoder_class) and encoder.model_id == name
        video = frames(2, seed=5)
        assert torch.equal(encoder.encode(video).tokens, plugin.tiny().encode(video).tokens)


@pytest.mark.parametrize("name", ["", "  ", None])
def test_load_video_encoder_rejects_empty_names(name) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        load_video_encoder(name)


def test_bf16_encodings_equal_the_whole_models_too(checkpoint) -> None:
    """The dtype encode workers run in on a GPU: both loaders cast the fp32 checkpoint alike."""
    _, _, directory, *_ = checkpoint
    encoder = load_video_encoder(str(directory), dtype=torch.bfloat16)
    whole = load_video_llm(str(directory), dtype=torch.bfloat16)
    assert encoder.dtype == whole.dtype == torch.bfloat16
    video = frames(2, seed=6)
    ours, theirs = encoder.encode(video), whole.encode(video)
    assert torch.equal(ours.tokens, theirs.tokens) and torch.equal(ours.scores, theirs.scores)
