"""tokenreel's method: unified spatiotemporal token compression for Video-LLMs.

The paper's method on plain tensors (torch only; no model, no transformers). The outer,
query-independent stage works on any model's tokens:

    from compression import CompressionConfig, compress
    token_set = compress(tokens, scores, grid_index, CompressionConfig(retention_ratio=0.02))

The inner, query-dependent stage (`text_merge`) is applied inside real Video-LLMs by
`compression.models`, which this package never imports.
"""

from compression.config import CompressionConfig, MergeConfig, default_merge_layer
from compression.outer_stage import compress, compress_batch, compress_video
from compression.token_set import EncodedVideo, TokenKind, TokenSet

__all__ = [
    "CompressionConfig",
    "EncodedVideo",
    "MergeConfig",
    "TokenKind",
    "TokenSet",
    "compress",
    "compress_batch",
    "compress_video",
    "default_merge_layer",
]
