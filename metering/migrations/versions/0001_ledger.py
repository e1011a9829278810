"""the usage ledger: calls, usage events, turn metrics, outbox, dead letters

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("workflow_slug", sa.String(length=200), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ended_reason", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Numeric(precision=14, scale=3), nullable=True),
        sa.Column("telephony_provider", sa.String(length=64), nullable=True),
        sa.Column("cost_total", sa.Numeric(precision=18, scale=6), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("cost_breakdown", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calls_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_calls_status_worker_id"), ["status", "worker_id"], unique=False)

    op.create_table(
        "turn_metrics",
        sa.Column("call_id", sa.String(length=64), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=True),
        sa.Column("eou_delay_ms", sa.Float(), nullable=False),
        sa.Column("stt_latency_ms", sa.Float(), nullable=False),
        sa.Column("llm_ttft_ms", sa.Float(), nullable=True),
        sa.Column("tts_ttfb_ms", sa.Float(), nullable=True),
        sa.Column("e2e_latency_ms", sa.Float(), nullable=True),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_turn_metrics_call_id_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "turn", name=op.f("pk_turn_metrics")),
    )
    op.create_table(
        "usage_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("call_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=8), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("audio_seconds", sa.Numeric(precision=14, scale=3), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("characters", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_usage_events_call_id_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_usage_events_idempotency_key")),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_events_call_id"), ["call_id"], unique=False)

    op.create_table(
        "usage_outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("call_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_usage_outbox_call_id_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_outbox")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_usage_outbox_idempotency_key")),
    )
    with op.batch_alter_table("usage_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_outbox_call_id_seq"), ["call_id", "seq"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_usage_outbox_state_next_attempt_at"), ["state", "next_attempt_at"], unique=False
        )

    op.create_table(
        "usage_dead_letters",
        sa.Column("outbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["usage_outbox.id"],
            name=op.f("fk_usage_dead_letters_outbox_id_usage_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("outbox_id", name=op.f("pk_usage_dead_letters")),
    )


def downgrade() -> None:
    op.drop_table("usage_dead_letters")
    with op.batch_alter_table("usage_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_outbox_state_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_usage_outbox_call_id_seq"))

    op.drop_table("usage_outbox")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_events_call_id"))

    op.drop_table("usage_events")
    op.drop_table("turn_metrics")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calls_status_worker_id"))
        batch_op.drop_index(batch_op.f("ix_calls_started_at"))

    op.drop_table("calls")
