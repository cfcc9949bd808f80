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

Streaming (`iter_sources`, what an indexing run plans from): a directory is walked one folder at
a time (local) or listed one page of 1,000 keys at a time (S3), and a manifest is read entry by
entry, so listing 10^6 videos holds one folder or page at a time, never the whole list. The order
is the same as sorting the whole listing. Globs and other object stores' prefixes are listed
whole (fsspec has no paged listing for them), then streamed. The stream does not drop repeats (a
manifest may name a video twice): that needs the whole list, so a run finds repeats in its
catalog instead (`Catalog.triage`); `list_sources` and `list_sources_with_fingerprints` drop them.
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
S3_PAGE_KEYS = 1000  # keys per S3 listing request (the service's maximum)

# A listed URI with the fingerprint its listing gave (None: none given; a local path is stat'ed).
_Listed = tuple[str, str | None]


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
    sources: dict[str, str | None] = {}
    for uri, fingerprint in iter_sources(source):
        sources.setdefault(uri, fingerprint)
    return sources


def iter_sources(source: str | os.PathLike[str] | Sequence[str]) -> Iterator[_Listed]:
    """(uri, fingerprint) of each video SOURCE names, streamed in `list_sources` order; repeats
    are NOT dropped (see the module docstring). SOURCE's own errors (not found, empty, a bad
    scheme, a manifest without a uri column) raise here, before the stream; a bad manifest
    entry raises when the stream reaches it."""
    if isinstance(source, (str, os.PathLike)):
        listed = _expand(os.fspath(source))
    else:
        listed = ((normalize_uri(str(uri)), None) for uri in source)
    return (
        (uri, fingerprint if fingerprint is not None else local_fingerprint(uri))
        for uri, fingerprint in listed
    )


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


def _expand(source: str) -> Iterator[_Listed]:
    """SOURCE's listing as a stream; SOURCE itself is checked here, before the stream starts."""
    if not source.strip():
        raise ValueError("SOURCE is empty")
    uri = normalize_uri(source)
    if any(ch in uri for ch in "*?["):
        return iter(_glob(uri))
    if is_local(uri) and os.path.isdir(uri):
        return _walk_local(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        if uri.startswith("s3://"):
            return _walk_s3(fs, uri, path)
        found = fs.find(path, detail=True)
        return (_entry(uri, p, found[p]) for p in sorted(found) if _is_video_name(p))
    try:
        info = fs.info(path)
    except FileNotFoundError:
        info = {}
    if info.get("type") != "file":
        raise ValueError(f"SOURCE not found: {source}")
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in LINE_MANIFEST_SUFFIXES | TABLE_MANIFEST_SUFFIXES:
        return ((entry, None) for entry in _read_manifest(uri, suffix))
    return iter([_entry(uri, path, info)])


def _walk_local(root: str) -> Iterator[_Listed]:
    """The video files below `root`, one folder in memory at a time, in the order of their sorted
    full paths: a folder's entries sorted by name, a subfolder's as name + "/" (so "a.mp4" comes
    before "a/x.mp4", as "." < "/"), entered where it sorts. Symlinked folders are followed (as
    fsspec's listing does); a folder already on the path being walked is not entered again."""

    def walk(folder: str, ancestors: frozenset[tuple[int, int]]) -> Iterator[_Listed]:
        try:
            with os.scandir(folder) as listing:
                entries = sorted(
                    ((e.name + "/" if e.is_dir() else e.name), e.path, e.is_dir()) for e in listing
                )
        except OSError:
            return  # unreadable or vanished since its parent was listed: nothing in it to index
        for _, path, is_dir in entries:
            if is_dir:
                info = os.stat(path)
                key = (info.st_dev, info.st_ino)
                if key not in ancestors:
                    yield from walk(path, ancestors | {key})
            elif _is_video_name(path):
                yield os.path.abspath(path), None

    top = os.stat(root)
    return walk(root, frozenset({(top.st_dev, top.st_ino)}))


def _walk_s3(fs: fsspec.AbstractFileSystem, uri: str, path: str) -> Iterator[_Listed]:
    """The video objects below an S3 prefix, one page of `S3_PAGE_KEYS` keys at a time, in key
    order (S3 lists keys in UTF-8 byte order, which is the order of their sorted strings)."""
    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""
    token: str | None = None
    while True:
        page = fs.call_s3(
            "list_objects_v2",
            Bucket=bucket,
            Prefix=prefix,
            MaxKeys=S3_PAGE_KEYS,
            **({"ContinuationToken": token} if token else {}),
        )
        for item in page.get("Contents", []):
            if _is_video_name(item["Key"]):
                yield f"s3://{bucket}/{item['Key']}", _listed_fingerprint(item)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


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


def _read_manifest(uri: str, suffix: str) -> Iterator[str]:
    """The manifest's entries as normalised URIs, read a line, a CSV row or a Parquet batch at a
    time; the manifest's shape (its `uri` column) is checked now, before the first entry."""
    entries = _manifest_entries(uri, suffix)
    next(entries)  # runs up to the checked header: a manifest without a uri column fails here
    return _normalized_entries(uri, entries)


def _normalized_entries(uri: str, entries: Iterator[object]) -> Iterator[str]:
    base = _parent(uri)
    for number, entry in enumerate(entries, start=1):
        if entry is None or not str(entry).strip():
            raise ValueError(f"manifest {uri}: entry {number} is empty")
        try:
            yield normalize_uri(str(entry), base=base)
        except ValueError as exc:
            raise ValueError(f"manifest {uri}: entry {number}: {exc}") from None


def _manifest_entries(uri: str, suffix: str) -> Iterator[object]:
    """None once the manifest's shape is checked, then its raw entries."""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb") as handle:
            table = pq.ParquetFile(handle)
            if URI_COLUMN not in table.schema_arrow.names:
                names = table.schema_arrow.names
                raise ValueError(f"manifest {uri} has no {URI_COLUMN!r} column: {names}")
            yield None
            for batch in table.iter_batches(columns=[URI_COLUMN]):
                yield from batch.column(0).to_pylist()
        return
    with fsspec.open(uri, "rt", encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            if URI_COLUMN not in (reader.fieldnames or []):
                columns = reader.fieldnames
                raise ValueError(f"manifest {uri} has no {URI_COLUMN!r} column: {columns}")
            yield None
            yield from (row[URI_COLUMN] for row in reader)
            return
        yield None
        for line in handle:
            text = line.strip()
            if text and not text.startswith("#"):
                yield text


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
