"""Frame preprocessing against PIL's resize (the HF slow image processors' path) and the
documented SigLIP processor constants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compression.models.preprocess import FramePreprocessing, as_frame_tensor, preprocess_frames

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """Natural-looking content: smooth colour waves (PIL rounds to uint8 between its two resize
    passes, so only sharp edges could differ from a single-pass float resize by more than 1)."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack(
            [127.5 + 120 * np.sin(x / 17.0 + c + f) * np.cos(y / 23.0 - c) for c in range(3)], -1
        )
        for f in range(count)
    ]
    return np.stack(frames).round().astype(np.uint8)


def pil_reference(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize with PIL bicubic, rescale 1/255, normalise with mean = std = 0.5: [F, H, W, 3]."""
    resized = [
        np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.Resampling.BICUBIC))
        for f in frames
    ]
    return (np.stack(resized).astype(np.float32) / 255.0 - 0.5) / 0.5


def test_defaults_are_the_siglip_processor_constants():
    settings = FramePreprocessing()
    assert settings.size == (384, 384)
    assert settings.resample == 3  # PIL bicubic
    assert settings.rescale_factor == pytest.approx(1 / 255)
    assert settings.image_mean == settings.image_std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("shape", [(240, 320), (100, 90), (720, 1280)])
def test_matches_pil_bicubic_within_one_level(shape):
    frames = smooth_frames(2, *shape)
    ours = preprocess_frames(frames).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (2, 384, 384, 3)
    levels = np.abs(ours - pil_reference(frames, (384, 384))) * 127.5  # one uint8 level = 1
    assert levels.max() <= 1.0 + 1e-3
    assert (levels > 0.5).mean() < 0.3


def test_frames_at_the_target_size_are_only_rescaled():
    frames = np.random.default_rng(0).integers(0, 256, (3, 70, 70, 3), dtype=np.uint8)
    pixels = preprocess_frames(frames, FramePreprocessing(size=(70, 70)))
    expected = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1
    torch.testing.assert_close(pixels, expected)


def test_settings_from_a_processor_config(tmp_path):
    config = {
        "size": {"height": 224, "width": 256},
        "resample": 2,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "rescale_factor": 0.5,
    }
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(config))
    settings = FramePreprocessing.from_pretrained(str(tmp_path))
    assert settings == FramePreprocessing((224, 256), 2, 0.5, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    frames = np.full((1, 10, 10, 3), 4, dtype=np.uint8)
    pixels = preprocess_frames(frames, settings)
    assert pixels.shape == (1, 3, 224, 256)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([4.75, 3.6, 2.8333333]))


def test_a_directory_without_processor_files_gets_the_defaults(tmp_path):
    assert FramePreprocessing.from_pretrained(str(tmp_path)) == FramePreprocessing()


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8, 3), dtype=np.float32),
        np.zeros((8, 8, 3), dtype=np.uint8),
        np.zeros((2, 8, 8, 4), dtype=np.uint8),
        np.zeros((0, 8, 8, 3), dtype=np.uint8),
        [[1, 2, 3]],
    ],
)
def test_bad_frames_are_rejected(frames):
    with pytest.raises((ValueError, TypeError)):
        as_frame_tensor(frames)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError):
        FramePreprocessing(size=(0, 384))
    with pytest.raises(ValueError):
        FramePreprocessing(resample=5)
    with pytest.raises(ValueError):
        FramePreprocessing(image_std=(0.5, 0.0, 0.5))


def test_long_videos_are_processed_in_chunks_with_the_same_result():
    frames = smooth_frames(20, 40, 30)  # more frames than one conversion chunk
    settings = FramePreprocessing(size=(28, 28))
    whole = preprocess_frames(frames, settings)
    one_by_one = torch.cat([preprocess_frames(f[None], settings) for f in frames])
    assert whole.shape == (20, 3, 28, 28)
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=0)
