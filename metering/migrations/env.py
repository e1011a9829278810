"""Alembic environment: migrations run on a connection the ledger hands over (see _migrate.py)."""

from __future__ import annotations

from alembic import context

from metering._schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the ledger's migrations through metering.migrate(), which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
