"""Token-set files: many token sets per Parquet file, one row group each, loadable one at a time.

A call to `write_token_sets` writes one immutable, uniquely named Parquet file
``<store>/tokensets/<UTC stamp>-<uuid>.parquet`` holding one row (= one row group) per token set,
and returns a `TokenSetLocation` per token set; `read_token_set` loads one of them back.

Schema (version `SCHEMA_VERSION`; the version is both a column and the file-level key-value
metadata ``tokenreel.schema_version``). Only plain typed columns, nothing executable on read:

    schema_version int16; video_id, source_uri, content_hash, model_id string;
    config_json string (CompressionConfig.to_dict(), sorted keys), config_hash string;
    frame_count int32, frame_timestamps list<float64>; original_count int64, kept_count int32,
    hidden_size int32, dtype string ("float32" | "bfloat16" | "float16"), grid list<int32> (T,H,W);
    tokens binary: the raw little-endian bytes of the row-major [kept, hidden] tensor;
    index list<int32>: [kept, 3] row-major (t, h, w); kind list<int8>; size list<int32>;
    assignment list<int32> (null when the token set has none); scores list<float32> (each kept
    token's contribution score; null when the token set has none); extras_json string;
    payload_crc32 int64: CRC-32 of the bytes of tokens, index, kind, size, assignment, scores (in
    order; a null column adds nothing).

Versions. 2 added `scores` (issue 14: pooling token sets again orders by them). The reader reads
both: a version-1 row group (no `scores` column) loads with scores None, checked exactly as
before (same schema, same payload CRC over the same columns). Writes are always version 2.

Checksums. Every byte a load reads is covered: `TokenSetLocation.crc32` is the CRC-32 of the row
group's bytes followed by its footer, computed at write time from the standalone encoding and kept
in the catalog row, and checked before anything is decoded (a CRC-32 detects every error burst of
up to 32 bits, so every changed byte, with certainty). It replaces, on load, the in-file
`payload_crc32` (whose bytes it covers), which still verifies locations recorded before the
catalog held `crc32` (it does not cover the metadata columns).
Whatever still fails while decoding is a `TokenSetReadError` too, never a bare decoder exception.

Why the tokens are one binary value rather than a list<uint16>: it holds every float width (fp32
needs 4 bytes), it is bit-exact by construction (no float is ever decoded, NaN payloads and -0.0
survive), and it decodes with one memcpy instead of per-element repetition levels. It is stored
uncompressed: model activations barely compress, and the row group's size then tracks the token
set's own size. Parquet's pages are read with one thread: a row group is small, and a thread pool
costs more than it saves.

Loading one token set reads only its own bytes. A location carries the row group's byte range and
the Parquet footer of that row group alone (as written by encoding the same row into a standalone
file: the column chunks are byte-identical, only their offsets differ, and `write_token_sets`
checks their sizes agree). A load is then one ranged read of the row group, which is stitched
between that footer and the Parquet magic into a valid one-row Parquet file in memory. The file
itself stays an ordinary Parquet file (every tool reads it whole) whose big footer is never
fetched on a load.

Atomicity: on local disk the file is written to a hidden ``.<name>.partial`` next to its final
name, fsync'd, renamed, and its directory fsync'd; on an object store it is spooled to a local
temporary file and uploaded with one PUT (or a multipart upload that is aborted on error), which
the store makes visible all at once. A crash leaves no file under a final name, or a complete one
that no catalog row references yet; `collect_orphan_files` removes both kinds once they are old.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import re
import sys
import tempfile
import uuid
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fsspec.implementations.local import LocalFileSystem

from compression.config import CompressionConfig
from compression.token_set import TokenSet
from storage.ids import validate_uri, validate_video_id, video_id_for
from storage.urls import TOKEN_DIR, filesystem_for, is_local, normalize_store_url, url_of

if sys.byteorder != "little":  # the token bytes are stored little-endian, as torch holds them here
    raise ImportError("storage.token_files supports little-endian machines only")

SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = "tokenreel.schema_version"
PARQUET_MAGIC = b"PAR1"

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}
_DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def _list(value_type: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", value_type, nullable=False))


SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("frame_count", pa.int32(), nullable=False),
        pa.field("frame_timestamps", _list(pa.float64()), nullable=False),
        pa.field("original_count", pa.int64(), nullable=False),
        pa.field("kept_count", pa.int32(), nullable=False),
        pa.field("hidden_size", pa.int32(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("grid", _list(pa.int32()), nullable=False),
        pa.field("tokens", pa.binary(), nullable=False),
        pa.field("index", _list(pa.int32()), nullable=False),
        pa.field("kind", _list(pa.int8()), nullable=False),
        pa.field("size", _list(pa.int32()), nullable=False),
        pa.field("assignment", _list(pa.int32()), nullable=True),
        pa.field("scores", _list(pa.float32()), nullable=True),
        pa.field("extras_json", pa.string(), nullable=False),
        pa.field("payload_crc32", pa.int64(), nullable=False),
    ]
)
# The schema of each version this reader reads: version 1 is version 2 without `scores`.
SCHEMAS = {1: SCHEMA.remove(SCHEMA.get_field_index("scores")), SCHEMA_VERSION: SCHEMA}

# One set of writer settings for the file and for the standalone encodings whose footers the
# locations carry: the column chunks must come out byte-identical in both.
_WRITER_OPTIONS: dict[str, Any] = {
    # Snappy for the small columns: decoding them is most of a load's CPU time, and zstd's
    # few hundred bytes saved per row group cost more time than they save in transfer.
    "compression": {name: "none" if name == "tokens" else "snappy" for name in SCHEMA.names},
    "use_dictionary": False,  # one value per row group: a dictionary only adds a page
    "write_statistics": ["video_id"],  # lets plain Parquet tools find a video's row group
    "store_schema": False,  # SCHEMA (versioned) is the contract, not an embedded Arrow schema
}

_FILE_NAME = re.compile(r"^\.?(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{32}\.parquet(\.partial)?$")
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class TokenSetReadError(Exception):
    """A token set could not be loaded as asked: missing, truncated or corrupt file, unsupported
    schema version, or not the model/config the caller expects. Never means 'wrong tokens'."""

    def __init__(self, file_url: str, reason: str) -> None:
        super().__init__(f"{file_url}: {reason}")
        self.file_url = file_url
        self.reason = reason


@dataclass(frozen=True)
class TokenSetLocation:
    """Where one token set lives, and what it is (enough to load it with one ranged read).

    file_url: the Parquet file (absolute path, or URL such as ``s3://bucket/prefix/...``), as
        the reader should open it: `Catalog` keeps the path relative to the store root and
        resolves it against the store it was opened with.
    row_group: its row group in that file.
    offset, length: the byte range of that row group in the file.
    footer: the Parquet footer (Thrift FileMetaData) of a file holding only this row group,
        with the row group at byte 4 (see the module docstring).
    video_id, model_id, config_hash, kept_count: the identity of the token set stored there.
    crc32: CRC-32 of the row group's bytes followed by `footer` (all a load reads); None for
        locations recorded before catalog revision 0002 (then only the payload CRC is checked).
    """

    file_url: str
    row_group: int
    offset: int
    length: int
    footer: bytes = field(repr=False)
    video_id: str
    model_id: str
    config_hash: str
    kept_count: int
    crc32: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the footer as base64)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["footer"] = base64.b64encode(self.footer).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenSetLocation:
        return cls(**{**data, "footer": base64.b64decode(data["footer"])})


# -- writing ------------------------------------------------------------------------------------


def write_token_sets(
    store_url: str | None, token_sets: Sequence[TokenSet]
) -> list[TokenSetLocation]:
    """Write `token_sets` into one new Parquet file under `store_url`; return their locations.

    Returns only once the file is durable under its final name (callers record catalog rows after
    this, so a token set never becomes visible before its bytes). Each token set needs a
    `model_id` and a `video_id` (or a `source_uri` to derive one with `video_id_for`); ValueError
    otherwise, before anything is written. Thousands of ~1 MB token sets per call are fine: the
    file is spooled to disk, not held in memory (the remote upload is then one PUT/multipart).
    """
    if not token_sets:
        raise ValueError("write_token_sets needs at least one token set")
    tables = [_to_table(ts) for ts in token_sets]
    fs, root = filesystem_for(normalize_store_url(store_url))
    name = f"{datetime.now(timezone.utc):{_STAMP_FORMAT}}-{uuid.uuid4().hex}.parquet"
    if isinstance(fs, LocalFileSystem):
        path = os.path.join(root, TOKEN_DIR, name)
        metadata = _write_local_atomically(path, tables)
    else:
        path = posixpath.join(root, TOKEN_DIR, name)
        metadata = _upload_atomically(fs, path, tables)
    return _locations(url_of(fs, path), metadata, tables)


def _write_parquet(sink: Any, tables: Sequence[pa.Table]) -> pq.FileMetaData:
    """Write `tables` to `sink`, one row group per one-row table; return the file's metadata."""
    writer = pq.ParquetWriter(sink, SCHEMA, **_WRITER_OPTIONS)
    try:
        for table in tables:
            writer.write_table(table)
        writer.add_key_value_metadata({SCHEMA_VERSION_KEY: str(SCHEMA_VERSION)})
    finally:
        writer.close()
    return writer.writer.metadata


def _write_local_atomically(path: str, tables: Sequence[pa.Table]) -> pq.FileMetaData:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f".{name}.partial")
    try:
        with open(partial, "wb") as sink:
            metadata = _write_parquet(sink, tables)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    _fsync_directory(directory)  # makes the rename itself durable
    return metadata


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _upload_atomically(
    fs: fsspec.AbstractFileSystem, path: str, tables: Sequence[pa.Table]
) -> pq.FileMetaData:
    with tempfile.NamedTemporaryFile(prefix="tokenreel-", suffix=".parquet") as spool:
        metadata = _write_parquet(spool, tables)
        spool.flush()
        # One PUT, or a multipart upload that s3fs aborts on error: the key appears complete or not
        # at all, and only under its final name.
        fs.put_file(spool.name, path)
    return metadata


def _locations(
    file_url: str, metadata: pq.FileMetaData, tables: Sequence[pa.Table]
) -> list[TokenSetLocation]:
    locations = []
    for row_group, table in enumerate(tables):
        offset, length = _row_group_range(metadata, row_group)
        row_group_bytes, footer = _encode_alone(table)
        alone_length = len(row_group_bytes)
        if alone_length != length:  # would mean pyarrow encoded the same row differently
            raise RuntimeError(
                f"{file_url}: row group {row_group} is {length} bytes in the file but "
                f"{alone_length} bytes alone; its location footer would not match"
            )
        row = table.slice(0, 1).to_pylist()[0]
        locations.append(
            TokenSetLocation(
                file_url=file_url,
                row_group=row_group,
                offset=offset,
                length=length,
                footer=footer,
                video_id=row["video_id"],
                model_id=row["model_id"],
                config_hash=row["config_hash"],
                kept_count=row["kept_count"],
                # Of the standalone bytes: a file whose range differs from them fails its loads.
                crc32=range_crc32(row_group_bytes, footer),
            )
        )
    return locations


def _row_group_range(metadata: pq.FileMetaData, row_group: int) -> tuple[int, int]:
    """(offset, length) of a row group's column chunks, which Parquet writes contiguously."""
    group = metadata.row_group(row_group)
    starts, ends = [], []
    for j in range(group.num_columns):
        column = group.column(j)
        start = column.data_page_offset
        if column.has_dictionary_page:
            start = min(start, column.dictionary_page_offset)
        starts.append(start)
        ends.append(start + column.total_compressed_size)
    return min(starts), max(ends) - min(starts)


def _encode_alone(table: pa.Table) -> tuple[bytes, bytes]:
    """Encode `table` as a standalone one-row-group file; return (row group bytes, footer)."""
    sink = pa.BufferOutputStream()
    _write_parquet(sink, [table])
    data = sink.getvalue().to_pybytes()
    footer_length = int.from_bytes(data[-8:-4], "little")
    footer_start = len(data) - 8 - footer_length
    return data[len(PARQUET_MAGIC) : footer_start], data[footer_start:-8]


def range_crc32(row_group_bytes: bytes, footer: bytes) -> int:
    """CRC-32 of a row group's bytes followed by its footer: `TokenSetLocation.crc32`."""
    return zlib.crc32(footer, zlib.crc32(row_group_bytes))


def _to_table(ts: TokenSet) -> pa.Table:
    """One-row table of `ts` in SCHEMA; ValueError when `ts` cannot be stored."""
    ts.validate()
    if not ts.model_id:
        raise ValueError("a token set needs a model_id to be stored (it keys the cache)")
    if not ts.video_id and not ts.source_uri:
        raise ValueError("a token set needs a video_id, or a source_uri to derive it from")
    if ts.source_uri:
        validate_uri(ts.source_uri)
    video_id = validate_video_id(ts.video_id or video_id_for(ts.source_uri))
    tokens = ts.tokens.detach().cpu().contiguous()
    arrays = _payload_arrays(
        tokens.view(torch.uint8).numpy().reshape(-1),
        ts.index.cpu().numpy().reshape(-1),
        ts.kind.cpu().numpy(),
        ts.size.cpu().numpy(),
        None if ts.assignment is None else ts.assignment.cpu().numpy(),
        None if ts.scores is None else ts.scores.cpu().numpy(),
    )
    row = {
        "schema_version": SCHEMA_VERSION,
        "video_id": video_id,
        "source_uri": ts.source_uri,
        "content_hash": ts.content_hash,
        "model_id": ts.model_id,
        "config_json": json.dumps(ts.config.to_dict(), sort_keys=True),
        "config_hash": ts.config_hash,
        "frame_count": ts.frame_count,
        "original_count": ts.original_count,
        "kept_count": ts.kept_count,
        "hidden_size": ts.hidden_size,
        "dtype": DTYPE_NAMES[tokens.dtype],
        "extras_json": json.dumps(ts.extras, sort_keys=True),
        "payload_crc32": _crc32(arrays.values()),
    }
    columns = {name: pa.array([value], SCHEMA.field(name).type) for name, value in row.items()}
    columns["frame_timestamps"] = _one_list(
        np.asarray(ts.frame_timestamps, np.float64), "frame_timestamps"
    )
    columns["grid"] = _one_list(np.asarray(ts.grid, np.int32), "grid")
    columns["tokens"] = pa.array([arrays["tokens"].tobytes()], pa.binary())
    for name in ("index", "kind", "size", "assignment", "scores"):
        columns[name] = _one_list(arrays[name], name)
    return pa.table([columns[name] for name in SCHEMA.names], schema=SCHEMA)


def _one_list(values: np.ndarray | None, name: str) -> pa.Array:
    """A one-row list array holding `values` (a null row when `values` is None)."""
    list_type = SCHEMA.field(name).type
    if values is None:
        return pa.nulls(1, list_type)
    flat = pa.array(values, list_type.value_type)
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), flat, type=list_type)


def _payload_arrays(
    tokens: np.ndarray,
    index: np.ndarray,
    kind: np.ndarray,
    size: np.ndarray,
    assignment: np.ndarray | None,
    scores: np.ndarray | None,
) -> dict[str, np.ndarray | None]:
    """The payload columns in checksum order (a version-1 row has no scores: None)."""
    return {
        "tokens": tokens,
        "index": index,
        "kind": kind,
        "size": size,
        "assignment": assignment,
        "scores": scores,
    }


def _crc32(arrays: Collection[np.ndarray | None]) -> int:
    crc = 0
    for array in arrays:
        if array is not None:
            crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    return crc


# -- reading ------------------------------------------------------------------------------------


def read_token_set(
    location: TokenSetLocation,
    *,
    expected_config_hash: str | None = None,
    expected_model_id: str | None = None,
) -> TokenSet:
    """Load the token set at `location` (one ranged read of its row group, nothing else).

    Checks the CRC-32 of every byte read (`location.crc32`, when the location has one) before
    decoding, then the schema (version in the file metadata and column, column types), the
    identity in the row against the location and against `expected_config_hash` /
    `expected_model_id` when given, every shape, the dtype, the config hash of the stored config
    and, for a location without `crc32`, the payload CRC-32. Any failure (missing or truncated
    file, corrupt bytes, mismatch, a relative file URL) raises `TokenSetReadError` naming the file.
    """
    url = location.file_url
    if expected_model_id is not None and location.model_id != expected_model_id:
        raise TokenSetReadError(url, f"model {location.model_id!r}, expected {expected_model_id!r}")
    if expected_config_hash is not None and location.config_hash != expected_config_hash:
        raise TokenSetReadError(
            url, f"config hash {location.config_hash!r}, expected {expected_config_hash!r}"
        )
    data = _read_range(location)
    if location.crc32 is not None and range_crc32(data, location.footer) != location.crc32:
        raise TokenSetReadError(
            url,
            f"corrupt row group {location.row_group}: checksum mismatch (its bytes in the file "
            "or the footer in its location changed since it was written)",
        )
    try:
        # The range CRC covers the payload's bytes too: the payload CRC would only repeat it.
        table, version = _decode_row_group(data, location)
        token_set = _from_table(table, version, url, check_payload=location.crc32 is None)
    except TokenSetReadError:
        raise
    except _DECODE_ERRORS as exc:
        # Only reachable for locations without crc32: corrupt bytes the decoder trips over.
        raise TokenSetReadError(url, f"corrupt row group {location.row_group}: {exc!r}") from exc
    identity = {
        "video_id": (token_set.video_id, location.video_id),
        "model_id": (token_set.model_id, location.model_id),
        "config_hash": (token_set.config_hash, location.config_hash),
        "kept_count": (token_set.kept_count, location.kept_count),
    }
    for name, (stored, expected) in identity.items():
        if stored != expected:
            raise TokenSetReadError(
                url,
                f"row group {location.row_group} holds {name}={stored!r}, "
                f"the location says {expected!r}",
            )
    return token_set


# What decoding malformed bytes raises in pyarrow (its own errors; invalid UTF-8 as
# UnicodeDecodeError, a ValueError), json (ValueError), numpy and torch (ValueError, TypeError,
# IndexError, OverflowError on absurd sizes).
_DECODE_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, IndexError, OverflowError)


def _read_range(location: TokenSetLocation) -> bytes:
    """The row group's bytes, exactly `location.length` of them."""
    url = location.file_url
    if is_local(url) and not os.path.isabs(url.removeprefix("file://")):
        raise TokenSetReadError(
            url, "relative location: resolve it against its store (Catalog(url, store_url=...))"
        )
    fs, path = filesystem_for(url)
    end = location.offset + location.length
    try:
        data = fs.cat_file(path, start=location.offset, end=end)
    except FileNotFoundError as exc:
        raise TokenSetReadError(url, "file not found (deleted, or never written)") from exc
    except OSError as exc:
        raise TokenSetReadError(url, f"cannot read bytes {location.offset}-{end}: {exc}") from exc
    if len(data) != location.length:
        raise TokenSetReadError(
            url,
            f"truncated: got {len(data)} of {location.length} bytes at offset {location.offset}",
        )
    return data


def _decode_row_group(data: bytes, location: TokenSetLocation) -> tuple[pa.Table, int]:
    """(the one-row table in `data`, stitched between magic and the location's footer; its
    schema version, one of `SCHEMAS`)."""
    url = location.file_url
    footer_length = len(location.footer).to_bytes(4, "little")
    standalone = b"".join((PARQUET_MAGIC, data, location.footer, footer_length, PARQUET_MAGIC))
    table = pq.ParquetFile(pa.BufferReader(standalone)).read(use_threads=False)
    stamp = table.schema.metadata and table.schema.metadata.get(SCHEMA_VERSION_KEY.encode())
    version = next((v for v in SCHEMAS if stamp == str(v).encode()), None)
    if version is None:
        raise TokenSetReadError(
            url,
            f"schema version {stamp!r} in the file metadata; this reader reads versions "
            f"{', '.join(map(str, SCHEMAS))}",
        )
    if table.num_rows != 1 or not table.schema.equals(SCHEMAS[version], check_metadata=False):
        raise TokenSetReadError(
            url, f"row group {location.row_group} is not one token set of schema v{version}"
        )
    return table, version


def _from_table(table: pa.Table, version: int, url: str, *, check_payload: bool = True) -> TokenSet:
    """The TokenSet in a one-row table of `SCHEMAS[version]`, every invariant checked (the
    payload CRC-32 when `check_payload`)."""
    schema = SCHEMAS[version]
    scalars = {
        name: table.column(name)[0].as_py()
        for name in schema.names
        if not pa.types.is_list(schema.field(name).type) and name != "tokens"
    }
    if scalars["schema_version"] != version:
        raise TokenSetReadError(url, f"schema version column is {scalars['schema_version']}")
    dtype = _DTYPES_BY_NAME.get(scalars["dtype"])
    if dtype is None:
        raise TokenSetReadError(url, f"unknown dtype {scalars['dtype']!r}")
    kept, hidden = scalars["kept_count"], scalars["hidden_size"]
    grid = _list_values(table, "grid")
    timestamps = _list_values(table, "frame_timestamps")
    arrays = _payload_arrays(
        np.frombuffer(table.column("tokens")[0].as_buffer(), np.uint8),
        _list_values(table, "index"),
        _list_values(table, "kind"),
        _list_values(table, "size"),
        _list_values(table, "assignment"),
        _list_values(table, "scores") if "scores" in schema.names else None,
    )
    expected_lengths = {
        "tokens": kept * hidden * dtype.itemsize,
        "index": kept * 3,
        "kind": kept,
        "size": kept,
        "assignment": scalars["original_count"],
        "scores": kept,
    }
    for name, length in expected_lengths.items():
        if arrays[name] is not None and len(arrays[name]) != length:
            raise TokenSetReadError(
                url, f"{name} has {len(arrays[name])} entries, expected {length}"
            )
    if len(grid) != 3 or int(np.prod(grid)) != scalars["original_count"]:
        raise TokenSetReadError(
            url, f"grid {grid.tolist()} does not match {scalars['original_count']} tokens"
        )
    if len(timestamps) != scalars["frame_count"]:
        raise TokenSetReadError(
            url, f"{len(timestamps)} timestamps for {scalars['frame_count']} frames"
        )
    if check_payload and _crc32(arrays.values()) != scalars["payload_crc32"]:
        raise TokenSetReadError(url, "payload checksum mismatch (corrupt token bytes)")
    try:
        config = CompressionConfig.from_dict(json.loads(scalars["config_json"]))
        if config.stable_hash() != scalars["config_hash"]:
            raise ValueError(
                f"stored config hashes to {config.stable_hash()}, not {scalars['config_hash']}"
            )
        assignment, scores = arrays["assignment"], arrays["scores"]
        return TokenSet(
            tokens=torch.from_numpy(arrays["tokens"].copy()).view(dtype).reshape(kept, hidden),
            index=torch.from_numpy(arrays["index"].astype(np.int32)).reshape(kept, 3),
            kind=torch.from_numpy(arrays["kind"].astype(np.int8)),
            size=torch.from_numpy(arrays["size"].astype(np.int32)),
            grid=tuple(int(g) for g in grid),
            config=config,
            assignment=None
            if assignment is None
            else torch.from_numpy(assignment.astype(np.int32)),
            scores=None if scores is None else torch.from_numpy(scores.astype(np.float32)),
            model_id=scalars["model_id"],
            video_id=validate_video_id(scalars["video_id"]),
            source_uri=scalars["source_uri"],
            content_hash=scalars["content_hash"],
            frame_timestamps=tuple(float(t) for t in timestamps),
            extras=json.loads(scalars["extras_json"]),
        )
    except (ValueError, TypeError) as exc:
        raise TokenSetReadError(url, f"invalid token set: {exc}") from exc


def _list_values(table: pa.Table, name: str) -> np.ndarray | None:
    """The values of the one-row list column `name` (None when the row's value is null)."""
    column = table.column(name).combine_chunks()
    if column.null_count:
        return None
    return column.values.to_numpy(zero_copy_only=False)


# -- garbage collection -------------------------------------------------------------------------


def collect_orphan_files(
    store_url: str | None,
    referenced: Collection[str],
    *,
    older_than: timedelta = timedelta(hours=6),
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Delete token-set files (and crashed writers' partial files) that no catalog row references
    and whose name stamps them older than `older_than`; return their URLs.

    `referenced` are the file URLs the catalog points to (`Catalog.referenced_file_urls()`).
    `older_than` must exceed the longest write-then-record gap of a live writer: a file written a
    moment ago is legitimately unreferenced until its catalog rows land. Files whose names this
    module did not generate are never touched.
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    now = now or datetime.now(timezone.utc)
    fs, root = filesystem_for(normalize_store_url(store_url))
    directory = (os.path if isinstance(fs, LocalFileSystem) else posixpath).join(root, TOKEN_DIR)
    fs.invalidate_cache(directory)
    if not fs.exists(directory):
        return []
    removed = []
    for path in sorted(fs.find(directory)):
        match = _FILE_NAME.fullmatch(posixpath.basename(path))
        if match is None:
            continue
        stamp = datetime.strptime(match["stamp"], _STAMP_FORMAT).replace(tzinfo=timezone.utc)
        url = url_of(fs, path)
        if now - stamp < older_than or url in referenced:
            continue
        if not dry_run:
            fs.rm_file(path)
        removed.append(url)
    return removed
