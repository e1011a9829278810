"""a call's ended_reason holds a failure's reason: up to 500 characters, not 64

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The control API and the worker close a call that could not start with the error as its reason
# (cut at 500 characters); PostgreSQL refused one longer than 64, so the close never landed.
# SQLite does not enforce a VARCHAR's length: nothing to change there (and rebuilding `calls`
# would cascade to what references it).


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "calls", "ended_reason", type_=sa.String(length=500), existing_type=sa.String(length=64)
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            sa.text(
                "UPDATE calls SET ended_reason = substr(ended_reason, 1, 64) WHERE length(ended_reason) > 64"
            )
        )
        op.alter_column(
            "calls", "ended_reason", type_=sa.String(length=64), existing_type=sa.String(length=500)
        )
