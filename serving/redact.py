"""Keep server paths out of what clients see.

Indexing failure reasons come from decoders and file systems, which quote paths ("file not
found: /srv/videos/a.mp4", "[Errno 2] ... '/data/x.mp4'"). Decision (issue 12): local paths and
`file://` URLs are always replaced by `<path>`; other URLs (s3://, https://) and the video's own
source URI by `<source>` unless the operator exposes source URIs (`expose_source_uris`).
"""

from __future__ import annotations

import re

PATH = "<path>"
SOURCE = "<source>"

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://[^\s'\"<>()\[\],;]+")
# An absolute POSIX path (not the "/" inside "and/or" or "3/4"), a home-relative or a Windows path;
# inside quotes, up to the closing quote (paths may hold spaces).
_LOCAL_PATH = re.compile(
    r"(?<=['\"])(?:/|~/|[a-zA-Z]:\\)[^'\"\n]*(?=['\"])"
    r"|(?<![\w.~/\\:])(?:/|~/)[^\s'\"<>()\[\],;:]+|\b[a-zA-Z]:\\[^\s'\"<>()\[\],;]+"
)


def strip_paths(text: str, source_uri: str | None = None, *, keep_uris: bool = False) -> str:
    """`text` without local paths, and without URLs and `source_uri` unless `keep_uris`."""
    if source_uri and (not keep_uris or _is_local(source_uri)):
        text = text.replace(source_uri, PATH if _is_local(source_uri) else SOURCE)

    def url(match: re.Match[str]) -> str:
        if match.group(1).lower() == "file":
            return PATH
        return match.group(0) if keep_uris else SOURCE

    return _LOCAL_PATH.sub(PATH, _URL.sub(url, text))


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.lower().startswith("file://")
