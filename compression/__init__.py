"""tokenreel's method: unified spatiotemporal token compression for Video-LLMs.

The outer, query-independent stage is usable on any model's tokens:

    from compression import CompressionConfig, compress
    token_set = compress(tokens, scores, grid_index, CompressionConfig(retention_ratio=0.02))

Import-light on purpose (torch only): the model plug-ins load transformers on their own.
"""

from compression.config import CompressionConfig, GenerationConfig, MergeConfig
from compression.outer_stage import compress, compress_batch, compress_video
from compression.token_set import TokenKind, TokenSet

__all__ = [
    "CompressionConfig",
    "GenerationConfig",
    "MergeConfig",
    "TokenKind",
    "TokenSet",
    "compress",
    "compress_batch",
    "compress_video",
]
