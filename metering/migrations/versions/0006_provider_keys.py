"""provider keys: tenants' own keys for STT, LLM and TTS providers, encrypted at rest

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("provider_type", sa.String(length=8), nullable=False),
        sa.Column("provider_name", sa.String(length=64), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_keys")),
    )
    op.create_index("ix_provider_keys_tenant", "provider_keys", ["tenant"], unique=False)
    # A partial unique index (both databases have them): one default per tenant and stage.
    op.create_index(
        "ix_provider_keys_default",
        "provider_keys",
        ["tenant", "provider_type"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )


def downgrade() -> None:
    op.drop_index("ix_provider_keys_default", table_name="provider_keys")
    op.drop_index("ix_provider_keys_tenant", table_name="provider_keys")
    op.drop_table("provider_keys")
