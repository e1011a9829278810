"""what a call goes through and who it is: running statuses, caller, transcript, recording

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every column is nullable, so SQLite adds them in place (copying `calls` would cascade, see
    # downgrade).
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("status_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("user_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("tenant", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("direction", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("transcript", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("agent_history", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("recording_location", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("recording_format", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("recording_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("recording_stored_at", sa.DateTime(timezone=True), nullable=True))
    # Calls recorded before had their status since they opened (active) or closed.
    op.execute(sa.text("UPDATE calls SET status_at = COALESCE(ended_at, started_at)"))


def downgrade() -> None:
    # Before 0003 an open call was active: anything else running would never be closed.
    op.execute(sa.text("UPDATE calls SET status = 'active' WHERE status IN ('pending', 'connecting')"))
    # Never by copying the table: on SQLite, dropping the old copy of `calls` would cascade to
    # every call's usage, turns and outbox. SQLite (3.35+, as RETURNING needs) drops in place.
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("recording_stored_at")
        batch_op.drop_column("recording_seconds")
        batch_op.drop_column("recording_format")
        batch_op.drop_column("recording_location")
        batch_op.drop_column("agent_history")
        batch_op.drop_column("transcript")
        batch_op.drop_column("metadata")
        batch_op.drop_column("direction")
        batch_op.drop_column("tenant")
        batch_op.drop_column("user_id")
        batch_op.drop_column("status_at")
