"""Store URLs: a local directory (default ``./tokenreel-data``) or any fsspec URL such as
``s3://bucket/prefix``.

S3 endpoints, regions and credentials come from the standard AWS environment/config
(AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, ~/.aws/config, ...), which botocore
reads itself, so MinIO, moto or any S3-compatible store works without code changes.
"""

from __future__ import annotations

import os
import posixpath

import fsspec
from fsspec.implementations.local import LocalFileSystem

DEFAULT_STORE_URL = "./tokenreel-data"
STORE_URL_ENV = "TOKENREEL_STORE_URL"
TOKEN_DIR = "tokensets"  # token-set files live at <store>/tokensets/<name>, nowhere else


def is_local(url: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return "://" not in url or url.startswith("file://")


def normalize_store_url(url: str | None = None) -> str:
    """The canonical form of a store URL: an absolute path for a local store (so locations stay
    valid whatever the working directory of the reader), the URL without trailing slash otherwise.
    `None` falls back to $TOKENREEL_STORE_URL, then to ``./tokenreel-data``."""
    url = url or os.environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a store URL must be a non-empty string, got {url!r}")
    if is_local(url):
        return os.path.abspath(url.removeprefix("file://"))
    return url.rstrip("/")


def filesystem_for(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that serves `url` and the path of `url` on it."""
    if is_local(url):
        return LocalFileSystem(), os.path.abspath(url.removeprefix("file://"))
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"unsupported store URL {url!r}: {exc}") from exc


def join_url(base: str, *parts: str) -> str:
    """`base` joined with path `parts` ('/'-separated for remote URLs)."""
    if is_local(base):
        return os.path.join(os.path.abspath(base.removeprefix("file://")), *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def url_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of `path` on `fs`, in the same form `join_url` produces (what the catalog stores)."""
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def split_token_file_url(file_url: str) -> tuple[str, str]:
    """(store URL, path relative to it) of the token-set file at `file_url`.

    Token-set files always live at ``<store>/tokensets/<name>``, so the store is what precedes
    ``/tokensets/``; the relative path is ``tokensets/<name>`` (what the catalog stores, so that
    a copied, moved or mirrored store still finds its files). ValueError for any other URL.
    """
    parent, _, name = file_url.rpartition("/")
    root, _, directory = parent.rpartition("/")
    if directory != TOKEN_DIR or not name or not root or root.endswith(":/"):
        raise ValueError(f"not a token-set file URL (<store>/{TOKEN_DIR}/<name>): {file_url!r}")
    return normalize_store_url(root), f"{TOKEN_DIR}/{name}"


def resolve_in_store(store_url: str, relative_path: str) -> str:
    """The URL of `relative_path` (as `split_token_file_url` returns it) in the store."""
    return join_url(store_url, *relative_path.split("/"))
