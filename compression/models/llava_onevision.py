"""LLaVA-OneVision plug-in: encode a video into pooled SigLIP tokens with contribution scores, and
answer questions over a token set with the merge inside the LLM at layer K.

Read top to bottom: the contribution scores (METHOD.md section 1, a forward pre-hook on the
feature layer's attention), then `LlavaOneVisionEncoder` (encoding: all an indexing worker loads)
and the `LlavaOneVision` class: the family's part of the `VideoLLM` protocol (the prompt and
answering shared with the other plug-ins are in `ChatVideoLLM`).

Decisions the docs leave open, made here:

* Token grid: the frames' 27 x 27 SigLIP patches are projected and bilinearly pooled (ceil) to
  14 x 14 exactly as HF's `get_video_features` does; the trailing `image_newline` it appends is
  not a video token and is dropped from the token set.
* answer() puts the model's `image_newline` right after the token set's tokens, as the HF path
  does after every video, so a full token set reproduces HF's forward exactly. It is not counted
  as a visual token (not merged, not in `layer_visual_tokens`), and the merge's text tokens T
  start after it (it belongs to the video wrapper, not to the question).
* Positions: the token set's tokens take consecutive 1D positions (METHOD.md section 4).
* Scores: mean attention each patch receives from all patches of its frame, mean over heads
  (`head_reduction="max"` takes the max over heads instead), pooled to the token grid with the
  model's own `apply_pooling`. The feature layer is `vision_feature_layer` (the last listed one
  when it is a list).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from compression.models.chat import ChatVideoLLM, load_checkpoint
from compression.models.decoder_loop import PromptSequence
from compression.models.encoder import ScoreHook, VisionEncoder, checked_videos
from compression.models.interface import Question
from compression.models.preprocess import FramePreprocessing, preprocess_frames
from compression.models.registry import TINY_LLAVA_OV
from compression.models.vision_checkpoint import load_vision_model
from compression.token_set import EncodedVideo, grid_index

HeadReduction = Literal["mean", "max"]


# --------------------------------------------------------------------------------------------
# Contribution scores (METHOD.md section 1)
# --------------------------------------------------------------------------------------------
def received_attention(
    query: torch.Tensor, key: torch.Tensor, scaling: float, chunk: int = 256
) -> torch.Tensor:
    """Mean over queries of softmax(q k^T * scaling), per head: the attention each key receives.

    query, key: [B, heads, N, head_dim] (one frame per batch row). Returns [B, heads, N] float32.
    The softmax runs over query chunks: memory O(B * heads * chunk * N), never the full map.
    """
    length = query.shape[2]
    received = torch.zeros(query.shape[:3], dtype=torch.float32, device=query.device)
    key_t = key.float().transpose(2, 3)
    for begin in range(0, length, chunk):
        logits = torch.matmul(query[:, :, begin : begin + chunk].float(), key_t) * scaling
        received += logits.softmax(dim=-1).sum(dim=2)
    return received / length


class SiglipScoreHook(ScoreHook):
    """Forward pre-hook on the feature layer's `self_attn` (its input is already layer-normed):
    recomputes q and k and keeps each patch's received attention, reduced over heads.

    Scores of every forward while the hook is active are appended to `frame_scores` ([F, N]
    each). The tower keeps running its own sdpa attention.
    """

    def __init__(self, attention: nn.Module, head_reduction: HeadReduction, chunk: int) -> None:
        if head_reduction not in ("mean", "max"):
            raise ValueError(f"head_reduction must be 'mean' or 'max', got {head_reduction!r}")
        super().__init__(attention)
        self._reduction = head_reduction
        self._chunk = chunk
        self.frame_scores: list[torch.Tensor] = []

    def score(self, module: nn.Module, hidden: torch.Tensor, kwargs: dict) -> None:
        shape = (*hidden.shape[:-1], -1, module.head_dim)
        query = module.q_proj(hidden).view(shape).transpose(1, 2)
        key = module.k_proj(hidden).view(shape).transpose(1, 2)
        per_head = received_attention(query, key, module.scale, self._chunk)
        reduced = per_head.mean(dim=1) if self._reduction == "mean" else per_head.amax(dim=1)
        self.frame_scores.append(reduced)


# --------------------------------------------------------------------------------------------
# The encoder (what an encode worker loads) and the plug-in
# --------------------------------------------------------------------------------------------
class LlavaOneVisionEncoder(VisionEncoder):
    """`VideoEncoder` for LLaVA-OneVision: SigLIP + projector + pooling, with scores.

    vision: a `LlavaOnevisionModel` (`...ForConditionalGeneration.model`) of which only
    `VISION_PARTS` are used; a vision-only load (`from_pretrained`) holds nothing else.
    """

    family = "llava_onevision"
    # What encoding and scoring use: the tower (scores hook its feature layer), the projector,
    # and the trailing `image_newline` that `get_video_features` appends (then dropped here).
    VISION_PARTS = ("vision_tower", "multi_modal_projector", "image_newline")

    def __init__(
        self,
        vision: nn.Module,
        model_id: str,
        preprocessing: FramePreprocessing | None = None,
        *,
        head_reduction: HeadReduction = "mean",
        score_chunk: int = 256,
        max_frames_per_forward: int = 64,
    ) -> None:
        """preprocessing defaults to the SigLIP constants at the vision tower's image size;
        max_frames_per_forward bounds the vision tower's batch."""
        super().__init__(vision, model_id)
        config = vision.config
        side = config.vision_config.image_size
        self.preprocessing = preprocessing or FramePreprocessing(size=(side, side))
        if self.preprocessing.size != (side, side):
            raise ValueError(
                f"preprocessing size {self.preprocessing.size} but the vision tower reads "
                f"{side} x {side} frames (its pooling assumes that grid)"
            )
        if config.vision_feature_select_strategy != "full":
            raise ValueError("LLaVA-OneVision's SigLIP has no CLS token: expected strategy 'full'")
        if max_frames_per_forward < 1 or score_chunk < 1:
            raise ValueError("max_frames_per_forward and score_chunk must be positive")
        self.head_reduction: HeadReduction = head_reduction
        self.score_chunk = score_chunk
        self.max_frames_per_forward = max_frames_per_forward
        feature_layer = config.vision_feature_layer
        if not isinstance(feature_layer, int):
            feature_layer = feature_layer[-1]
        layers = vision.vision_tower.encoder.layers
        # hidden_states[i] is the output of encoder layer i - 1 (index 0 is the embeddings).
        layer_index = feature_layer - 1 if feature_layer >= 0 else len(layers) + feature_layer
        if not 0 <= layer_index < len(layers):
            raise ValueError(f"vision_feature_layer {feature_layer} names no encoder layer")
        self._score_attention = layers[layer_index].self_attn
        patches = side // config.vision_config.patch_size
        self.frame_grid = (-(-patches // 2), -(-patches // 2))  # apply_pooling's ceil(n / 2)

    @classmethod
    def from_pretrained(
        cls, model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> LlavaOneVisionEncoder:
        """Only the vision side of a checkpoint (hub id or local directory): the language model
        is neither built nor read (`compression.models.vision_checkpoint`)."""
        from transformers import LlavaOnevisionForConditionalGeneration

        vision, read = load_vision_model(
            LlavaOnevisionForConditionalGeneration,
            model,
            cls.VISION_PARTS,
            device=device,
            dtype=dtype,
        )
        encoder = cls(vision, model, FramePreprocessing.from_pretrained(model))
        encoder.checkpoint_read = read
        return encoder

    @torch.no_grad()
    def video_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Pixel frames [F, 3, H, W] -> tokens [F, h*w, d], scores [F, h*w], scoring time (s).

        Frames go through the tower in chunks of `max_frames_per_forward` (each frame is
        independent in SigLIP, so chunking changes nothing but the peak memory).
        """
        tokens, scores = [], []
        with SiglipScoreHook(self._score_attention, self.head_reduction, self.score_chunk) as hook:
            for chunk in pixels.split(self.max_frames_per_forward):
                output = self.vision.get_video_features(chunk[None].to(self.dtype))
                pooled = output.pooler_output[0, :-1]  # drop the trailing image_newline
                tokens.append(pooled.view(len(chunk), -1, pooled.shape[-1]))
            for patch_scores in hook.frame_scores:
                # The model's own pooling, so score i belongs to token i.
                pooled_scores = self.vision.apply_pooling(patch_scores[..., None])
                scores.append(pooled_scores[..., 0])
        return torch.cat(tokens), torch.cat(scores), hook.elapsed_s

    @torch.no_grad()
    def encode_batch(
        self,
        videos: Sequence[np.ndarray | torch.Tensor],
        timestamps: Sequence[Sequence[float] | None] | None = None,
    ) -> list[EncodedVideo]:
        """The frames of all videos go through the vision tower together (in chunks of
        `max_frames_per_forward` frames), then are split back per video."""
        if not videos:
            return []
        frames, timestamps = checked_videos(videos, timestamps)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        pixels = torch.cat([preprocess_frames(v, self.preprocessing, self.device) for v in frames])
        tokens, scores, score_s = self.video_features(pixels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        counts = [len(v) for v in frames]
        total = sum(counts)
        encoded = []
        for video_tokens, video_scores, count, stamps in zip(
            tokens.split(counts), scores.split(counts), counts, timestamps, strict=True
        ):
            grid = (count, *self.frame_grid)
            encoded.append(
                EncodedVideo(
                    tokens=video_tokens.reshape(-1, video_tokens.shape[-1]),
                    index=grid_index(grid),
                    scores=video_scores.reshape(-1).float().cpu(),
                    grid=grid,
                    frame_timestamps=tuple(float(s) for s in stamps) if stamps is not None else (),
                    # One pass serves the whole batch: each video is charged its share of frames.
                    encode_s=elapsed * count / total,
                    score_s=score_s * count / total,
                )
            )
        return encoded


class LlavaOneVision(ChatVideoLLM):
    """`VideoLLM` for LLaVA-OneVision (SigLIP + projector + Qwen2)."""

    family = "llava_onevision"
    encoder_class = LlavaOneVisionEncoder

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        model_id: str,
        preprocessing: FramePreprocessing | None = None,
        *,
        head_reduction: HeadReduction = "mean",
        score_chunk: int = 256,
        max_frames_per_forward: int = 64,
    ) -> None:
        """model: a `LlavaOnevisionForConditionalGeneration` on its device and dtype;
        tokenizer: its tokenizer, with a chat template that places one `<video>` token;
        model_id: stored in token sets; the rest configures the `LlavaOneVisionEncoder` over
        the model's vision side."""
        encoder = LlavaOneVisionEncoder(
            model.model,
            model_id,
            preprocessing,
            head_reduction=head_reduction,
            score_chunk=score_chunk,
            max_frames_per_forward=max_frames_per_forward,
        )
        super().__init__(model, tokenizer, model_id, encoder)

    @staticmethod
    def input_frame_size(config) -> int:
        """The side of the square frames the vision tower reads (SigLIP resizes to it)."""
        return int(config.vision_config.image_size)

    @classmethod
    def from_pretrained(
        cls, model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> LlavaOneVision:
        """Load a checkpoint (hub id or local directory) with sdpa attention.

        dtype defaults to bfloat16 on CUDA and float32 elsewhere. The chat template comes from
        the checkpoint's processor files when present (that is where the -hf checkpoints keep
        the one that knows `<video>`), else from the tokenizer.
        """
        from transformers import LlavaOnevisionForConditionalGeneration

        network, tokenizer = load_checkpoint(
            LlavaOnevisionForConditionalGeneration, model, device, dtype
        )
        template = processor_chat_template(model)
        if template:
            tokenizer.chat_template = template
        return cls(network, tokenizer, model, FramePreprocessing.from_pretrained(model))

    @classmethod
    def tiny(
        cls, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> LlavaOneVision:
        """The tiny random-weight "tiny-llava-ov" (same weights in every process)."""
        from compression.models.tiny import build_tiny_llava_onevision

        network, tokenizer = build_tiny_llava_onevision()
        network = network.to(device=torch.device(device), dtype=dtype or torch.float32)
        return cls(network, tokenizer, TINY_LLAVA_OV)

    # -- answer -------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_sequence(self, question: Question) -> PromptSequence:
        """The question as the decoder loop's input: chat-template text embeddings around the
        token set's tokens (consecutive positions) followed by the model's `image_newline`."""
        prefix, _, text, visual = self._embed_prompt(question)
        newline = self.model.model.image_newline.to(text.dtype)[None]
        embeds = torch.cat([text[: len(prefix)], visual, newline, text[len(prefix) :]])
        start, stop = len(prefix), len(prefix) + len(visual)
        return PromptSequence(
            embeds=embeds,
            positions=torch.arange(len(embeds), device=self.device),
            visual=slice(start, stop),
            text_start=stop + 1,
            visual_sizes=question.token_set.size.to(self.device),
            prefix_key=tuple(prefix),
        )


def processor_chat_template(model: str) -> str | None:
    """The chat template of a checkpoint's processor (`chat_template.jinja`, or the
    `chat_template` entry of `chat_template.json` / `processor_config.json`), if it has one."""
    from transformers.utils import cached_file

    for filename in ("chat_template.jinja", "chat_template.json", "processor_config.json"):
        path = cached_file(model, filename, _raise_exceptions_for_missing_entries=False)
        if path is None:
            continue
        with open(path, encoding="utf-8") as handle:
            if filename.endswith(".jinja"):
                return handle.read()
            template = json.load(handle).get("chat_template")
        if template:
            return template
    return None
