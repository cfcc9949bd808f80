"""Initial catalog schema: videos, indexing runs, per-(video, model, config) status, token sets.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def _key_columns() -> list[sa.Column]:
    return [
        sa.Column("video_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("video_id", sa.String(128), nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("video_id", name="pk_videos"),
    )
    op.create_table(
        "indexing_runs",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("settings_json", sa.Text, nullable=False),
        sa.Column("counts_json", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_indexing_runs"),
    )
    op.create_table(
        "video_status",
        *_key_columns(),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("last_duration_s", sa.Float, nullable=True),
        sa.Column("indexed_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("video_id", "model_id", "config_hash", name="pk_video_status"),
        sa.ForeignKeyConstraint(
            ["video_id"],
            ["videos.video_id"],
            name="fk_video_status_video_id_videos",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["indexing_runs.run_id"], name="fk_video_status_run_id_indexing_runs"
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'indexed', 'failed')", name="ck_video_status_status"
        ),
    )
    op.create_index("ix_video_status_status", "video_status", ["status"])
    op.create_index("ix_video_status_run_id", "video_status", ["run_id"])
    op.create_table(
        "token_sets",
        *_key_columns(),
        sa.Column("file_url", sa.Text, nullable=False),
        sa.Column("row_group", sa.Integer, nullable=False),
        sa.Column("byte_offset", sa.BigInteger, nullable=False),
        sa.Column("byte_length", sa.BigInteger, nullable=False),
        sa.Column("footer", sa.LargeBinary, nullable=False),
        sa.Column("kept_count", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("video_id", "model_id", "config_hash", name="pk_token_sets"),
        sa.ForeignKeyConstraint(
            ["video_id"],
            ["videos.video_id"],
            name="fk_token_sets_video_id_videos",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("token_sets")
    op.drop_index("ix_video_status_run_id", table_name="video_status")
    op.drop_index("ix_video_status_status", table_name="video_status")
    op.drop_table("video_status")
    op.drop_table("indexing_runs")
    op.drop_table("videos")
