"""webhooks: the outbox gains lanes (kind, target); tenants' endpoints and secrets; a call's webhook_url

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added in place on SQLite (a nullable column, or one with a constant default): copying
    # `calls` or `usage_outbox` would cascade to what references them.
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
    with op.batch_alter_table("usage_outbox", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="usage", nullable=False))
        batch_op.add_column(sa.Column("target", sa.String(length=64), server_default="", nullable=False))
    # A call's events are ordered per lane: its usage steps, and each webhook target's events.
    op.drop_index("ix_usage_outbox_call_id_seq", table_name="usage_outbox")
    op.create_index(
        "ix_usage_outbox_call_id_kind_target_seq",
        "usage_outbox",
        ["call_id", "kind", "target", "seq"],
        unique=True,
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("events", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index("ix_webhook_endpoints_tenant", "webhook_endpoints", ["tenant"], unique=False)
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_webhook_secrets")),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_index("ix_webhook_endpoints_tenant", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
    # Webhook events have no place in the usage outbox before 0005 (they would be sent as usage).
    op.execute(
        sa.text(
            "DELETE FROM usage_dead_letters WHERE outbox_id IN "
            "(SELECT id FROM usage_outbox WHERE kind <> 'usage')"
        )
    )
    op.execute(sa.text("DELETE FROM usage_outbox WHERE kind <> 'usage'"))
    op.drop_index("ix_usage_outbox_call_id_kind_target_seq", table_name="usage_outbox")
    op.create_index("ix_usage_outbox_call_id_seq", "usage_outbox", ["call_id", "seq"], unique=True)
    with op.batch_alter_table("usage_outbox", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("target")
        batch_op.drop_column("kind")
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("webhook_url")
