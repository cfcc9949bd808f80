"""The Ray Data indexing job: video URIs -> sampled frames -> tokens -> compressed token sets in
the store and catalog.

    from jobs.index import index_videos
    summary = index_videos("s3://archive/clips/", store_url="s3://bucket/tokens", ...)

Modules: `sources` (what to index), `decode` (sampled frames, time-limited), `video` (one video
end to end), `stages` (the Ray Data stages), `job` (plan -> run -> summarise), `planning` (what a
run registers to do), `heartbeat` (the run's proof of life), `chunks` (long videos in time
windows, `--chunk-seconds`), `follow` (live and growing sources, `--follow`), `command` (the
`tokenreel index` command). Importing the package loads neither torch nor Ray
nor the catalog (they load when a stage or the job needs them), so the decoder's child process
(`jobs.index.decode.serve_requests`) and the decode workers stay light.
"""

from jobs.index.job import IndexJobStopped, IndexSummary, index_videos
from jobs.index.stages import ModelLoader

__all__ = ["IndexJobStopped", "IndexSummary", "ModelLoader", "index_videos"]
