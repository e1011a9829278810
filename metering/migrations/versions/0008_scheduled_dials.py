"""scheduled dials: a call's due time and creation time, what a scheduled dial needs, named leases

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns, added in place on SQLite: copying `calls` would cascade to what
    # references it. Calls recorded before have no created_at: readers use started_at.
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_calls_status_scheduled_at", "calls", ["status", "scheduled_at"], unique=False)
    op.create_table(
        "scheduled_dials",
        sa.Column("call_id", sa.String(length=64), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_scheduled_dials_call_id_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_scheduled_dials")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("scheduled_dials")
    # Before 0008 no status says "not started yet" or "cancelled before it was dialled": a call
    # still waiting would read as neither running nor ended. It never rang: it is failed, with a
    # reason saying why; a cancelled one reads as the older API ended a pending call (completed).
    op.execute(
        sa.text(
            "UPDATE calls SET status = 'failed', ended_reason = 'schedule_dropped', "
            "ended_at = status_at, duration_seconds = 0 WHERE status = 'scheduled'"
        )
    )
    op.execute(sa.text("UPDATE calls SET status = 'completed' WHERE status = 'cancelled'"))
    op.drop_index("ix_calls_status_scheduled_at", table_name="calls")
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("scheduled_at")
        batch_op.drop_column("created_at")
