"""SOURCE expansion (directory, glob, prefix, manifests), validation, streamed content hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.index.sources import (
    content_hash,
    iter_sources,
    list_sources,
    list_sources_with_fingerprints,
    local_copy,
    normalize_uri,
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    for name in ("b.mp4", "a.MKV", "sub/c.webm", "notes.txt", "sub/.hidden/d.mp4", "x.json"):
        path = tmp_path / "videos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 100)
    return tmp_path / "videos"


def test_directory_lists_video_files_recursively_sorted(corpus: Path) -> None:
    assert list_sources(corpus) == [
        str(corpus / "a.MKV"),
        str(corpus / "b.mp4"),
        str(corpus / "sub/.hidden/d.mp4"),
        str(corpus / "sub/c.webm"),
    ]


def test_glob_takes_what_it_matches(corpus: Path) -> None:
    assert list_sources(str(corpus / "*.mp4")) == [str(corpus / "b.mp4")]
    assert list_sources(str(corpus / "**" / "*.txt")) == [str(corpus / "notes.txt")]


def test_single_file_and_file_scheme(corpus: Path) -> None:
    assert list_sources(corpus / "b.mp4") == [str(corpus / "b.mp4")]
    assert list_sources(f"file://{corpus}/b.mp4") == [str(corpus / "b.mp4")]


def test_text_manifest_resolves_relative_entries_and_skips_comments(corpus: Path) -> None:
    manifest = corpus.parent / "list.txt"
    manifest.write_text(
        f"# my corpus\nvideos/b.mp4\n\n{corpus}/a.MKV\nvideos/b.mp4\ns3://bucket/key.mp4\n"
    )
    assert list_sources(manifest) == [
        str(corpus / "b.mp4"),
        str(corpus / "a.MKV"),
        "s3://bucket/key.mp4",
    ]


def test_csv_and_parquet_manifests_need_a_uri_column(corpus: Path) -> None:
    csv_manifest = corpus.parent / "list.csv"
    csv_manifest.write_text("uri,label\nvideos/b.mp4,1\nvideos/sub/c.webm,2\n")
    assert list_sources(csv_manifest) == [str(corpus / "b.mp4"), str(corpus / "sub/c.webm")]
    table_manifest = corpus.parent / "list.parquet"
    pq.write_table(pa.table({"uri": ["videos/sub/c.webm"], "n": [1]}), table_manifest)
    assert list_sources(table_manifest) == [str(corpus / "sub/c.webm")]
    wrong = corpus.parent / "wrong.csv"
    wrong.write_text("path\nvideos/b.mp4\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list_sources(wrong)
    pq.write_table(pa.table({"path": ["x"]}), corpus.parent / "wrong.parquet")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list_sources(corpus.parent / "wrong.parquet")


def test_bad_sources_and_entries_are_clear_errors(corpus: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        list_sources(corpus / "missing")
    with pytest.raises(ValueError, match="empty"):
        list_sources("  ")
    with pytest.raises(ValueError, match="unsupported URI scheme 'gopher'"):
        list_sources(["gopher://x/y.mp4"])
    manifest = corpus.parent / "bad.csv"
    manifest.write_text("uri\nvideos/b.mp4\n,\n")
    with pytest.raises(ValueError, match="entry 2 is empty"):
        list_sources(manifest)
    for bad in ("", "s3://", "a\x00b"):
        with pytest.raises(ValueError):
            normalize_uri(bad)


def test_sequences_are_normalised_and_deduplicated(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(corpus)
    assert list_sources(["b.mp4", str(corpus / "b.mp4"), "s3://bkt/a.mp4"]) == [
        str(corpus / "b.mp4"),
        "s3://bkt/a.mp4",
    ]


def test_local_copy_of_a_local_file_hashes_it_in_place(corpus: Path) -> None:
    path = corpus / "b.mp4"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    with local_copy(str(path)) as copy:
        assert copy.path == str(path)
        assert copy.content_hash == expected == content_hash(str(path))
        assert copy.size == path.stat().st_size
    assert path.exists()


def test_s3_prefix_glob_manifest_and_streamed_copy(s3_bucket: str, corpus: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("s3")
    for name in ("b.mp4", "sub/c.webm", "notes.txt"):
        fs.put(str(corpus / name), f"{s3_bucket}/clips/{name}")
    fs.pipe(f"{s3_bucket}/list.txt", b"clips/b.mp4\nclips/notes.txt\n")
    b_uri, c_uri = f"s3://{s3_bucket}/clips/b.mp4", f"s3://{s3_bucket}/clips/sub/c.webm"
    assert list_sources(f"s3://{s3_bucket}/clips") == [b_uri, c_uri]
    assert list_sources(f"s3://{s3_bucket}/clips/*.mp4") == [b_uri]
    assert list_sources(f"s3://{s3_bucket}/list.txt") == [
        b_uri,
        f"s3://{s3_bucket}/clips/notes.txt",
    ]
    with pytest.raises(ValueError, match="not found"):
        list_sources(f"s3://{s3_bucket}/nothing-here")
    with local_copy(c_uri) as copy:
        assert Path(copy.path).read_bytes() == (corpus / "sub/c.webm").read_bytes()
        assert copy.content_hash == content_hash(c_uri) == content_hash(str(corpus / "sub/c.webm"))
    assert not Path(copy.path).exists()  # the temporary copy is gone


def test_local_fingerprints_are_size_and_mtime_and_change_with_the_file(corpus: Path) -> None:
    b = corpus / "b.mp4"
    listed = list_sources_with_fingerprints(corpus)
    assert list(listed) == list_sources(corpus)
    stat = b.stat()
    assert listed[str(b)] == f"local:{stat.st_size}:{stat.st_mtime_ns}"
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten, same size
    changed = f"local:{stat.st_size}:{stat.st_mtime_ns + 1_000_000}"
    assert list_sources_with_fingerprints(corpus)[str(b)] == changed
    assert list_sources_with_fingerprints(str(corpus / "*.mp4")) == {str(b): changed}
    assert list_sources_with_fingerprints(b) == {str(b): changed}
    manifest = corpus.parent / "list.txt"
    manifest.write_text("videos/b.mp4\nvideos/missing.mp4\ns3://bucket/key.mp4\n")
    assert list_sources_with_fingerprints(manifest) == {
        str(b): changed,
        str(corpus / "missing.mp4"): None,  # fails when indexed, and is recorded so
        "s3://bucket/key.mp4": None,  # named, not listed: unknown without a request
    }
    assert list_sources_with_fingerprints([str(b), "s3://bkt/a.mp4"])["s3://bkt/a.mp4"] is None


def test_s3_fingerprints_are_the_listing_etags(
    s3_bucket: str, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec
    import s3fs

    fs = fsspec.filesystem("s3")
    for name in ("b.mp4", "sub/c.webm"):
        fs.put(str(corpus / name), f"{s3_bucket}/clips/{name}")
    b_uri, c_uri = f"s3://{s3_bucket}/clips/b.mp4", f"s3://{s3_bucket}/clips/sub/c.webm"
    calls: list[str] = []
    original = s3fs.S3FileSystem._call_s3

    async def counting_call_s3(self, method, *args, **kwargs):
        calls.append(method)
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting_call_s3)
    fs.invalidate_cache()
    listed = list_sources_with_fingerprints(f"s3://{s3_bucket}/clips")
    assert "list_objects_v2" in calls and "head_object" not in calls  # ETags from the listing
    etag = fs.info(f"{s3_bucket}/clips/b.mp4")["ETag"].strip('"')
    assert listed == {b_uri: f"etag:{etag}", c_uri: listed[c_uri]}
    assert listed[c_uri].startswith("etag:") and listed[c_uri] != listed[b_uri]
    calls.clear()
    assert list_sources_with_fingerprints(f"s3://{s3_bucket}/clips/*.mp4") == {b_uri: listed[b_uri]}
    assert "head_object" not in calls

    fs.pipe_file(f"{s3_bucket}/clips/b.mp4", b"a different video")  # replaced at the same key
    fs.invalidate_cache()
    relisted = list_sources_with_fingerprints(f"s3://{s3_bucket}/clips")
    assert relisted[b_uri] != listed[b_uri] and relisted[c_uri] == listed[c_uri]
    assert list_sources_with_fingerprints(b_uri) == {b_uri: relisted[b_uri]}  # a single object


def test_a_directory_is_walked_in_the_order_of_its_sorted_paths(tmp_path: Path) -> None:
    """The streamed walk (one folder at a time) lists what sorting the whole listing would; as
    "-" < "." < "/", that is a-b/y.mp4, a.mp4, then a/..., though the folder "a" sorts first."""
    root = tmp_path / "v"
    names = ["a/x.mp4", "a.mp4", "a-b/y.mp4", "ab.mp4", "a/b/z.mp4", "a/c.mp4", "B.mp4"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "a" / "loop").symlink_to(root)  # a folder on the walked path is not entered again
    expected = sorted(str(root / name) for name in names)
    assert list_sources(root) == expected
    assert [uri for uri, _ in iter_sources(root)] == expected


def test_the_stream_keeps_repeats_and_the_lists_drop_them(corpus: Path) -> None:
    manifest = corpus.parent / "twice.txt"
    manifest.write_text("videos/b.mp4\nvideos/a.MKV\nvideos/b.mp4\n")
    b, a = str(corpus / "b.mp4"), str(corpus / "a.MKV")
    assert [uri for uri, _ in iter_sources(manifest)] == [b, a, b]
    assert list_sources(manifest) == [b, a]


def test_a_parquet_manifest_is_read_in_batches(corpus: Path) -> None:
    manifest = corpus.parent / "many.parquet"
    uris = [f"s3://bkt/{i:05d}.mp4" for i in range(2500)]
    pq.write_table(pa.table({"uri": uris, "n": list(range(2500))}), manifest, row_group_size=1000)
    assert [uri for uri, _ in iter_sources(manifest)] == uris


def test_an_s3_prefix_is_listed_a_page_at_a_time(
    s3_bucket: str, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: an S3 prefix was listed whole (fsspec's find) before the first URI; now one
    page of keys at a time, in key order, with each page's ETags."""
    import fsspec

    import jobs.index.sources as sources

    fs = fsspec.filesystem("s3")
    names = ["a.mp4", "b.mp4", "notes.txt", "sub/c.mp4", "sub/d.webm", "z.mp4"]
    for name in names:
        fs.pipe_file(f"{s3_bucket}/clips/{name}", name.encode())
    fs.pipe_file(f"{s3_bucket}/clipsX.mp4", b"not below the prefix")
    monkeypatch.setattr(sources, "S3_PAGE_KEYS", 2)
    pages: list[int] = []
    original = type(fs).call_s3

    def counting(self, method, *args, **kwargs):
        result = original(self, method, *args, **kwargs)
        if method == "list_objects_v2":
            pages.append(len(result.get("Contents", [])))
        return result

    monkeypatch.setattr(type(fs), "call_s3", counting)
    fs.invalidate_cache()
    stream = iter_sources(f"s3://{s3_bucket}/clips")
    first = next(stream)
    assert first[0] == f"s3://{s3_bucket}/clips/a.mp4" and pages == [2]  # one page so far
    rest = list(stream)
    assert [uri for uri, _ in [first, *rest]] == [
        f"s3://{s3_bucket}/clips/{n}" for n in names if n != "notes.txt"
    ]
    assert pages == [2, 2, 2]
    etag = fs.info(f"{s3_bucket}/clips/a.mp4")["ETag"].strip('"')
    assert first[1] == f"etag:{etag}"
