"""The ledger's tables. The control API reads the same database, so names and types are plain
and portable: SQLite (the embedded default) and PostgreSQL run the same migrations.

Quantities that are billed are exact: seconds in Numeric(14, 3), tokens and characters in
BigInteger, money in Numeric(18, 6). Latencies are diagnostics and stay floats.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Autoincrementing ids: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

# None is SQL NULL (not JSON null), so "no metadata" and "not closed yet" read as IS NULL.
JSONOrNull = JSON(none_as_null=True)

# Unique slugs of the billing API's endpoints, also the `step` of an outbox event.
STEPS = ("customer", "session", "stt", "llm", "tts", "indicator")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite would otherwise hand back naive ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Call(Base):
    """One call: who, which workflow, how it ended, what it cost."""

    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_slug: Mapped[str] = mapped_column(String(200))
    worker_id: Mapped[str] = mapped_column(String(200))
    customer_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    """Scheduled (a dial stored for later), running (pending, connecting, active) or how it
    ended (metering.CallStatus); abandoned: its process died, and the next process that opened
    the ledger could prove it."""
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Since when it has had its status: its start, a CallProgressed's time, or its end."""
    ended_reason: Mapped[str | None] = mapped_column(String(500))
    """Why it ended: user_ended, agent_ended, api, missed, ..., or the error that kept it from
    starting (at most 500 characters)."""
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """When it opened; a scheduled call's moves to when it was dialled."""
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When it was recorded (None: recorded before migration 0008, when it was `started_at`)."""
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When a scheduled dial is due (kept once it is dialled); None: started at once."""
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_seconds: Mapped[Decimal | None] = mapped_column(Numeric(14, 3))
    telephony_provider: Mapped[str | None] = mapped_column(String(64))
    cost_total: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    currency: Mapped[str | None] = mapped_column(String(8))
    cost_breakdown: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    user_id: Mapped[str | None] = mapped_column(String(200))
    tenant: Mapped[str | None] = mapped_column(String(200))
    direction: Mapped[str | None] = mapped_column(String(16))
    # `metadata` is the declarative base's own attribute: the column keeps the plain name.
    call_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONOrNull)
    transcript: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONOrNull)
    """Written when the call closes (None until then)."""
    agent_history: Mapped[list[str] | None] = mapped_column(JSONOrNull)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    """Where the call's own webhook events go (besides its tenant's endpoints)."""
    recording_location: Mapped[str | None] = mapped_column(Text)
    """Set when the recording is stored, usually after the call closed."""
    recording_format: Mapped[str | None] = mapped_column(String(16))
    recording_seconds: Mapped[float | None] = mapped_column(Float)
    recording_stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    owner_host: Mapped[str | None] = mapped_column(String(255))
    """The process that recorded the call: its host name (for people),"""
    owner_machine: Mapped[str | None] = mapped_column(String(100))
    """the boot and PID namespace its pid means something in (None: not known, never judged),"""
    owner_pid: Mapped[int | None] = mapped_column(Integer)
    owner_started: Mapped[int | None] = mapped_column(BigInteger)
    """and its start time in clock ticks since boot, so a reused pid is not taken for it."""

    __table_args__ = (
        Index(None, "status", "worker_id"),
        Index(None, "started_at"),
        # The control API's reads: a tenant's calls newest first, and its running ones.
        Index(None, "tenant", "started_at"),
        Index(None, "tenant", "status"),
        # The dial scheduler's: scheduled calls by due time.
        Index(None, "status", "scheduled_at"),
    )


class ScheduledDial(Base):
    """What a scheduled call needs to be dialled (the job and the numbers), kept until it is
    dialled, cancelled or missed."""

    __tablename__ = "scheduled_dials"

    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)


class WorkerLease(Base):
    """A worker's claim to be alive: renewed while it runs; once expired, its open calls are
    closed as abandoned by the next process that opens the ledger."""

    __tablename__ = "worker_leases"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime())
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)


class Lease(Base):
    """A named lease one process holds at a time (the dial scheduler's): its holder renews it;
    once it has expired, any process may take it."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime())
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)


class UsageEvent(Base):
    """Usage of one stage by one provider/model, as the pipeline reported it."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(8))
    agent: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    audio_seconds: Mapped[Decimal] = mapped_column(Numeric(14, 3), default=Decimal(0))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    characters: Mapped[int] = mapped_column(BigInteger, default=0)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TurnMetric(Base):
    """One caller turn's latencies, in milliseconds at the audio boundary."""

    __tablename__ = "turn_metrics"

    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True)
    turn: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent: Mapped[str | None] = mapped_column(String(200))
    eou_delay_ms: Mapped[float] = mapped_column(Float)
    stt_latency_ms: Mapped[float] = mapped_column(Float)
    llm_ttft_ms: Mapped[float | None] = mapped_column(Float)
    tts_ttfb_ms: Mapped[float | None] = mapped_column(Float)
    e2e_latency_ms: Mapped[float | None] = mapped_column(Float)
    interrupted: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxEvent(Base):
    """A request committed before it is sent (the durable outbox): to the usage-tracking API
    (kind `usage`) or a call's webhook (kind `webhook`, `target` an endpoint id or `call`).

    A call's events are delivered in `seq` order per lane (call, kind, target): a step is sent
    only once every earlier step of its lane is delivered, because the API needs the customer and
    the session first, and a webhook receiver gets a call's events in the order they happened.
    """

    __tablename__ = "usage_outbox"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="usage", server_default="usage")
    target: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """Where a webhook event goes: a WebhookEndpoint's id, or `call` (the call's webhook_url)."""
    seq: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, delivered, dead (see usage_dead_letters), or doubt: a request was sent and its
    answer never recorded, to an API that does not honour Idempotency-Key (an operator decides)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sending_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Set when an exporter claims the event to send it to an API without idempotency keys,
    cleared with its outcome or when it is released unsent: still set once the claim expired
    means the sender died with the request in flight."""

    __table_args__ = (
        Index(None, "call_id", "kind", "target", "seq", unique=True),
        Index(None, "state", "next_attempt_at"),
    )


class DeadLetter(Base):
    """An outbox event that kept failing; `voicerun metering retry` sends it again."""

    __tablename__ = "usage_dead_letters"

    outbox_id: Mapped[int] = mapped_column(
        ForeignKey("usage_outbox.id", ondelete="CASCADE"), primary_key=True
    )
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)


class ApiKey(Base):
    """A key of the control API: what it authenticates is its tenant.

    Only the SHA-256 of the key is stored. A key is 32 random bytes, so a fast hash is enough
    (no password hashing: there is nothing to guess), and a lookup by hash is an index probe.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """Hex SHA-256 of the whole key (`vr_<prefix>_<secret>`)."""
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's `<prefix>`: not secret, shown so people can tell their keys apart."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookEndpoint(Base):
    """A tenant's webhook receiver: every call of the tenant reports its events here."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(100))
    """The signing secret (HMAC needs it in clear): shown once, when the endpoint is created."""
    events: Mapped[list[str] | None] = mapped_column(JSONOrNull)
    """The event types it receives; None: all of them."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Deleted by its tenant, or it answered 410 Gone: it receives nothing more."""


class WebhookSecret(Base):
    """A tenant's signing secret for the webhook_url its calls name (created on first use)."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ProviderKey(Base):
    """A tenant's key for a provider (bring your own key), encrypted with the master keys."""

    __tablename__ = "provider_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    provider_type: Mapped[str] = mapped_column(String(8))
    """stt, llm or tts."""
    provider_name: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[str] = mapped_column(Text)
    """A Fernet token of the key (metering/_provider_keys.py): never the key."""
    last4: Mapped[str] = mapped_column(String(4))
    """The key's last 4 characters, for the masked listing."""
    is_default: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # One default per tenant and stage, even between two concurrent writers.
        Index(
            "ix_provider_keys_default",
            "tenant",
            "provider_type",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )
