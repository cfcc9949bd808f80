"""The Ray Data indexing job: video URIs -> sampled frames -> tokens -> compressed token sets in
the store and catalog.

    from jobs.index import index_videos
    summary = index_videos("s3://archive/clips/", store_url="s3://bucket/tokens", ...)

Modules: `sources` (what to index), `decode` (sampled frames, time-limited), `video` (one video
end to end), `stages` (the Ray Data stages), `job` (plan -> run -> summarise), `command` (the
`tokenreel index` command). The names below load on first use, so the decoder's child process
(`python -m jobs.index.decode`) imports no more than decoding needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IndexJobStopped": "jobs.index.job",
    "IndexSummary": "jobs.index.job",
    "ModelLoader": "jobs.index.stages",
    "index_videos": "jobs.index.job",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobs.index' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
