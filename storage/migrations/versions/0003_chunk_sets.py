"""Chunk token sets of videos indexed in time windows (issue 14).

One row per chunk: the token set of one time window of a video, keyed by (video_id, model_id,
config_hash, window_index) where config_hash is the VIDEO's config (the one its video-level row in
`token_sets` has) and window_index the window's number from 0; start_s / end_s its time range in the
video, seconds; chunk_config_hash the hash of the config the chunk set itself was compressed
under (stored in its file: chunk sets keep a larger share than the video, see
`CompressionConfig.chunk_config`); the rest is its location, as in `token_sets`.

Revision ID: 0003_chunk_sets
Revises: 0002_relocatable_checksummed
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_chunk_sets"
down_revision = "0002_relocatable_checksummed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunk_sets",
        sa.Column("video_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("window_index", sa.Integer, nullable=False),
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("end_s", sa.Float, nullable=False),
        sa.Column("chunk_config_hash", sa.String(64), nullable=False),
        sa.Column("file_url", sa.Text, nullable=False),
        sa.Column("row_group", sa.Integer, nullable=False),
        sa.Column("byte_offset", sa.BigInteger, nullable=False),
        sa.Column("byte_length", sa.BigInteger, nullable=False),
        sa.Column("footer", sa.LargeBinary, nullable=False),
        sa.Column("kept_count", sa.Integer, nullable=False),
        sa.Column("crc32", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("window_index >= 0", name="ck_chunk_sets_window_index"),
        sa.CheckConstraint("start_s >= 0 AND end_s > start_s", name="ck_chunk_sets_span"),
        sa.ForeignKeyConstraint(
            ["video_id"],
            ["videos.video_id"],
            name="fk_chunk_sets_video_id_videos",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "video_id", "model_id", "config_hash", "window_index", name="pk_chunk_sets"
        ),
    )


def downgrade() -> None:
    op.drop_table("chunk_sets")
