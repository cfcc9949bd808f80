"""Which Video-LLMs tokenreel loads, by name, and what callers need to know about a model before
loading it.

Lazy, like vLLM's model registry: a family is a "module:class" string, imported only when a model
of that family is loaded, so loading one family never imports the other (and importing this
module imports neither, nor transformers).

Two ways to load one: `load_video_llm` (the whole model: serving, evaluation) and
`load_video_encoder` (only what encoding needs: the indexing job's encode workers).

A model is named by a built-in tiny random-weight model (`TINY_MODELS`: no download, same weights
in every process; for tests and the offline demo), a Hugging Face hub id or a local checkpoint
directory; a checkpoint's family is its config's `model_type`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from compression.models.interface import VideoEncoder, VideoLLM

MODEL_ENV = "TOKENREEL_MODEL"
TINY_LLAVA_OV = "tiny-llava-ov"
TINY_QWEN2_5_VL = "tiny-qwen2.5-vl"
DEFAULT_MODEL = TINY_LLAVA_OV

# The checkpoint config's model_type -> the plug-in class ("module:class").
FAMILIES: dict[str, str] = {
    "llava_onevision": "compression.models.llava_onevision:LlavaOneVision",
    "qwen2_5_vl": "compression.models.qwen2_5_vl:Qwen2_5_VL",
}
TINY_MODELS: dict[str, str] = {TINY_LLAVA_OV: "llava_onevision", TINY_QWEN2_5_VL: "qwen2_5_vl"}


def model_name(model: str | None = None) -> str:
    """The model to use: `model` when given, else $TOKENREEL_MODEL, else `DEFAULT_MODEL`."""
    return model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def model_config(model: str) -> Any:
    """The Hugging Face config of `model` (a tiny model's is built, a checkpoint's is read)."""
    if model == TINY_LLAVA_OV:
        from compression.models.tiny import tiny_llava_onevision_config

        return tiny_llava_onevision_config()
    if model == TINY_QWEN2_5_VL:
        from compression.models.tiny import tiny_qwen2_5_vl_config

        return tiny_qwen2_5_vl_config()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def plugin_class(family: str) -> type:
    """The plug-in class of a family (imported now), or ValueError naming the supported ones."""
    target = FAMILIES.get(family)
    if target is None:
        raise ValueError(
            f"a {family!r} model is not supported; supported: {', '.join(FAMILIES)} "
            f"(or the built-ins {', '.join(TINY_MODELS)})"
        )
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def model_family(model: str) -> str:
    """The family of a model name (no weights are loaded)."""
    return TINY_MODELS.get(model) or model_config(model).model_type


def model_frame_size(model: str) -> int | None:
    """The frame side a model's processor resizes to when it is one fixed square (LLaVA-OV's
    SigLIP): decoding straight to it saves memory. None for models that keep the aspect and size
    by a pixel budget (Qwen2.5-VL): they get the source size."""
    config = model_config(model)
    return plugin_class(config.model_type).input_frame_size(config)


def _checked_name(model: str) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty name, hub id or directory, got {model!r}")
    return model


def load_video_llm(
    model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> VideoLLM:
    """A plug-in by name (see the module docstring): the whole model, for answering (serving,
    evaluation). dtype defaults to bfloat16 on CUDA and float32 elsewhere; attention is sdpa."""
    plugin = plugin_class(model_family(_checked_name(model)))
    if model in TINY_MODELS:
        return plugin.tiny(device=device, dtype=dtype)
    return plugin.from_pretrained(model, device=device, dtype=dtype)


def load_video_encoder(
    model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> VideoEncoder:
    """Only the vision side of a model by name, for encoding (the indexing job's workers): the
    vision tower, projector and the family's pooling parameters, read from the checkpoint's
    safetensors without building or reading the language model
    (`compression.models.vision_checkpoint`; what was read is in its `checkpoint_read`).
    Encodings equal the whole model's (`load_video_llm(model).encode`): same code, same weights.

    The tiny models are built whole (they are kilobytes, and seeded, so the encoder shares the
    whole model's weights by construction) and their encoder is returned. dtype defaults as in
    `load_video_llm`.
    """
    plugin = plugin_class(model_family(_checked_name(model)))
    if model in TINY_MODELS:
        return plugin.tiny(device=device, dtype=dtype).encoder
    return plugin.encoder_class.from_pretrained(model, device=device, dtype=dtype)
