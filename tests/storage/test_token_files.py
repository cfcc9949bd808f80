from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from storage_factory import assert_same_token_set, make_token_set

from compression.config import CompressionConfig
from storage import token_files
from storage.ids import video_id_for
from storage.token_files import (
    SCHEMA_VERSION,
    TokenSetReadError,
    collect_orphan_files,
    read_token_set,
    write_token_sets,
)
from storage.urls import filesystem_for

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DATA = Path(__file__).parent / "data"


class CountingFileSystem:
    """Wraps an fsspec filesystem, counts the bytes its reads return, and exposes nothing but
    `cat_file`: a read through any other method fails the test instead of going uncounted."""

    def __init__(self, fs) -> None:
        self._fs = fs
        self.bytes_read = 0
        self.calls = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = self._fs.cat_file(path, start=start, end=end, **kwargs)
        self.bytes_read += len(data)
        self.calls += 1
        return data


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[CountingFileSystem]:
    """From now on, wrap every filesystem the reader opens to count its bytes."""
    opened: list[CountingFileSystem] = []

    def counting_filesystem_for(url: str):
        fs, path = filesystem_for(url)
        opened.append(CountingFileSystem(fs))
        return opened[-1], path

    monkeypatch.setattr(token_files, "filesystem_for", counting_filesystem_for)
    return opened


def _s3_store(bucket: str) -> str:
    return f"s3://{bucket}/prefix/store"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_local_is_bit_exact(tmp_path, dtype: torch.dtype) -> None:
    sets = [
        make_token_set(0, dtype=dtype),
        make_token_set(1, dtype=dtype, with_assignment=False, kept=1, hidden=3),
        make_token_set(3, dtype=dtype, with_scores=False),
        make_token_set(2, dtype=dtype, config=CompressionConfig(retention_ratio=0.1, tau=0.5)),
    ]
    locations = write_token_sets(str(tmp_path), sets)
    assert len({loc.file_url for loc in locations}) == 1
    assert [loc.row_group for loc in locations] == [0, 1, 2, 3]
    for original, location in zip(sets, locations, strict=True):
        assert location.video_id == video_id_for(original.source_uri)
        loaded = read_token_set(
            location,
            expected_config_hash=original.config_hash,
            expected_model_id=original.model_id,
        )
        assert_same_token_set(original, loaded)
        assert loaded.video_id == location.video_id


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_s3_is_bit_exact(s3_bucket: str, dtype: torch.dtype) -> None:
    sets = [make_token_set(seed, dtype=dtype) for seed in range(3)]
    locations = write_token_sets(_s3_store(s3_bucket), sets)
    assert locations[0].file_url.startswith(f"s3://{s3_bucket}/prefix/store/tokensets/")
    for original, location in zip(sets, locations, strict=True):
        assert_same_token_set(original, read_token_set(location))


def test_file_is_plain_parquet_with_versioned_schema(tmp_path) -> None:
    sets = [make_token_set(seed) for seed in range(4)]
    locations = write_token_sets(str(tmp_path), sets)
    parquet = pq.ParquetFile(locations[0].file_url)
    assert parquet.metadata.num_row_groups == 4
    assert parquet.metadata.metadata[b"tokenreel.schema_version"] == str(SCHEMA_VERSION).encode()
    table = parquet.read()
    assert table.column("schema_version").to_pylist() == [SCHEMA_VERSION] * 4
    assert table.column("video_id").to_pylist() == [loc.video_id for loc in locations]
    assert table.column("dtype").to_pylist() == ["bfloat16"] * 4
    assert table.column("assignment").null_count == 0
    assert table.column("scores").type == pa.list_(pa.field("element", pa.float32(), False))
    assert table.column("scores").null_count == 0
    # The location's range is exactly the row group's column chunks.
    group = parquet.metadata.row_group(2)
    assert locations[2].offset == min(
        group.column(j).data_page_offset for j in range(group.num_columns)
    )


def _many_token_sets(count: int) -> list:
    return [make_token_set(seed, kept=64, hidden=256, grid=(8, 6, 6)) for seed in range(count)]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_loading_one_token_set_reads_only_its_own_bytes(
    request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    store = str(tmp_path) if where == "local" else _s3_store(request.getfixturevalue("s3_bucket"))
    sets = _many_token_sets(24)
    locations = write_token_sets(store, sets)
    fs, path = filesystem_for(locations[0].file_url)
    file_size = fs.size(path)
    counting = count_reads(monkeypatch)
    for i in (0, 11, 23):
        counting.clear()
        assert_same_token_set(sets[i], read_token_set(locations[i]))
        read = sum(c.bytes_read for c in counting)
        assert sum(c.calls for c in counting) == 1
        assert read <= 2 * sets[i].nbytes, (read, sets[i].nbytes)
        assert read * 10 < file_size  # and not the whole file, footer included


def test_expected_model_and_config_are_enforced(tmp_path) -> None:
    ts = make_token_set(0)
    (location,) = write_token_sets(str(tmp_path), [ts])
    with pytest.raises(TokenSetReadError, match="expected 'other-model'") as info:
        read_token_set(location, expected_model_id="other-model")
    assert info.value.file_url == location.file_url
    with pytest.raises(TokenSetReadError, match="config hash"):
        read_token_set(location, expected_config_hash=CompressionConfig(tau=0.1).stable_hash())
    # A location that lies about what the row holds is caught by the row itself.
    forged = token_files.TokenSetLocation(**{**location.__dict__, "model_id": "other-model"})
    with pytest.raises(TokenSetReadError, match="model_id='test-model'"):
        read_token_set(forged, expected_model_id="other-model")


def test_truncated_file_is_a_clear_error(tmp_path) -> None:
    locations = write_token_sets(str(tmp_path), [make_token_set(s) for s in range(3)])
    path = locations[0].file_url
    with open(path, "r+b") as f:
        f.truncate(locations[2].offset + locations[2].length // 2)
    with pytest.raises(TokenSetReadError, match="truncated") as info:
        read_token_set(locations[2])
    assert path in str(info.value)
    with pytest.raises(Exception, match=r"(?i)parquet|footer|magic"):
        pq.read_table(path)  # and it is no longer a Parquet file for anyone


def test_corrupt_token_bytes_fail_the_checksum(tmp_path) -> None:
    ts = make_token_set(0, hidden=64)
    (location,) = write_token_sets(str(tmp_path), [ts])
    with open(location.file_url, "rb") as f:
        raw = f.read()
    token_bytes = ts.tokens.contiguous().view(torch.uint8).numpy().tobytes()
    at = raw.index(token_bytes) + 100
    with open(location.file_url, "r+b") as f:
        f.seek(at)
        f.write(bytes([raw[at] ^ 0x01]))
    with pytest.raises(TokenSetReadError, match="checksum"):
        read_token_set(location)


def test_corrupt_metadata_bytes_are_a_clear_error(tmp_path) -> None:
    (location,) = write_token_sets(str(tmp_path), [make_token_set(0)])
    with open(location.file_url, "r+b") as f:
        f.seek(location.offset)
        f.write(b"\xff" * 64)  # smash the first page header
    with pytest.raises(TokenSetReadError, match="corrupt row group"):
        read_token_set(location)


def test_unsupported_schema_version_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_files, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    (location,) = write_token_sets(str(tmp_path), [make_token_set(0)])
    monkeypatch.setattr(token_files, "SCHEMA_VERSION", SCHEMA_VERSION)
    with pytest.raises(
        TokenSetReadError,
        match=rf"schema version b'{SCHEMA_VERSION + 1}'.*reads versions 1, {SCHEMA_VERSION}",
    ):
        read_token_set(location)


# tests/storage/data/token_set_v1.parquet and its location were written by schema version 1
# (storage/token_files.py at commit 5a6432a) with
#     write_token_sets(store, [make_token_set(0, kept=3, hidden=4, grid=(2, 2, 2))])
# before make_token_set drew scores, i.e. the token set make_token_set(..., with_scores=False).
def _version_1_location() -> token_files.TokenSetLocation:
    data = json.loads((DATA / "token_set_v1.location.json").read_text())
    return token_files.TokenSetLocation.from_dict(
        {**data, "file_url": str(DATA / data["file_url"])}
    )


def _version_1_token_set():
    # Written before dpc_knn_convention existed: its config reads back with the legacy value.
    legacy = CompressionConfig(dpc_knn_convention="exclude_self")
    return make_token_set(0, kept=3, hidden=4, grid=(2, 2, 2), with_scores=False, config=legacy)


@pytest.mark.parametrize("with_range_crc", [True, False])
def test_version_1_files_still_read(with_range_crc: bool) -> None:
    location = _version_1_location()
    assert pq.ParquetFile(location.file_url).metadata.metadata[b"tokenreel.schema_version"] == b"1"
    if not with_range_crc:  # a location recorded before the catalog held crc32
        location = replace(location, crc32=None)
    loaded = read_token_set(location)
    assert loaded.scores is None
    assert_same_token_set(_version_1_token_set(), loaded)
    # Its config keeps the hash it was stored under (the catalog's key to it), and today's
    # default config, which differs from it in the DPC-KNN convention only, gets another one.
    assert loaded.config_hash == location.config_hash
    assert loaded.config == replace(CompressionConfig(), dpc_knn_convention="exclude_self")
    assert CompressionConfig().stable_hash() != location.config_hash


def test_payload_checksum_covers_the_scores(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A location without crc32 relies on the in-row payload CRC: a row whose scores differ from
    the ones it was computed over must not load."""
    ts = make_token_set(0, kept=3, hidden=4, grid=(2, 2, 2))
    table = token_files._to_table(ts)
    other = token_files._to_table(replace(ts, scores=ts.scores + 1.0))
    forged = table.set_column(
        table.schema.get_field_index("scores"), "scores", other.column("scores")
    )
    row_group, footer = token_files._encode_alone(forged)
    location = token_files.TokenSetLocation(
        file_url=str(tmp_path / "forged.parquet"),
        row_group=0,
        offset=4,
        length=len(row_group),
        footer=footer,
        video_id=table.column("video_id")[0].as_py(),
        model_id=ts.model_id,
        config_hash=ts.config_hash,
        kept_count=ts.kept_count,
    )
    (tmp_path / "forged.parquet").write_bytes(b"PAR1" + row_group)
    with pytest.raises(TokenSetReadError, match="payload checksum"):
        read_token_set(location)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    (location,) = write_token_sets(str(tmp_path), [make_token_set(0)])
    os.unlink(location.file_url)
    with pytest.raises(TokenSetReadError, match="file not found"):
        read_token_set(location)


def test_relative_file_url_is_refused_not_resolved_against_the_working_directory(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (location,) = write_token_sets(str(tmp_path), [make_token_set(0)])
    monkeypatch.chdir(tmp_path)  # where tokensets/<name> would happen to exist
    relative = replace(location, file_url=f"tokensets/{os.path.basename(location.file_url)}")
    with pytest.raises(TokenSetReadError, match="relative location"):
        read_token_set(relative)


def test_invalid_token_sets_are_refused_before_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match="invalid video id"):
        write_token_sets(str(tmp_path), [make_token_set(0).with_metadata(video_id="../x")])
    with pytest.raises(ValueError, match="model_id"):
        write_token_sets(str(tmp_path), [make_token_set(0, model_id="")])
    with pytest.raises(ValueError, match="video_id"):
        write_token_sets(str(tmp_path), [make_token_set(0).with_metadata(source_uri="")])
    with pytest.raises(ValueError, match="at least one"):
        write_token_sets(str(tmp_path), [])
    assert not (tmp_path / "tokensets").exists()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_write_table(self, table, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, table, *args, **kwargs)

    original = pq.ParquetWriter.write_table
    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing_write_table)
    with pytest.raises(OSError, match="disk full"):
        write_token_sets(str(tmp_path), [make_token_set(s) for s in range(3)])
    assert os.listdir(tmp_path / "tokensets") == []


def _file_name(age: timedelta, *, partial: bool = False) -> str:
    stamp = datetime.now(timezone.utc) - age
    name = f"{stamp:%Y%m%dT%H%M%SZ}-{os.urandom(16).hex()}.parquet"
    return f".{name}.partial" if partial else name


@pytest.mark.parametrize("where", ["local", "s3"])
def test_orphan_files_are_collected(request: pytest.FixtureRequest, tmp_path, where: str) -> None:
    store = str(tmp_path) if where == "local" else _s3_store(request.getfixturevalue("s3_bucket"))
    kept = write_token_sets(store, [make_token_set(0)])[0].file_url
    fs, root = filesystem_for(store)
    directory = f"{root}/tokensets"
    names = {
        "old_orphan": _file_name(timedelta(days=2)),
        "old_partial": _file_name(timedelta(days=2), partial=True),
        "young_orphan": _file_name(timedelta(minutes=1)),
        "foreign": "notes.txt",
    }
    for name in names.values():
        fs.pipe_file(f"{directory}/{name}", b"x")
    referenced = {kept}
    dry = collect_orphan_files(store, referenced, older_than=timedelta(hours=1), dry_run=True)
    removed = collect_orphan_files(store, referenced, older_than=timedelta(hours=1))
    assert dry == removed
    assert sorted(os.path.basename(url) for url in removed) == sorted(
        [names["old_orphan"], names["old_partial"]]
    )
    fs.invalidate_cache()
    left = {os.path.basename(p) for p in fs.ls(directory, detail=False)}
    assert left == {os.path.basename(kept), names["young_orphan"], names["foreign"]}
    # With no catalog reference and no age limit, the real token-set file goes too.
    removed = collect_orphan_files(store, set(), older_than=timedelta(0))
    assert {os.path.basename(url) for url in removed} == {
        os.path.basename(kept),
        names["young_orphan"],
    }


def _flipped(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


def _outcome(location: token_files.TokenSetLocation) -> str:
    try:
        read_token_set(location)
    except Exception as exc:  # records every kind of failure, to assert which kinds there are
        return type(exc).__name__
    return "loaded"


def _serve_range(monkeypatch: pytest.MonkeyPatch, location) -> list[bytes]:
    """Make every ranged read of `location` return `served[0]` (initially the stored bytes), so
    that thousands of corruptions are tried without rewriting the file."""
    with open(location.file_url, "rb") as f:
        f.seek(location.offset)
        served = [f.read(location.length)]

    class ServingFileSystem:
        def cat_file(self, path, start=None, end=None):
            assert (start, end) == (location.offset, location.offset + location.length)
            return served[0]

    monkeypatch.setattr(token_files, "filesystem_for", lambda url: (ServingFileSystem(), url))
    return served


@pytest.mark.parametrize("version", [1, 2])
def test_every_byte_a_load_reads_is_checksummed(
    tmp_path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """Issue 12: flip each byte of the row group's range and of the footer in turn; every load
    must fail with TokenSetReadError: never another exception, never a different token set.
    Version 2 (scores included) as written now, version 1 as written before."""
    if version == 1:
        ts, location = _version_1_token_set(), _version_1_location()
    else:
        ts = make_token_set(0, kept=3, hidden=4, grid=(2, 2, 2))
        (location,) = write_token_sets(str(tmp_path), [ts])
    assert location.crc32 is not None
    served = _serve_range(monkeypatch, location)
    stored = served[0]
    assert_same_token_set(ts, read_token_set(location))
    outcomes = []
    for position in range(len(stored)):
        served[0] = _flipped(stored, position)
        outcomes.append(_outcome(location))
    served[0] = stored
    for position in range(len(location.footer)):
        outcomes.append(_outcome(replace(location, footer=_flipped(location.footer, position))))
    assert len(outcomes) == location.length + len(location.footer) > 1000
    assert set(outcomes) == {"TokenSetReadError"}


def test_locations_without_range_checksum_still_fail_cleanly(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A location recorded before the catalog held crc32 verifies with the payload CRC only:
    corrupt metadata may then go unnoticed, but a decode failure is still a TokenSetReadError
    (corrupt strings were an unwrapped UnicodeDecodeError)."""
    ts = make_token_set(0, kept=3, hidden=4, grid=(2, 2, 2))
    (location,) = write_token_sets(str(tmp_path), [ts])
    legacy = replace(location, crc32=None)
    served = _serve_range(monkeypatch, location)
    stored = served[0]
    outcomes = set()
    for position in range(len(stored)):
        served[0] = _flipped(stored, position)
        outcomes.add(_outcome(legacy))
    served[0] = stored
    for position in range(len(location.footer)):
        outcomes.add(_outcome(replace(legacy, footer=_flipped(location.footer, position))))
    assert "TokenSetReadError" in outcomes and outcomes <= {"TokenSetReadError", "loaded"}
