"""What to index: SOURCE -> a list of video URIs, and streamed access to each video's bytes.

SOURCE is one of:

* a local directory: every file below it with a video suffix (recursive, sorted);
* an object-store prefix (`s3://bucket/clips/`): every object below it with a video suffix;
* a glob, local or remote (`/data/**/*.mp4`, `s3://bucket/clips/*.mp4`): every file it matches;
* a manifest file, local or remote, told by its suffix: `.txt`/`.lst` with one URI per line
  (blank lines and `#` comments skipped), `.csv` or `.parquet` with a `uri` column; a relative
  entry is relative to the manifest's folder;
* a single video file or object;
* from Python, also a sequence of URIs.

URIs are normalised so that the same video always gets the same id: local paths become absolute
paths without a scheme (`file://` is stripped), remote ones stay `protocol://bucket/key`.
Duplicates are dropped (first kept). Files a directory holds without a video suffix are not
videos and are left out; an explicit glob or manifest entry is taken as given, so a bad file
named there becomes a recorded failure instead of silently vanishing.

Fingerprints (`list_sources_with_fingerprints`) tell a replaced video from the one indexed
before: ``local:<size>:<mtime_ns>`` for a local file (one stat), ``etag:<ETag>`` for an object,
taken from the listing that found it (no request per object). A remote URI that no listing
returned (a manifest entry, a URI given from Python) has no fingerprint (None: unknown, so the
catalog treats it as unchanged, as before fingerprints existed), and neither has a local path
that does not exist (its indexing fails and is recorded).
"""

from __future__ import annotations

import csv
import glob as local_glob
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec

from storage.urls import is_local

VIDEO_SUFFIXES = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts",
        ".flv", ".wmv", ".3gp", ".ogv",
    }
)  # fmt: skip
LINE_MANIFEST_SUFFIXES = frozenset({".txt", ".lst"})
TABLE_MANIFEST_SUFFIXES = frozenset({".csv", ".parquet"})
URI_COLUMN = "uri"
HASH_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class LocalCopy:
    """A video's bytes on local disk (the file itself, or a temporary copy of a remote object)."""

    path: str
    content_hash: str  # sha256 hex of the bytes
    size: int


def source_label(source: str | os.PathLike[str] | Sequence[str]) -> str:
    """How a run records what it indexed: the directory, glob, prefix or manifest as given, or
    "<list>" for URIs passed in a list (which may be long)."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<list>"


def list_sources(source: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """The normalised, de-duplicated video URIs that SOURCE names (see the module docstring)."""
    return list(list_sources_with_fingerprints(source))


def list_sources_with_fingerprints(
    source: str | os.PathLike[str] | Sequence[str],
) -> dict[str, str | None]:
    """{uri: fingerprint} of the videos SOURCE names, in `list_sources` order (the fingerprint
    is None when unknown; see the module docstring)."""
    if isinstance(source, (str, os.PathLike)):
        listed = _expand(os.fspath(source))
    else:
        listed = [(normalize_uri(str(uri)), None) for uri in source]
    sources: dict[str, str | None] = {}
    for uri, fingerprint in listed:
        if uri not in sources:
            sources[uri] = fingerprint if fingerprint is not None else local_fingerprint(uri)
    return sources


def local_fingerprint(uri: str) -> str | None:
    """``local:<size>:<mtime_ns>`` of the local file at `uri`; None for a remote URI or a path
    that is not a file."""
    if not is_local(uri):
        return None
    try:
        info = os.stat(uri)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return f"local:{info.st_size}:{info.st_mtime_ns}"


def _listed_fingerprint(info: dict) -> str | None:
    """The fingerprint in an object store's listing entry (its ETag), None when it has none."""
    etag = info.get("ETag") or info.get("etag")
    if not etag:
        return None
    return "etag:" + str(etag).strip('"')  # S3 quotes its ETags


def normalize_uri(uri: str, base: str | None = None) -> str:
    """Validate one URI; make a local path absolute (relative to `base`, a folder URI, if given)."""
    text = uri.strip()
    if not text:
        raise ValueError("empty URI")
    if "\x00" in text or "\n" in text:
        raise ValueError(f"URI contains control characters: {uri!r}")
    protocol, sep, rest = text.partition("://")
    if not sep:
        if base is not None and not os.path.isabs(text):
            return normalize_uri(_join(base, text))
        return os.path.abspath(text)
    protocol = protocol.lower()
    if protocol == "file":
        return os.path.abspath(rest)
    if protocol not in fsspec.available_protocols():
        raise ValueError(f"unsupported URI scheme {protocol!r} in {uri!r}")
    if not rest.strip("/"):
        raise ValueError(f"URI has no bucket or path: {uri!r}")
    return f"{protocol}://{rest}"


def content_hash(uri: str) -> str:
    """sha256 hex of the bytes at `uri`, read in chunks (any size, bounded memory)."""
    with fsspec.open(uri, "rb") as handle:
        return _hash_stream(handle, sink=None)[0]


@contextmanager
def local_copy(uri: str, *, temp_dir: str | None = None) -> Iterator[LocalCopy]:
    """The video's bytes as a local file with their content hash, streamed in chunks.

    A local file is hashed in place; a remote object is copied to a temporary file (deleted on
    exit) while it is hashed, so the decoder can seek in it without holding it in memory.
    """
    if is_local(uri):
        with open(uri, "rb") as handle:
            digest, size = _hash_stream(handle, sink=None)
        yield LocalCopy(path=uri, content_hash=digest, size=size)
        return
    suffix = PurePosixPath(uri).suffix
    fd, path = tempfile.mkstemp(prefix="tokenreel-", suffix=suffix, dir=temp_dir)
    try:
        with os.fdopen(fd, "wb") as sink, fsspec.open(uri, "rb") as handle:
            digest, size = _hash_stream(handle, sink=sink)
        yield LocalCopy(path=path, content_hash=digest, size=size)
    finally:
        os.unlink(path)


def _hash_stream(handle: io.BufferedIOBase, sink: io.BufferedIOBase | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


# -- expanding SOURCE ---------------------------------------------------------------------------


# A listed URI with the fingerprint its listing gave (None: none given; a local path is stat'ed).
_Listed = tuple[str, str | None]


def _expand(source: str) -> list[_Listed]:
    if not source.strip():
        raise ValueError("SOURCE is empty")
    uri = normalize_uri(source)
    if any(ch in uri for ch in "*?["):
        return _glob(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        found = fs.find(path, detail=True)
        return [_entry(uri, p, found[p]) for p in sorted(found) if _is_video_name(p)]
    try:
        info = fs.info(path)
    except FileNotFoundError:
        info = {}
    if info.get("type") != "file":
        raise ValueError(f"SOURCE not found: {source}")
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in LINE_MANIFEST_SUFFIXES | TABLE_MANIFEST_SUFFIXES:
        return [(entry, None) for entry in _read_manifest(uri, suffix)]
    return [_entry(uri, path, info)]


def _glob(pattern: str) -> list[_Listed]:
    if is_local(pattern):
        matches = local_glob.glob(pattern, recursive=True)
        return [(m, None) for m in sorted(os.path.abspath(m) for m in matches if os.path.isfile(m))]
    fs, path = fsspec.core.url_to_fs(pattern)
    found = fs.glob(path, detail=True)
    return [_entry(pattern, p, found[p]) for p in sorted(found) if found[p].get("type") == "file"]


def _entry(uri: str, path: str, info: dict) -> _Listed:
    """(URI, fingerprint) of a path a listing of `uri`'s filesystem returned with `info`."""
    listed = _unstrip(uri, path)
    return listed, None if is_local(listed) else _listed_fingerprint(info)


def _read_manifest(uri: str, suffix: str) -> list[str]:
    base = _parent(uri)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb") as handle:
            table = pq.read_table(handle)
        if URI_COLUMN not in table.column_names:
            raise ValueError(f"manifest {uri} has no {URI_COLUMN!r} column: {table.column_names}")
        entries = table.column(URI_COLUMN).to_pylist()
    else:
        with fsspec.open(uri, "rt", encoding="utf-8") as handle:
            text = handle.read()
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            if URI_COLUMN not in (reader.fieldnames or []):
                columns = reader.fieldnames
                raise ValueError(f"manifest {uri} has no {URI_COLUMN!r} column: {columns}")
            entries = [row[URI_COLUMN] for row in reader]
        else:
            lines = (line.strip() for line in text.splitlines())
            entries = [line for line in lines if line and not line.startswith("#")]
    uris = []
    for number, entry in enumerate(entries, start=1):
        if entry is None or not str(entry).strip():
            raise ValueError(f"manifest {uri}: entry {number} is empty")
        try:
            uris.append(normalize_uri(str(entry), base=base))
        except ValueError as exc:
            raise ValueError(f"manifest {uri}: entry {number}: {exc}") from None
    return uris


def _is_video_name(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in VIDEO_SUFFIXES


def _parent(uri: str) -> str:
    if is_local(uri):
        return os.path.dirname(uri)
    protocol, _, rest = uri.partition("://")
    return f"{protocol}://{rest.rsplit('/', 1)[0]}"


def _join(base: str, relative: str) -> str:
    if is_local(base):
        return os.path.join(base, relative)
    return f"{base.rstrip('/')}/{relative}"


def _unstrip(uri: str, path: str) -> str:
    """Put back the protocol that fsspec strips from the paths it lists."""
    if is_local(uri):
        return os.path.abspath(path)
    return f"{uri.partition('://')[0]}://{path}"
