"""Relocatable stores, whole-range checksums, source fingerprints.

* token_sets.file_url becomes the path relative to the store root (``tokensets/<name>``): token-set
  files are always written at ``<store>/tokensets/<name>``, so every absolute URL converts without
  knowing the store; the store of the newest row is recorded in the new ``catalog_info`` table
  (row ``store_url``), which a Catalog opened without a store URL resolves against.
* token_sets.crc32: CRC-32 of the row group's bytes and its footer (NULL for the rows converted
  here: they keep verifying with the payload CRC in the file).
* video_status.source_fingerprint: the fingerprint of the source the token set was made from
  (NULL for the rows converted here: unknown).

Downgrade turns the paths back into absolute URLs against the recorded store.

Revision ID: 0002_relocatable_checksummed
Revises: 0001_initial
Create Date: 2026-11-30
"""

from __future__ import annotations

import posixpath

import sqlalchemy as sa
from alembic import op

revision = "0002_relocatable_checksummed"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

TOKEN_DIR = "tokensets"  # as of this revision; copied so that the migration never changes
STORE_URL = "store_url"

_token_sets = sa.table(
    "token_sets",
    sa.column("file_url", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_info = sa.table("catalog_info", sa.column("name", sa.String), sa.column("value", sa.Text))


def _split(file_url: str) -> tuple[str, str]:
    """(store URL, ``tokensets/<name>``) of an absolute token-set file URL."""
    parent, _, name = file_url.rpartition("/")
    root, _, directory = parent.rpartition("/")
    if directory != TOKEN_DIR or not name or not root:
        raise RuntimeError(
            f"catalog row with file_url {file_url!r}, not <store>/{TOKEN_DIR}/<name>: it cannot be "
            "made relative to its store; fix or delete the row, then upgrade again"
        )
    return root, f"{TOKEN_DIR}/{name}"


def upgrade() -> None:
    op.create_table(
        "catalog_info",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_catalog_info"),
    )
    op.add_column("token_sets", sa.Column("crc32", sa.BigInteger, nullable=True))
    op.add_column("video_status", sa.Column("source_fingerprint", sa.String(256), nullable=True))
    conn = op.get_bind()
    newest = conn.scalar(
        sa.select(_token_sets.c.file_url).order_by(_token_sets.c.created_at.desc()).limit(1)
    )
    if newest is None:
        return
    # One UPDATE per file (a file holds many token sets), not one per row.
    urls = conn.scalars(sa.select(_token_sets.c.file_url).distinct()).all()
    conn.execute(
        _token_sets.update()
        .where(_token_sets.c.file_url == sa.bindparam("old_url"))
        .values(file_url=sa.bindparam("new_path")),
        [{"old_url": url, "new_path": _split(url)[1]} for url in urls],
    )
    conn.execute(_info.insert().values(name=STORE_URL, value=_split(newest)[0]))


def downgrade() -> None:
    conn = op.get_bind()
    store = conn.scalar(sa.select(_info.c.value).where(_info.c.name == STORE_URL))
    paths = conn.scalars(sa.select(_token_sets.c.file_url).distinct()).all()
    if paths and store is None:
        raise RuntimeError("token sets but no recorded store: their absolute URLs are unknown")
    if paths:
        conn.execute(
            _token_sets.update()
            .where(_token_sets.c.file_url == sa.bindparam("old_path"))
            .values(file_url=sa.bindparam("new_url")),
            [{"old_path": path, "new_url": posixpath.join(store, path)} for path in paths],
        )
    with op.batch_alter_table("video_status") as batch:
        batch.drop_column("source_fingerprint")
    with op.batch_alter_table("token_sets") as batch:
        batch.drop_column("crc32")
    op.drop_table("catalog_info")
