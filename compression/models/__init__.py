"""The Video-LLM side of tokenreel: one plug-in per model family, and what they share.

Like ToMe keeps `tome/patch/` apart from `tome/merge.py`, the method (`compression`) never imports
this package; this package applies the method inside real models. jobs/ and serving/ use only
the names exported here (the interface and the registry), never the modules behind them:

* `load_video_llm(name)`: a plug-in by name (`registry`), with `model_name`, `model_frame_size`;
* `load_video_encoder(name)`: only its vision side, for encoding (`registry`, `vision_checkpoint`);
* `VideoLLM`, `VideoEncoder`, `Question` (with its `Turn`s), `Answer`, `GenerationConfig`,
  `InvalidQuestion`: the interface (`interface`);
* `DecodeBatch` (from `VideoLLM.continuous_batch`), `JoinRequest`, `BatchEvent`: the running
  decode batch that questions join and leave between steps (`scheduler`).

Modules: `interface`, `registry`, `encoder` (the shared encoder base), `vision_checkpoint`
(reading only the vision tensors of a checkpoint), `chat` (the shared chat base), `decoder_loop`
(the tensor loop: masks, prefill with the merge at layer K, a decode step), `generation`
(sampling, stop strings, streaming), `preprocess` (frames -> pixels), `llava_onevision`,
`qwen2_5_vl` (one file per family), `scheduler` (continuous batching), `prefix_cache` (per-video
prefix reuse), `tiny` (tiny random-weight models for tests and the offline demo).
"""

from compression.models.interface import (
    Answer,
    BatchEvent,
    DecodeBatch,
    Frames,
    GenerationConfig,
    InvalidQuestion,
    JoinRequest,
    Question,
    Turn,
    VideoEncoder,
    VideoLLM,
)
from compression.models.registry import (
    DEFAULT_MODEL,
    MODEL_ENV,
    TINY_LLAVA_OV,
    TINY_MODELS,
    TINY_QWEN2_5_VL,
    load_video_encoder,
    load_video_llm,
    model_frame_size,
    model_name,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "TINY_LLAVA_OV",
    "TINY_MODELS",
    "TINY_QWEN2_5_VL",
    "Answer",
    "BatchEvent",
    "DecodeBatch",
    "Frames",
    "GenerationConfig",
    "InvalidQuestion",
    "JoinRequest",
    "Question",
    "Turn",
    "VideoEncoder",
    "VideoLLM",
    "load_video_encoder",
    "load_video_llm",
    "model_frame_size",
    "model_name",
]
