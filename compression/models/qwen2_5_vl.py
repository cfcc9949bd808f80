"""Qwen2.5-VL plug-in: encode a video into merged ViT tokens with contribution scores, and answer
questions over a token set with each kept token at its original 3D M-RoPE position.

Read top to bottom: frame preprocessing (what the HF video processor does, in plain torch, because
its torchvision dependency has no CPU build here), the 3D position ids (METHOD.md section 4),
the contribution scores of the last full-attention ViT block (METHOD.md section 1), then
`Qwen2_5_VLEncoder` (encoding: all an indexing worker loads) and the `Qwen2_5_VL` class: the
family's part of the `VideoLLM` protocol (the prompt and answering shared with the other plug-ins
are in `ChatVideoLLM`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compression.models.chat import ChatVideoLLM, load_checkpoint
from compression.models.decoder_loop import PromptSequence
from compression.models.encoder import ScoreHook, VisionEncoder, checked_videos
from compression.models.interface import Question
from compression.models.preprocess import FramePreprocessing, as_frame_tensor, preprocess_frames
from compression.models.registry import TINY_QWEN2_5_VL
from compression.models.vision_checkpoint import load_vision_model
from compression.token_set import EncodedVideo, grid_index

# The CLIP statistics the Qwen2-VL image and video processors normalise with
# (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------
# Frame preprocessing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoPreprocessing:
    """How frames become ViT patches; defaults are `Qwen2VLVideoProcessor`'s (the processor
    Qwen2.5-VL uses for videos): 128..768 merged tokens' worth of pixels per frame.

    A checkpoint that ships its own video processor settings overrides these
    (`VideoPreprocessing.from_pretrained`).
    """

    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        sizes = (self.patch_size, self.temporal_patch_size, self.merge_size, self.min_pixels)
        if min(sizes) < 1 or self.max_pixels < self.min_pixels:
            raise ValueError(f"invalid video preprocessing settings: {self}")

    @property
    def factor(self) -> int:
        """Frame sides are multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one flattened ViT input patch: 3 * 2 * 14 * 14 = 1176 for Qwen2.5-VL."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, settings: dict) -> VideoPreprocessing:
        """Read an HF video processor dict (`video_preprocessor_config.json`, or the
        `video_processor` entry of `processor_config.json`); absent keys keep our defaults."""
        size = settings.get("size") or {}
        values = {
            "min_pixels": settings.get("min_pixels", size.get("shortest_edge")),
            "max_pixels": settings.get("max_pixels", size.get("longest_edge")),
            "patch_size": settings.get("patch_size"),
            "temporal_patch_size": settings.get("temporal_patch_size"),
            "merge_size": settings.get("merge_size"),
            "image_mean": tuple(settings["image_mean"]) if "image_mean" in settings else None,
            "image_std": tuple(settings["image_std"]) if "image_std" in settings else None,
        }
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_pretrained(cls, model: str) -> VideoPreprocessing:
        """The checkpoint's own video processor settings, else the video processor defaults.

        Decision: a checkpoint without video settings gets `Qwen2VLVideoProcessor`'s defaults
        (what qwen-vl-utils uses too), not its image processor's 3136..12845056 pixel range,
        which HF's AutoVideoProcessor would fall back to and which lets a 32-frame HD video cost
        tens of thousands of tokens.
        """
        from transformers.utils import cached_file

        for filename in ("video_preprocessor_config.json", "processor_config.json"):
            path = cached_file(model, filename, _raise_exceptions_for_missing_entries=False)
            if path is None:
                continue
            with open(path, encoding="utf-8") as handle:
                settings = json.load(handle)
            if filename == "processor_config.json":
                settings = settings.get("video_processor")
            if settings:
                return cls.from_dict(settings)
        return cls()


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple:
    """Target (height, width) of the Qwen2-VL processors: both sides multiples of `factor`,
    area within [min_pixels, max_pixels], aspect ratio kept as closely as rounding allows."""
    if min(height, width) < 1:
        raise ValueError(f"frames must have a positive size, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height}x{width}")
    # A side that rounds to 0 leaves the area below min_pixels: the growing branch fixes it.
    target_h = round(height / factor) * factor
    target_w = round(width / factor) * factor
    if target_h * target_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        target_h = max(factor, math.floor(height / shrink / factor) * factor)
        target_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif target_h * target_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        target_h = math.ceil(height * grow / factor) * factor
        target_w = math.ceil(width * grow / factor) * factor
    return target_h, target_w


def preprocess_video(
    frames: np.ndarray | torch.Tensor,
    settings: VideoPreprocessing = VideoPreprocessing(),
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Frames -> (pixel_values_videos [T*H*W, 1176] float32, video_grid_thw (T, H, W) in patches),
    as `Qwen2VLVideoProcessor` computes them: smart resize (bicubic, antialiased, rounded back to
    uint8 like torchvision does on uint8 input), rescale by 1/255, CLIP normalisation, an odd
    frame count padded by repeating the last frame, then the flat patch layout the ViT reads
    (temporal step, merged row, merged column, row in merge group, column in merge group)."""
    video = as_frame_tensor(frames)
    size = smart_resize(
        video.shape[1], video.shape[2], settings.factor, settings.min_pixels, settings.max_pixels
    )
    fixed_size = FramePreprocessing(
        size=size, resample=3, image_mean=settings.image_mean, image_std=settings.image_std
    )
    video = preprocess_frames(video, fixed_size, device)  # [F, 3, H', W'] normalised

    tp, p, m = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    if pad := -video.shape[0] % tp:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    grid_t, grid_h, grid_w = video.shape[0] // tp, size[0] // p, size[1] // p
    patches = video.reshape(grid_t, tp, 3, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, settings.patch_dim), (grid_t, grid_h, grid_w)


def seconds_per_grid_step(timestamps: Sequence[float], temporal_patch_size: int) -> float:
    """Seconds one temporal grid step spans: temporal_patch_size / sampled fps, as the
    Qwen2.5-VL processor's `second_per_grid_ts`.

    Decision: the sampled fps is read from the frame timestamps (mean spacing of the first and
    last); with fewer than two distinct timestamps we use 1.0, the model's own default when
    `second_per_grid_ts` is not given.
    """
    if len(timestamps) < 2 or timestamps[-1] <= timestamps[0]:
        return 1.0
    spacing = (timestamps[-1] - timestamps[0]) / (len(timestamps) - 1)
    return float(temporal_patch_size * spacing)


# --------------------------------------------------------------------------------------------
# 3D M-RoPE positions (METHOD.md section 4)
# --------------------------------------------------------------------------------------------
def temporal_positions(
    steps: int, seconds_per_step: float, tokens_per_second: float
) -> torch.Tensor:
    """Temporal position id of each temporal grid step: floor(t * tokens_per_second * seconds),
    in float32 and in the order transformers multiplies them, so ids match the model's own."""
    interval = torch.tensor(tokens_per_second * seconds_per_step, dtype=torch.float32)
    return (torch.arange(steps, dtype=torch.float32) * interval).long()


def video_span_positions(
    index: torch.Tensor,
    grid: tuple[int, int, int],
    start: int,
    seconds_per_step: float,
    tokens_per_second: float,
) -> tuple[torch.Tensor, int]:
    """Position ids [3, M] of the video tokens at grid `index` [M, 3] (t, h, w, merged grid),
    for a video span that starts at position `start`, and the position where the text after
    the video starts.

    Each token keeps its original (t, h, w) position whatever subset of the video is kept. The
    text after the video starts at 1 + the largest id of the FULL video over all three rows
    (the original Qwen2-VL / Qwen2.5-VL rule, as in transformers 4.x; 5.5-5.23 use
    start + max(H, W) instead, which overlaps the temporal ids of long videos).
    """
    steps = grid[0]
    index = index.long().cpu()
    if index.ndim != 2 or index.shape[1] != 3:
        raise ValueError(f"index must be [M, 3], got {tuple(index.shape)}")
    if (index < 0).any() or (index >= torch.tensor(grid)).any():
        raise ValueError(f"index has entries outside the grid {grid}")
    times = temporal_positions(steps, seconds_per_step, tokens_per_second)
    positions = torch.stack([times[index[:, 0]], index[:, 1], index[:, 2]]) + start
    full_video_max = max(int(times[-1]), grid[1] - 1, grid[2] - 1)
    return positions, start + full_video_max + 1


def prompt_position_ids(
    prefix_len: int,
    index: torch.Tensor,
    grid: tuple[int, int, int],
    suffix_len: int,
    seconds_per_step: float,
    tokens_per_second: float,
) -> torch.Tensor:
    """Position ids [3, prefix + M + suffix] of `prefix text, video tokens, suffix text`:
    text positions are equal in all three rows and count up by one."""
    prefix = torch.arange(prefix_len).expand(3, -1)
    video, text_start = video_span_positions(
        index, grid, prefix_len, seconds_per_step, tokens_per_second
    )
    suffix = torch.arange(text_start, text_start + suffix_len).expand(3, -1)
    return torch.cat([prefix, video, suffix], dim=1)


# --------------------------------------------------------------------------------------------
# Contribution scores (METHOD.md section 1)
# --------------------------------------------------------------------------------------------
def segment_column_means(
    query: torch.Tensor, key: torch.Tensor, scaling: float, chunk: int = 1024
) -> torch.Tensor:
    """Mean over heads and queries of softmax(q k^T * scaling): the attention each key receives.

    query, key: [heads, S, head_dim] of one attention segment. The softmax runs over query
    chunks, so memory stays O(heads * chunk * S) instead of O(heads * S^2).
    """
    heads, length, _ = query.shape
    received = torch.zeros(length, dtype=torch.float32, device=query.device)
    key = key.float()
    for begin in range(0, length, chunk):
        logits = torch.matmul(query[:, begin : begin + chunk].float(), key.transpose(1, 2))
        received += torch.softmax(logits * scaling, dim=-1).sum(dim=(0, 1))
    return received / (heads * length)


class ContributionScoreHook(ScoreHook):
    """Forward pre-hook on the `attn` of the last full-attention ViT block: recomputes q and k
    from that block's (normed, window-permuted) input and reduces the attention inside each
    full-attention segment (one per temporal step of each video, `cu_seqlens`) to a score per
    patch, in the ViT's window-permuted order. The tower itself keeps running sdpa/flash.

    Decision: hooking `block.attn` rather than the block gives the input after `norm1`, the
    exact input of q/k; the two are the same layer.
    """

    def __init__(self, attention: nn.Module, chunk: int = 1024) -> None:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            apply_rotary_pos_emb_vision,
        )

        super().__init__(attention)
        self._rotate = apply_rotary_pos_emb_vision
        self._chunk = chunk
        self.patch_scores: torch.Tensor | None = None

    def score(self, module: nn.Module, hidden: torch.Tensor, kwargs: dict) -> None:
        cu_seqlens = kwargs["cu_seqlens"]
        cos, sin = kwargs["position_embeddings"]
        length = hidden.shape[0]
        qkv = module.qkv(hidden).reshape(length, 3, module.num_heads, -1)
        query, key = self._rotate(qkv[:, 0], qkv[:, 1], cos, sin)  # [S, heads, head_dim]
        query, key = query.transpose(0, 1), key.transpose(0, 1)
        bounds = cu_seqlens.tolist()
        self.patch_scores = torch.cat(
            [
                segment_column_means(query[:, a:b], key[:, a:b], module.scaling, self._chunk)
                for a, b in itertools.pairwise(bounds)
            ]
        )


def merged_token_scores(
    patch_scores: torch.Tensor, window_index: torch.Tensor, merge_unit: int
) -> torch.Tensor:
    """Per-patch scores in window-permuted order -> one score per merged token, original order.

    The ViT keeps each 2x2 merge group contiguous, so a merged token's score is the mean of its
    `merge_unit` consecutive patches; `argsort(window_index)` undoes the window permutation,
    exactly as the model reorders its merged features.
    """
    grouped = patch_scores.reshape(-1, merge_unit).mean(dim=1)
    return grouped[torch.argsort(window_index.to(grouped.device))]


# --------------------------------------------------------------------------------------------
# The encoder (what an encode worker loads) and the plug-in
# --------------------------------------------------------------------------------------------
class Qwen2_5_VLEncoder(VisionEncoder):
    """`VideoEncoder` for Qwen2.5-VL: ViT + merger tokens with contribution scores.

    vision: a `Qwen2_5_VLModel` (`...ForConditionalGeneration.model`) of which only `visual` (the
    ViT with its patch merger) is used; a vision-only load (`from_pretrained`) holds nothing else.
    """

    family = "qwen2_5_vl"
    VISION_PARTS = ("visual",)

    def __init__(
        self,
        vision: nn.Module,
        model_id: str,
        preprocessing: VideoPreprocessing = VideoPreprocessing(),
        score_chunk: int = 1024,
    ) -> None:
        """score_chunk: queries per softmax chunk of the contribution scores (bounds their
        memory)."""
        super().__init__(vision, model_id)
        self.preprocessing = preprocessing
        self.score_chunk = score_chunk
        config = vision.config.vision_config
        if not config.fullatt_block_indexes:
            raise ValueError("the ViT config names no full-attention block to score with")
        checks = {
            "patch_size": (config.patch_size, preprocessing.patch_size),
            "temporal_patch_size": (config.temporal_patch_size, preprocessing.temporal_patch_size),
            "spatial_merge_size": (config.spatial_merge_size, preprocessing.merge_size),
        }
        for name, (model_value, ours) in checks.items():
            if model_value != ours:
                raise ValueError(f"preprocessing {name}={ours} but the model uses {model_value}")
        self._score_block = vision.visual.blocks[max(config.fullatt_block_indexes)]

    @classmethod
    def from_pretrained(
        cls, model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Qwen2_5_VLEncoder:
        """Only the vision side of a checkpoint (hub id or local directory): the language model
        is neither built nor read (`compression.models.vision_checkpoint`)."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        vision, read = load_vision_model(
            Qwen2_5_VLForConditionalGeneration, model, cls.VISION_PARTS, device=device, dtype=dtype
        )
        encoder = cls(vision, model, VideoPreprocessing.from_pretrained(model))
        encoder.checkpoint_read = read
        return encoder

    @torch.no_grad()
    def encode_batch(
        self,
        videos: Sequence[np.ndarray | torch.Tensor],
        timestamps: Sequence[Sequence[float] | None] | None = None,
    ) -> list[EncodedVideo]:
        """All videos go through the ViT as one packed sequence (its attention never crosses a
        temporal step, let alone a video), then are split back; scores come from the same pass."""
        if not videos:
            return []
        from transformers.vision_utils import get_vision_window_index

        videos, timestamps = checked_videos(videos, timestamps)
        started = time.perf_counter()
        pixels, grids = [], []
        for frames in videos:
            video_pixels, grid = preprocess_video(frames, self.preprocessing, self.device)
            pixels.append(video_pixels)
            grids.append(grid)
        grid_thw = torch.tensor(grids, dtype=torch.long, device=self.device)
        vision = self.vision.config.vision_config
        with ContributionScoreHook(self._score_block.attn, self.score_chunk) as hook:
            features = self.vision.get_video_features(
                torch.cat(pixels).to(self.dtype), grid_thw
            ).pooler_output
        window_index, _ = get_vision_window_index(
            grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        scores = merged_token_scores(hook.patch_scores, window_index, vision.spatial_merge_size**2)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started

        merge = vision.spatial_merge_size
        sizes = [len(tokens) for tokens in features]
        encoded = []
        for tokens, video_scores, (t, h, w), stamps in zip(
            features, scores.split(sizes), grids, timestamps, strict=True
        ):
            grid = (t, h // merge, w // merge)
            stamps = tuple(float(s) for s in stamps) if stamps is not None else ()
            step = seconds_per_grid_step(stamps, self.preprocessing.temporal_patch_size)
            encoded.append(
                EncodedVideo(
                    tokens=tokens,
                    index=grid_index(grid),
                    scores=video_scores.float().cpu(),
                    grid=grid,
                    frame_timestamps=stamps,
                    extras={"seconds_per_grid_t": step},
                    # A batch shares one ViT pass: each video is charged its share by tokens.
                    encode_s=elapsed * len(tokens) / sum(sizes),
                    score_s=hook.elapsed_s * len(tokens) / sum(sizes),
                )
            )
        return encoded


class Qwen2_5_VL(ChatVideoLLM):
    """`VideoLLM` for Qwen2.5-VL: ViT + merger tokens with contribution scores; answers with
    each kept token at its original 3D position and the merge inside the LLM at layer K."""

    family = "qwen2_5_vl"
    encoder_class = Qwen2_5_VLEncoder

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        model_id: str,
        preprocessing: VideoPreprocessing = VideoPreprocessing(),
        score_chunk: int = 1024,
    ) -> None:
        """model: a `Qwen2_5_VLForConditionalGeneration` in eval mode, on its device and dtype;
        tokenizer: its tokenizer (with the chat template); model_id: stored in token sets;
        preprocessing and score_chunk configure the `Qwen2_5_VLEncoder` over its vision side."""
        encoder = Qwen2_5_VLEncoder(model.model, model_id, preprocessing, score_chunk)
        super().__init__(model, tokenizer, model_id, encoder)

    @staticmethod
    def input_frame_size(config) -> None:
        """None: frames keep their aspect and are sized by a pixel budget, not one square."""
        return None

    @classmethod
    def from_pretrained(
        cls, model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Qwen2_5_VL:
        """Load a checkpoint (hub id or local directory) with sdpa attention.

        dtype defaults to bfloat16 on CUDA and float32 elsewhere.
        """
        from transformers import Qwen2_5_VLForConditionalGeneration

        network, tokenizer = load_checkpoint(
            Qwen2_5_VLForConditionalGeneration, model, device, dtype
        )
        return cls(network, tokenizer, model, VideoPreprocessing.from_pretrained(model))

    @classmethod
    def tiny(cls, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        """The tiny random-weight model "tiny-qwen2.5-vl" (same weights in every process).

        Its preprocessing caps frames at 112 x 112 pixels (4 x 4 merged tokens per temporal step)
        so that tests and the offline demo stay small.
        """
        from compression.models.tiny import build_tiny_qwen2_5_vl

        network, tokenizer = build_tiny_qwen2_5_vl()
        network = network.to(device=torch.device(device), dtype=dtype or torch.float32)
        small = VideoPreprocessing(min_pixels=56 * 56, max_pixels=112 * 112)
        return cls(network, tokenizer, TINY_QWEN2_5_VL, small)

    # -- answer -------------------------------------------------------------------------------
    def _system_message(self, text: str) -> dict:
        # The Qwen2.5-VL chat template prints a system turn's content as a plain string.
        return {"role": "system", "content": text}

    @torch.no_grad()
    def prompt_sequence(self, question: Question) -> PromptSequence:
        """The question as the decoder loop's input: chat-template text embeddings around the
        token set's tokens, each at its original 3D position (METHOD.md section 4).

        The chat template wraps the video as `<|vision_start|><|video_pad|><|vision_end|>`; the
        token set's tokens take the place of the single `<|video_pad|>`.

        Decision: the merge's text tokens T start after `<|vision_end|>` (the video's closing
        marker belongs to the video wrapper, not to the question).
        """
        prefix, suffix, text, visual = self._embed_prompt(question)
        token_set = question.token_set
        step = float(token_set.extras.get("seconds_per_grid_t", 1.0))
        positions = prompt_position_ids(
            len(prefix),
            token_set.index,
            token_set.grid,
            len(suffix),
            step,
            self.model.config.vision_config.tokens_per_second,
        )
        start, stop = len(prefix), len(prefix) + len(visual)
        return PromptSequence(
            embeds=torch.cat([text[:start], visual, text[start:]]),
            positions=positions.to(self.device),
            visual=slice(start, stop),
            text_start=stop + 1 if suffix[:1] == [self.model.config.vision_end_token_id] else stop,
            visual_sizes=token_set.size.to(self.device),
            prefix_key=tuple(prefix),
        )
