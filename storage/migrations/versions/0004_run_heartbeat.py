"""Run heartbeats (issue 13): a SIGKILLed indexing driver's videos read as interrupted.

`indexing_runs` gains three nullable columns: `heartbeat_at`, when the run's driver last said it
is alive (its own UTC clock); `heartbeat_s`, the interval it promised to say so at; and
`stale_after`, the time after which, without a newer heartbeat, the run reads as ended
(`heartbeat_at` + `storage.catalog.HEARTBEAT_STALE_INTERVALS` x `heartbeat_s`, written by the
driver with each heartbeat so that readers on SQLite and PostgreSQL compare one timestamp and no
SQL date arithmetic differs between them). Runs recorded before this revision, or by a writer
that never heartbeats, have NULLs there and keep the rule they had: ended once `finished_at` is
set.

Revision ID: 0004_run_heartbeat
Revises: 0003_chunk_sets
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_heartbeat"
down_revision = "0003_chunk_sets"
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends, never a copied table: on SQLite a batch copy would DROP
# `indexing_runs`, which `video_status.run_id` references (foreign keys on: refused with data).
def upgrade() -> None:
    with op.batch_alter_table("indexing_runs", recreate="never") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_s", sa.Float, nullable=True))
        batch.add_column(sa.Column("stale_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("indexing_runs", recreate="never") as batch:
        batch.drop_column("stale_after")
        batch.drop_column("heartbeat_s")
        batch.drop_column("heartbeat_at")
