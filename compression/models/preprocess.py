"""Frame preprocessing in plain torch: decoded uint8 frames -> the pixels a vision tower reads.

The Hugging Face video processors need torchvision (no CPU build on our package index), so we do
what they do ourselves, on any device:

* resize to the processor's fixed size with its resample filter, antialiased (torchvision's
  `resize(antialias=True)` on a uint8 tensor, which is what the HF torchvision backend runs, and
  what PIL does), rounded back to uint8 values;
* rescale by `rescale_factor` (1/255) and normalise with the processor's mean and std.

For LLaVA-OneVision (SigLIP-so400m) the checkpoints' processors say: 384 x 384, bicubic
(PIL resample 3), 1/255, mean = std = (0.5, 0.5, 0.5). A checkpoint that ships its own processor
settings overrides these (`FramePreprocessing.from_pretrained`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# PIL.Image.Resampling values, as HF processor configs store them, -> torch interpolate modes.
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
_FRAMES_PER_CHUNK = 16


def as_frame_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate decoded frames (uint8 [F, H, W, 3]) and return them as a torch tensor."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a numpy array or a torch tensor, got {type(frames)}")
    shape = tuple(frames.shape)
    if frames.dtype != torch.uint8 or len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
        raise ValueError(
            f"frames must be uint8 [F, H, W, 3] with F, H, W >= 1; got {frames.dtype} {shape}"
        )
    return frames


def resize_frames(video: torch.Tensor, size: tuple[int, int], resample: int = 3) -> torch.Tensor:
    """Resize float [F, 3, H, W] frames holding 0..255 values; the result is rounded and clamped
    to 0..255, as a uint8 resize would leave it. Downscaling is antialiased (PIL/torchvision)."""
    if resample not in _RESAMPLE_MODES:
        raise ValueError(
            f"unsupported resample filter {resample}; one of {sorted(_RESAMPLE_MODES)}"
        )
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    mode = _RESAMPLE_MODES[resample]
    if mode == "nearest":
        resized = F.interpolate(video, size=size, mode="nearest")
    else:
        resized = F.interpolate(video, size=size, mode=mode, antialias=True, align_corners=False)
    return resized.round().clamp(0, 255)


@dataclass(frozen=True)
class FramePreprocessing:
    """Fixed-size frame preprocessing (SigLIP-style processors).

    size: (height, width) in pixels; resample: PIL filter id (3 = bicubic);
    rescale_factor, image_mean, image_std: pixel = (value * rescale_factor - mean) / std.
    """

    size: tuple[int, int] = (384, 384)
    resample: int = 3
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be two positive sides, got {self.size}")
        if self.resample not in _RESAMPLE_MODES:
            raise ValueError(f"unsupported resample filter {self.resample}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std need 3 channels, std > 0")

    @classmethod
    def from_dict(cls, settings: dict) -> FramePreprocessing:
        """Read an HF image/video processor dict; absent keys keep the SigLIP defaults."""
        size = settings.get("size") or {}
        values = {
            "size": (size["height"], size["width"]) if "height" in size else None,
            "resample": settings.get("resample"),
            "rescale_factor": settings.get("rescale_factor"),
            "image_mean": tuple(settings["image_mean"]) if "image_mean" in settings else None,
            "image_std": tuple(settings["image_std"]) if "image_std" in settings else None,
        }
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_pretrained(cls, model: str) -> FramePreprocessing:
        """The checkpoint's video processor settings, else its image processor's, else defaults."""
        from transformers.utils import cached_file

        for filename in ("video_preprocessor_config.json", "preprocessor_config.json"):
            path = cached_file(model, filename, _raise_exceptions_for_missing_entries=False)
            if path is not None:
                with open(path, encoding="utf-8") as handle:
                    return cls.from_dict(json.load(handle))
        return cls()


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    settings: FramePreprocessing = FramePreprocessing(),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 [F, H, W, 3] frames -> float32 [F, 3, size_h, size_w] pixel values.

    Frames are converted to float a few at a time: 128 full-HD frames in float32 would need
    3 GB at once, their 384 x 384 results 0.2 GB.
    """
    mean = torch.tensor(settings.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(settings.image_std, device=device).view(1, 3, 1, 1)
    pixels = []
    for chunk in as_frame_tensor(frames).split(_FRAMES_PER_CHUNK):
        video = chunk.to(device).permute(0, 3, 1, 2).float()
        video = resize_frames(video, settings.size, settings.resample)
        pixels.append((video * settings.rescale_factor - mean) / std)
    return torch.cat(pixels)
