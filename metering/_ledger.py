"""The usage ledger: calls, usage events, turn metrics and the billing outbox, in one database.

SQLite (a file in the data directory, WAL mode) is the embedded default; PostgreSQL is used
through a `postgresql://` URL (asyncpg). Every write is idempotent: usage events and outbox events
carry stable keys, calls close once, so a batch retried after a failed commit counts nothing twice.

The outbox is written in the same transaction as what it reports (the call's start, its close),
so an event is either both in the ledger and queued for billing, or in neither.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, cast, get_args

import structlog
from sqlalchemy import (
    Executable,
    Insert,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import BindParameter

from pipeline.providers import PROVIDERS

from . import _migrate, _webhooks
from ._clock import Clock, utcnow
from ._cost import UsageLine, UsageStage, cost_breakdown, merge_lines, seconds
from ._errors import MeteringError
from ._json import plain
from ._keys import ApiKeyView, NewApiKey, check_name, check_tenant, key_hash, new_key
from ._owner import ProcessIdentity, is_gone
from ._prices import PriceCatalog
from ._provider_keys import (
    KeyCipher,
    ProviderKeyView,
    ProviderType,
    check_api_key,
    check_provider,
    masked,
)
from ._records import (
    CALL_STATUSES,
    AnyStatus,
    CallClosed,
    CallOpened,
    CallProgressed,
    Record,
    RecordingStored,
    RunningStatus,
    TurnReported,
    UsageReported,
)
from ._schema import (
    ApiKey,
    Base,
    Call,
    DeadLetter,
    Lease,
    OutboxEvent,
    ProviderKey,
    ScheduledDial,
    TurnMetric,
    UsageEvent,
    WebhookEndpoint,
    WorkerLease,
)
from ._view import CallDetailView, CallFigures, CallPage, CallView, TurnView, UsageTotals, call_view
from ._webhooks import WEBHOOK, NewWebhookEndpoint, WebhookDelivery, WebhookEndpointView

log = structlog.get_logger("voicerun.metering")


class LedgerError(MeteringError):
    """The ledger's database cannot be opened or used; names the URL (without password)."""


class LedgerMissingError(LedgerError):
    """A command that only reads found no embedded ledger (it never creates one)."""


class UnknownCallError(LedgerError):
    """A record names a call the ledger has no row for (its CallOpened never landed)."""


class LedgerConfigError(LedgerError):
    """The ledger's configuration cannot work (a malformed DATABASE_URL, a data directory or
    ledger file that cannot be written): the operator's to fix, before any call starts."""


def database_url(url: str | None, data_dir: Path) -> str:
    """The async SQLAlchemy URL for `url`, or the embedded SQLite file in `data_dir`.

    Accepts what operators paste: postgres:// and postgresql:// (asyncpg is added), sqlite://.
    A URL that cannot be parsed is a LedgerConfigError naming the variable and the problem,
    never the URL itself (it may hold a password).
    """
    if not url:
        return f"sqlite+aiosqlite:///{(data_dir / 'voicerun.db').resolve()}"
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):
        raise LedgerConfigError(
            "DATABASE_URL is not a database URL: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            "or sqlite:///PATH (is the port a number?)"
        ) from None
    if port is not None and not 0 < port < 65536:
        raise LedgerConfigError(f"DATABASE_URL: port {port} is out of range (1-65535)")
    driver = parsed.drivername
    if driver in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif driver == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif driver not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise LedgerConfigError(
            f"DATABASE_URL: unsupported database {driver!r}; use postgresql:// or sqlite://"
        )
    return parsed.render_as_string(hide_password=False)


@dataclass(frozen=True, slots=True)
class BillingIdentity:
    """Who the usage-tracking API bills. Without one, calls are recorded but nothing is queued."""

    agent_id: str
    customer_id: str
    """The default customer's external id, for calls that name none."""
    customer_name: str | None = None
    plan: str = "default"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    call_id: str
    step: str
    payload: dict[str, Any]
    idempotency_key: str
    attempts: int


@dataclass(frozen=True, slots=True)
class DueDial:
    """A scheduled call claimed for dialling (now `pending`, owned by the claiming process)."""

    call_id: str
    scheduled_at: datetime
    request: dict[str, Any]
    """What `schedule_call` stored with it: the job and the numbers."""


@dataclass(frozen=True, slots=True)
class ClaimedDials:
    due: list[DueDial]
    """To dial now: each claimed by exactly one process."""
    missed: list[str]
    """Closed as failed (reason `missed`) instead: later than the caller's limit."""


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    """Not yet delivered and not dead, blocked ones included."""
    blocked: int
    """Pending behind a dead letter or an event in doubt of the same call (the API needs the
    earlier step first)."""
    dead: int
    in_doubt: int
    """Sent without an answer to an API that ignores Idempotency-Key: neither resent nor
    counted delivered until an operator says which (`voicerun metering doubt`)."""
    delivered: int
    oldest_pending_at: datetime | None


PAGE_SIZE_MAX = 100
PENDING_LIMIT = timedelta(minutes=10)
"""How long a call the control API started may wait for a worker to take it before it fails."""
MISSED = "missed"
"""The reason a scheduled call too late to dial is closed with (status failed)."""

RUNNING: tuple[RunningStatus, ...] = get_args(RunningStatus)
"""The statuses of an open call, in the order a call goes through them."""


def _minutes(secs: Decimal) -> float:
    return float((secs / 60).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN))


class Ledger:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        catalog: PriceCatalog,
        worker_id: str = "local",
        billing: BillingIdentity | None = None,
        clock: Clock = utcnow,
        reads: AsyncEngine | None = None,
    ) -> None:
        """reads: the engine single-statement reads use (default: `engine`)."""
        self.engine = engine
        self.clock = clock
        self.process = ProcessIdentity.current()
        """Recorded as the owner of every call this ledger opens."""
        """Every time the ledger stamps (outbox due times, claims, deliveries) comes from here,
        and the exporter reads the same clock, so the two always agree."""
        self.catalog = catalog
        self.worker_id = worker_id
        self.billing = billing
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Write transactions take SQLite's write lock up front (see _sqlite_begin).
        self._writes = async_sessionmaker(engine.execution_options(**_WRITE), expire_on_commit=False)
        self._dialect = engine.dialect.name
        # ON CONFLICT is each dialect's own insert.
        self._dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        self._reads = reads or engine
        self._webhook_listeners: list[Callable[[], None]] = []
        calls = cast(Table, Call.__table__)
        self._insert_call = self._dialect_insert(calls).on_conflict_do_nothing().returning(calls.c.id)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        catalog: PriceCatalog,
        worker_id: str = "local",
        billing: BillingIdentity | None = None,
        migrate: bool = True,
        writable: bool = True,
        connect_args: dict[str, Any] | None = None,
        clock: Clock = utcnow,
    ) -> Ledger:
        """Connect and (by default) migrate the schema to the latest revision.

        writable: the ledger will be written (calls recorded, the outbox driven). Its directory is
        created and a write is tried now, so a ledger that cannot take a call's usage is refused
        (LedgerConfigError) before the call starts rather than losing the usage at its end.
        With writable=False nothing is created or migrated: an embedded ledger that does not
        exist is a LedgerMissingError.
        """
        safe = make_url(url).render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {"connect_args": connect_args or {}}
        sqlite_file: Path | None = None
        if url.startswith("sqlite"):
            path = make_url(url).database
            if path and path != ":memory:" and not path.startswith("file:"):
                sqlite_file = Path(path)
                _prepare_sqlite_file(sqlite_file, create=writable)
        else:
            # Connections beyond pool_size are closed when returned: under a steady load that is a
            # connect (and SSL negotiation) per transaction, so the pool is sized for the load.
            kwargs |= {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10}
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        try:
            if writable:
                async with engine.execution_options(**_WRITE).begin() as conn:
                    if migrate:
                        await conn.run_sync(_migrate.upgrade)
                    else:
                        await conn.run_sync(_check_schema)
                    await conn.run_sync(_probe_write, sqlite_file or safe)
            else:
                async with engine.connect() as conn:
                    await conn.run_sync(_check_schema)
        except MeteringError:
            await engine.dispose()
            raise
        except Exception as exc:
            await engine.dispose()
            problem = _first_line(exc)
            if "readonly" in problem or "read-only" in problem:
                raise LedgerConfigError(f"the ledger at {safe} cannot be written: {problem}") from None
            raise LedgerError(f"cannot open the ledger at {safe}: {problem}") from exc
        reads = None
        if engine.dialect.name == "postgresql":
            # The control API's hot reads are single statements on a pool of their own, with no
            # BEGIN/ROLLBACK around them. A read holds one connection for one statement, so a
            # fixed pool only queues a burst (no overflow connections opened and closed).
            reads = create_async_engine(
                url,
                connect_args=connect_args or {},
                isolation_level="AUTOCOMMIT",
                pool_size=20,
                max_overflow=0,
            )
            event.listen(reads.sync_engine, "checkout", _drop_if_closed)
        return cls(engine, catalog=catalog, worker_id=worker_id, billing=billing, clock=clock, reads=reads)

    async def aclose(self) -> None:
        await self.engine.dispose()
        if self._reads is not self.engine:
            await self._reads.dispose()

    async def _read(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        """The first row of a single-statement read on the reads pool. A pooled connection the
        server closed (a restart) is dropped by SQLAlchemy and the read tried once more."""
        for attempt in (1, 2):
            try:
                async with self._reads.connect() as conn:
                    return (await conn.execute(statement, params)).first()
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    # -- writing ---------------------------------------------------------------------------

    def on_webhooks_queued(self, listener: Callable[[], None]) -> None:
        """Call `listener` after a write of this ledger commits webhook events (a deliverer in
        this process wakes up for them; other processes' events it finds on its timer)."""
        self._webhook_listeners.append(listener)

    def _insert_ignoring_duplicates(self, table: type[Base]) -> Insert:
        return self._dialect_insert(table).on_conflict_do_nothing()

    async def write(self, records: Sequence[Record]) -> None:
        """Apply `records` in one transaction: calls opened first, then usage, turns and
        progress, then calls closed (so a close always prices the usage reported before it),
        then recordings. A recording of a call the ledger does not have is an UnknownCallError,
        like usage of one (which its foreign key refuses): the Meter then sets it aside as lost."""
        opened = [r for r in records if isinstance(r, CallOpened)]
        progressed = [r for r in records if isinstance(r, CallProgressed)]
        usage = [r for r in records if isinstance(r, UsageReported)]
        turns = [r for r in records if isinstance(r, TurnReported)]
        closed = [r for r in records if isinstance(r, CallClosed)]
        recordings = [r for r in records if isinstance(r, RecordingStored)]
        async with self._writes.begin() as s:
            for o in opened:
                await self._open_call(s, o)
            for p in progressed:
                await self._progress_call(s, p)
            if usage:
                await s.execute(
                    self._insert_ignoring_duplicates(UsageEvent),
                    [
                        {
                            "idempotency_key": f"{u.call_id}/usage/{u.seq}",
                            "call_id": u.call_id,
                            "stage": u.line.stage,
                            "agent": u.agent,
                            "provider": u.line.provider,
                            "model": u.line.model,
                            "audio_seconds": seconds(u.line.audio_seconds),
                            "prompt_tokens": u.line.prompt_tokens,
                            "completion_tokens": u.line.completion_tokens,
                            "cached_tokens": u.line.cached_tokens,
                            "characters": u.line.characters,
                            "recorded_at": u.at,
                        }
                        for u in usage
                    ],
                )
            if turns:
                await s.execute(
                    self._insert_ignoring_duplicates(TurnMetric),
                    [
                        {
                            "call_id": t.call_id,
                            "turn": t.turn,
                            "agent": t.agent,
                            "eou_delay_ms": t.eou_delay_ms,
                            "stt_latency_ms": t.stt_latency_ms,
                            "llm_ttft_ms": t.llm_ttft_ms,
                            "tts_ttfb_ms": t.tts_ttfb_ms,
                            "e2e_latency_ms": t.e2e_latency_ms,
                            "interrupted": t.interrupted,
                            "recorded_at": t.at,
                        }
                        for t in turns
                    ],
                )
            for c in closed:
                await self._close_call(s, c)
            for rec in recordings:
                await self._store_recording(s, rec)
        if s.info.get(_QUEUED_WEBHOOKS):
            for listener in self._webhook_listeners:
                listener()

    async def _open_call(
        self, s: AsyncSession, r: CallOpened, *, scheduled_at: datetime | None = None
    ) -> bool:
        """Insert the call; a second open of it adopts it if it is pending, else is ignored.
        With `scheduled_at`, the call is inserted `scheduled`: no webhook event and nothing
        billed until it is dialled (`claim_scheduled`). True if it was inserted."""
        customer = r.customer_id or (self.billing.customer_id if self.billing else None)
        # One statement built once (in __init__): building an insert of ~20 values cost more
        # than executing it, on every call the API starts.
        inserted = await s.execute(
            self._insert_call,
            {
                "id": r.call_id,
                "workflow_slug": r.workflow_slug,
                "worker_id": self.worker_id,
                "customer_id": customer,
                "status": "scheduled" if scheduled_at is not None else r.status,
                "status_at": r.started_at,
                "started_at": r.started_at,
                "created_at": r.started_at,
                "scheduled_at": scheduled_at,
                "user_id": r.user_id,
                "tenant": r.tenant,
                "direction": r.direction,
                "metadata": None if r.metadata is None else plain(r.metadata),
                "webhook_url": r.webhook_url,
                "owner_host": self.process.host,
                "owner_machine": self.process.machine,
                "owner_pid": self.process.pid,
                "owner_started": self.process.started,
            },
        )
        fresh = inserted.first() is not None
        if scheduled_at is not None:
            return fresh
        if not fresh and not await self._adopt_pending(s, r):
            return False
        await self._enqueue_webhooks(s, r.call_id, r.status, r.started_at)
        if self.billing is not None:
            await self._enqueue_start(s, r, fresh=fresh)
        return fresh

    async def _adopt_pending(self, s: AsyncSession, r: CallOpened) -> bool:
        """The worker's open of a call the control API opened `pending`: the worker takes it
        (its id and process become the owner) and moves it forward; what the worker leaves None
        (user, tenant, direction, metadata, customer) stays the API's, and so does `started_at`
        (the call began when it was created). Anything else is a duplicate open: ignored.
        True if adopted (its customer and session may still need queueing for billing)."""
        if RUNNING.index(r.status) <= RUNNING.index("pending"):
            return False
        values: dict[str, Any] = {
            "status": r.status,
            "status_at": r.started_at,
            "worker_id": self.worker_id,
            "owner_host": self.process.host,
            "owner_machine": self.process.machine,
            "owner_pid": self.process.pid,
            "owner_started": self.process.started,
        }
        default_customer = self.billing.customer_id if self.billing else None
        given = {
            "customer_id": r.customer_id or func.coalesce(Call.customer_id, default_customer),
            "user_id": r.user_id,
            "tenant": r.tenant,
            "direction": r.direction,
            "call_metadata": None if r.metadata is None else plain(r.metadata),
            "webhook_url": r.webhook_url,
        }
        values |= {k: v for k, v in given.items() if v is not None}
        adopted = await s.execute(
            update(Call)
            .where(Call.id == r.call_id, Call.status == "pending")
            .values(**values)
            .returning(Call.id)
        )
        if adopted.first() is None:
            log.debug("call_open_ignored", call_id=r.call_id, status=r.status)
            return False
        log.debug("call_adopted", call_id=r.call_id, status=r.status, worker_id=self.worker_id)
        return True

    async def _enqueue_start(self, s: AsyncSession, r: CallOpened, *, fresh: bool) -> None:
        """Queue the call's customer and session steps. An adopted call has them already if the
        ledger that opened it pending had billing (the control API's may have none)."""
        b = self.billing
        assert b is not None
        usage_of_call = and_(OutboxEvent.call_id == r.call_id, OutboxEvent.kind == "usage")
        if not fresh and await s.scalar(select(exists().where(usage_of_call))):
            return
        customer = r.customer_id or b.customer_id
        if not fresh:  # the row's: the worker's, else the API's, else b's (see _adopt_pending)
            customer = await s.scalar(select(Call.customer_id).where(Call.id == r.call_id)) or customer
        self._enqueue(
            s,
            r.call_id,
            [
                ("customer", "customer", {"name": b.customer_name or customer, "externalId": customer}),
                (
                    "session",
                    "session",
                    {
                        "sessionId": r.call_id,
                        "agentId": r.billing_agent_id or b.agent_id,
                        "customerId": customer,
                    },
                ),
            ],
            start_seq=0,
        )

    async def _progress_call(self, s: AsyncSession, r: CallProgressed) -> None:
        if r.agent_history:
            # Who has a running call, whether or not its status moves (a handoff leaves it
            # active); never a closed call's, which its close wrote whole.
            await s.execute(
                update(Call)
                .where(Call.id == r.call_id, Call.status.in_(RUNNING))
                .values(agent_history=list(r.agent_history))
            )
        # Forward only: records can arrive late (a reporter's queue, a retried batch), and a
        # late one must neither move a call back nor reopen a closed one.
        earlier = RUNNING[: RUNNING.index(r.status)]
        moved = await s.execute(
            update(Call)
            .where(Call.id == r.call_id, Call.status.in_(earlier))
            .values(status=r.status, status_at=r.at)
            .returning(Call.id)
        )
        if moved.first() is None:
            log.debug("call_progress_ignored", call_id=r.call_id, status=r.status)
            return
        await self._enqueue_webhooks(s, r.call_id, r.status, r.at)

    async def _store_recording(self, s: AsyncSession, r: RecordingStored) -> None:
        # Whatever the call's status: recordings are uploaded after the call ends.
        stored = await s.execute(
            update(Call)
            .where(Call.id == r.call_id)
            .values(
                recording_location=r.location,
                recording_format=r.format,
                recording_seconds=r.duration_s,
                recording_stored_at=r.at,
            )
            .returning(Call.id)
        )
        if stored.first() is None:
            raise UnknownCallError(f"recording of call {r.call_id!r}: the ledger has no such call")

    async def _close_call(self, s: AsyncSession, r: CallClosed, *, scheduled: bool = False) -> bool:
        """Close a running call (with `scheduled`, a call still scheduled: it was never dialled,
        so nothing of it is billed). False if the call was not in that state (ignored)."""
        lines = await self._lines(s, r.call_id)
        costs = cost_breakdown(lines, call_seconds=r.duration_s, telephony=r.telephony, catalog=self.catalog)
        closed = await s.execute(
            update(Call)
            .where(
                Call.id == r.call_id, (Call.status == "scheduled") if scheduled else Call.status.in_(RUNNING)
            )
            .values(
                status=r.status,
                status_at=r.ended_at,
                ended_reason=r.reason,
                ended_at=r.ended_at,
                duration_seconds=seconds(r.duration_s),
                telephony_provider=r.telephony[0] if r.telephony else None,
                cost_breakdown=costs,
                cost_total=Decimal(str(costs["total"])),
                currency=self.catalog.currency,
                transcript=plain(r.transcript),
                agent_history=list(r.agent_history),
            )
            .returning(Call.id)
        )
        if closed.first() is None:
            if not scheduled:
                log.warning("call_close_ignored", call_id=r.call_id, reason="not open in the ledger")
            return False
        await self._enqueue_webhooks(s, r.call_id, r.status, r.ended_at)
        if scheduled:
            await s.execute(delete(ScheduledDial).where(ScheduledDial.call_id == r.call_id))
        if self.billing is None or scheduled:
            return True
        plan = self.billing.plan
        steps: list[tuple[str, str, dict[str, Any]]] = []
        for line in lines:
            if line.empty:
                continue
            provider = PROVIDERS.billing_name(line.stage, line.provider)
            model = line.model or "default"
            base = {"sessionId": r.call_id, "provider": provider, "model": model, "plan": plan}
            if line.stage == "stt":
                payload = {**base, "audioMinutes": _minutes(line.audio_seconds)}
            elif line.stage == "llm":
                payload = {
                    **base,
                    "promptTokens": line.prompt_tokens,
                    "completionTokens": line.completion_tokens,
                    "cachedTokens": line.cached_tokens,
                }
            else:
                payload = {**base, "characters": line.characters}
            steps.append((line.stage, f"{line.stage}/{line.provider}/{model}", payload))
        minutes = _minutes(seconds(r.duration_s))
        steps.append(
            (
                "indicator",
                "indicator",
                {"sessionId": r.call_id, "indicator": "per-minute-call", "totalDuration": minutes},
            )
        )
        last = await s.execute(
            select(func.coalesce(func.max(OutboxEvent.seq), -1)).where(
                OutboxEvent.call_id == r.call_id, OutboxEvent.kind == "usage"
            )
        )
        self._enqueue(s, r.call_id, steps, start_seq=int(last.scalar_one()) + 1)
        return True

    async def _enqueue_webhooks(self, s: AsyncSession, call_id: str, status: AnyStatus, at: datetime) -> None:
        """The call entered `status`: queue its webhook events, in this transaction."""
        queued = await _webhooks.enqueue(
            s,
            call_id=call_id,
            status=status,
            at=at,
            now=self.clock(),
            insert=self._insert_ignoring_duplicates,
        )
        if queued:
            s.info[_QUEUED_WEBHOOKS] = True
            log.debug("webhooks_queued", call_id=call_id, status=status, events=queued)

    def _enqueue(
        self, s: AsyncSession, call_id: str, steps: list[tuple[str, str, dict[str, Any]]], *, start_seq: int
    ) -> None:
        now = self.clock()
        for i, (step, key, payload) in enumerate(steps):
            s.add(
                OutboxEvent(
                    idempotency_key=f"{call_id}/{key}",
                    call_id=call_id,
                    seq=start_seq + i,
                    step=step,
                    payload=payload,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )

    async def _lines(self, s: AsyncSession, call_id: str) -> list[UsageLine]:
        rows = await s.execute(
            select(
                UsageEvent.stage,
                UsageEvent.provider,
                UsageEvent.model,
                func.sum(UsageEvent.audio_seconds),
                func.sum(UsageEvent.prompt_tokens),
                func.sum(UsageEvent.completion_tokens),
                func.sum(UsageEvent.cached_tokens),
                func.sum(UsageEvent.characters),
                func.min(UsageEvent.id),
            )
            .where(UsageEvent.call_id == call_id)
            .group_by(UsageEvent.stage, UsageEvent.provider, UsageEvent.model)
            .order_by(func.min(UsageEvent.id))
        )
        return merge_lines(
            UsageLine(
                cast(UsageStage, stage),
                provider,
                model,
                audio_seconds=seconds(Decimal(str(audio or 0))),
                prompt_tokens=int(prompt or 0),
                completion_tokens=int(completion or 0),
                cached_tokens=int(cached or 0),
                characters=int(chars or 0),
            )
            for stage, provider, model, audio, prompt, completion, cached, chars, _ in rows
        )

    async def recover(self) -> list[str]:
        """Close the calls this worker id left open when it died, as `abandoned`, priced and
        queued for billing with the usage recorded before the crash. Run once at worker start."""
        async with self._sessions() as s:
            ids = (
                await s.scalars(
                    select(Call.id).where(Call.status.in_(RUNNING), Call.worker_id == self.worker_id)
                )
            ).all()
        return await self._abandon(list(ids), reason="worker_lost")

    async def recover_orphans(self) -> list[str]:
        """Close as `abandoned` every open call whose owner is provably gone: a process on this
        machine (same boot, same PID namespace) whose pid no longer runs or now names another
        process (reason `process_lost`), or a worker whose lease expired (`worker_lost`). Calls
        of live processes, and of processes elsewhere, are never touched.

        A `pending` call (the control API made its room; no worker has taken it yet) belongs to
        no process: its API process may restart and a worker still takes it over. It fails
        (`failed`, reason `not_started`) once it has waited PENDING_LIMIT for a worker.
        Returns the ids closed."""
        now = self.clock()
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(
                        Call.id,
                        Call.status,
                        Call.status_at,
                        Call.owner_machine,
                        Call.owner_pid,
                        Call.owner_started,
                        WorkerLease.lease_until,
                    )
                    .outerjoin(WorkerLease, WorkerLease.worker_id == Call.worker_id)
                    .where(Call.status.in_(RUNNING))
                )
            ).all()
        not_started = [
            r.id
            for r in rows
            if r.status == "pending"
            and r.status_at is not None
            and _aware(r.status_at) <= now - PENDING_LIMIT
        ]
        owned = [r for r in rows if r.status != "pending"]
        lost_workers = [r.id for r in owned if r.lease_until is not None and r.lease_until < now]
        lost_processes = [
            r.id
            for r in owned
            if r.id not in lost_workers
            and is_gone(self.process, r.owner_machine, r.owner_pid, r.owner_started)
        ]
        return [
            *await self._abandon(lost_workers, reason="worker_lost"),
            *await self._abandon(lost_processes, reason="process_lost"),
            *await self._fail_unstarted(not_started),
        ]

    async def _fail_unstarted(self, call_ids: list[str]) -> list[str]:
        if not call_ids:
            return []
        now = self.clock()
        records = [
            CallClosed(call_id=c, status="failed", reason="not_started", ended_at=now, duration_s=0.0)
            for c in call_ids
        ]
        await self.write(records)
        log.warning("calls_not_started", calls=call_ids, waited_s=PENDING_LIMIT.total_seconds())
        return call_ids

    async def renew_lease(self, lease_s: float) -> None:
        """Claim this worker id for `lease_s` more seconds. A worker renews well before its lease
        ends; once it has ended, its open calls may be closed by any process."""
        lease = {
            "worker_id": self.worker_id,
            "lease_until": self.clock() + timedelta(seconds=lease_s),
            "host": self.process.host,
            "pid": self.process.pid,
        }
        async with self._writes.begin() as s:
            await s.execute(self._upsert_lease(WorkerLease, WorkerLease.worker_id, lease))

    def _upsert_lease(self, table: type[Base], key: Any, lease: dict[str, Any], where: Any = None) -> Any:
        """Insert the lease row, or update it where `where` holds (always, if None)."""
        return (
            self._dialect_insert(table)
            .values(**lease)
            .on_conflict_do_update(
                index_elements=[key], set_={k: v for k, v in lease.items() if k != key.key}, where=where
            )
        )

    async def hold_lease(self, name: str, holder: str, lease_s: float) -> bool:
        """Take the lease `name` for `holder`, or renew it, for `lease_s` seconds from the
        ledger's clock. True if `holder` has it now; False while another holder's lease runs.

        One statement (an upsert that updates the row only if it is `holder`'s or has
        expired), so two processes asking at once never both get it. Their clocks decide when a
        lease has expired: what the lease protects must stay safe if two processes ever hold it
        (the dial scheduler claims each call atomically as well)."""
        now = self.clock()
        lease = {
            "name": name,
            "holder": holder,
            "lease_until": now + timedelta(seconds=lease_s),
            "host": self.process.host,
            "pid": self.process.pid,
        }
        upsert = self._upsert_lease(
            Lease, Lease.name, lease, where=or_(Lease.holder == holder, Lease.lease_until <= now)
        )
        async with self._writes.begin() as s:
            held = (await s.execute(upsert.returning(Lease.holder))).first()
        return held is not None

    async def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease back (it expires now), so another process need not wait it out.
        False if `holder` did not hold it."""
        async with self._writes.begin() as s:
            released = await s.execute(
                update(Lease)
                .where(Lease.name == name, Lease.holder == holder)
                .values(lease_until=self.clock())
                .returning(Lease.name)
            )
            return released.first() is not None

    async def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        """Who holds (or last held) the lease `name`, and until when; None if never taken."""
        async with self._sessions() as s:
            row = (await s.execute(select(Lease.holder, Lease.lease_until).where(Lease.name == name))).first()
        return None if row is None else (row[0], row[1])

    # -- scheduled calls -------------------------------------------------------------------

    async def schedule_call(self, opened: CallOpened, *, at: datetime, request: dict[str, Any]) -> bool:
        """Record a call to be started at `at` (status `scheduled`), with what starting it needs
        (`request`, JSON), in one transaction. Nothing is queued (no webhook, no billing) until
        it is claimed. False if a call with its id exists already (nothing changes)."""
        if at.tzinfo is None:
            raise ValueError(f"scheduled at {at.isoformat()}: no time zone")
        async with self._writes.begin() as s:
            fresh = await self._open_call(s, opened, scheduled_at=at)
            if fresh:
                s.add(ScheduledDial(call_id=opened.call_id, request=plain(request)))
        return fresh

    async def next_scheduled_at(self) -> datetime | None:
        """When the earliest scheduled call is due (None: none is scheduled)."""
        async with self._sessions() as s:
            at = await s.scalar(select(func.min(Call.scheduled_at)).where(Call.status == "scheduled"))
        return None if at is None else _aware(at)

    async def claim_scheduled(self, *, limit: int, missed_after: timedelta | None = None) -> ClaimedDials:
        """Scheduled calls that are due, earliest first, each claimed atomically: it moves to
        `pending` (started now, owned by this process, its call.initiating queued and, with
        billing, its customer and session), so two processes never both get it. A call more
        than `missed_after` late is closed as failed with the reason `missed` instead.

        The caller starts the claimed calls in LiveKit, and closes one it cannot start (as an
        immediate dial does): a process that dies in between leaves it pending, and orphan
        recovery fails it as not_started if no worker takes it. A call is dialled at most once."""
        now = self.clock()
        query = (
            select(Call)
            .where(Call.status == "scheduled", Call.scheduled_at <= now)
            .order_by(Call.scheduled_at, Call.id)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        due: list[DueDial] = []
        missed: list[str] = []
        async with self._writes.begin() as s:
            for call in (await s.scalars(query)).all():
                assert call.scheduled_at is not None  # every scheduled call has its time
                if missed_after is not None and now - call.scheduled_at > missed_after:
                    late = CallClosed(
                        call_id=call.id, status="failed", reason=MISSED, ended_at=now, duration_s=0.0
                    )
                    if await self._close_call(s, late, scheduled=True):
                        missed.append(call.id)
                    continue
                claimed = await s.execute(
                    update(Call)
                    .where(Call.id == call.id, Call.status == "scheduled")
                    .values(
                        status="pending",
                        status_at=now,
                        started_at=now,
                        worker_id=self.worker_id,
                        owner_host=self.process.host,
                        owner_machine=self.process.machine,
                        owner_pid=self.process.pid,
                        owner_started=self.process.started,
                    )
                    .returning(Call.id)
                )
                if claimed.first() is None:  # another process had it first
                    continue
                request = await s.scalar(
                    delete(ScheduledDial)
                    .where(ScheduledDial.call_id == call.id)
                    .returning(ScheduledDial.request)
                )
                await self._enqueue_webhooks(s, call.id, "pending", now)
                if self.billing is not None:
                    opened = CallOpened(
                        call_id=call.id, workflow_slug=call.workflow_slug, started_at=now,
                        status="pending", customer_id=call.customer_id,
                    )  # fmt: skip
                    await self._enqueue_start(s, opened, fresh=True)
                due.append(DueDial(call.id, call.scheduled_at, dict(request or {})))
        if missed:
            log.warning(
                "scheduled_calls_missed",
                calls=missed,
                missed_after_s=missed_after and missed_after.total_seconds(),
            )
        return ClaimedDials(due, missed)

    async def cancel_scheduled(self, call_id: str, *, reason: str) -> bool:
        """End a call that is still scheduled as `cancelled` (it is never dialled). False if it
        is not scheduled (any more): already claimed for dialling, ended, or unknown."""
        now = self.clock()
        cancel = CallClosed(call_id=call_id, status="cancelled", reason=reason, ended_at=now, duration_s=0.0)
        async with self._writes.begin() as s:
            cancelled = await self._close_call(s, cancel, scheduled=True)
        if cancelled:
            log.info("scheduled_call_cancelled", call_id=call_id, reason=reason)
        return cancelled

    async def _abandon(self, call_ids: list[str], *, reason: str) -> list[str]:
        """Close the calls as `abandoned`, lasting until their last sign of life (the latest usage
        or turn recorded), so a call found days later is not billed for the days."""
        if not call_ids:
            return []
        async with self._sessions() as s:
            rows = (
                await s.execute(
                    select(
                        Call.id,
                        Call.started_at,
                        select(func.max(UsageEvent.recorded_at))
                        .where(UsageEvent.call_id == Call.id)
                        .scalar_subquery(),
                        select(func.max(TurnMetric.recorded_at))
                        .where(TurnMetric.call_id == Call.id)
                        .scalar_subquery(),
                    ).where(Call.id.in_(call_ids), Call.status.in_(RUNNING))
                )
            ).all()
        records = []
        for call_id, started, last_usage, last_turn in rows:
            seen = [_aware(t) for t in (started, last_usage, last_turn) if t is not None]
            last = max(seen)
            records.append(
                CallClosed(
                    call_id=call_id,
                    status="abandoned",
                    reason=reason,
                    ended_at=last,
                    duration_s=(last - started).total_seconds(),
                )
            )
        if records:
            await self.write(records)
            log.warning("calls_abandoned", calls=[r.call_id for r in records], reason=reason)
        return [r.call_id for r in records]

    # -- reading ---------------------------------------------------------------------------

    async def call(self, call_id: str, *, tenant: str | None = None) -> CallView | None:
        """The call as the ledger has it now; None if it never opened here, or, with `tenant`
        given, if it is not that tenant's (a call of another tenant is not there for it)."""
        query = select(Call).where(Call.id == call_id)
        if tenant is not None:
            query = query.where(Call.tenant == check_tenant(tenant))
        async with self._sessions() as s:
            row = await s.scalar(query)
            return None if row is None else call_view(row)

    async def list_calls(
        self,
        *,
        tenant: str,
        page: int = 1,
        page_size: int = 20,
        status: str | None = None,
        workflow_slug: str | None = None,
        user_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
    ) -> CallPage:
        """A page of the tenant's calls, newest first (by start, then id), and the count of all
        that match. started_after is inclusive and started_before exclusive, so consecutive
        windows never share a call. ValueError: page below 1, page_size outside 1..100, a status
        not in CALL_STATUSES, a naive datetime, a malformed tenant."""
        check_tenant(tenant)
        if page < 1:
            raise ValueError(f"page {page} is out of range: pages start at 1")
        if not 1 <= page_size <= PAGE_SIZE_MAX:
            raise ValueError(f"page_size {page_size} is out of range (1-{PAGE_SIZE_MAX})")
        if status is not None and status not in CALL_STATUSES:
            raise ValueError(f"status {status!r} is not a call status: one of {', '.join(CALL_STATUSES)}")
        for name, at in (("started_after", started_after), ("started_before", started_before)):
            if at is not None and at.tzinfo is None:
                raise ValueError(f"{name} {at.isoformat()} has no time zone: the ledger compares aware times")
        where = [Call.tenant == tenant]
        if status is not None:
            where.append(Call.status == status)
        if workflow_slug is not None:
            where.append(Call.workflow_slug == workflow_slug)
        if user_id is not None:
            where.append(Call.user_id == user_id)
        if started_after is not None:
            where.append(Call.started_at >= started_after)
        if started_before is not None:
            where.append(Call.started_at < started_before)
        query = (
            select(Call)
            .where(*where)
            .order_by(Call.started_at.desc(), Call.id)
            .limit(page_size)
            .offset((page - 1) * page_size)
        )
        async with self._sessions() as s:
            total = await s.scalar(select(func.count()).select_from(Call).where(*where)) or 0
            rows = (await s.scalars(query)).all() if (page - 1) * page_size < total else ()
        return CallPage(
            items=tuple(call_view(row) for row in rows),
            total=total,
            page=page,
            page_size=page_size,
            pages=-(-total // page_size),
        )

    async def active_calls(self, *, tenant: str) -> tuple[CallView, ...]:
        """The tenant's running calls (pending, connecting, active), newest first."""
        query = (
            select(Call)
            .where(Call.tenant == check_tenant(tenant), Call.status.in_(RUNNING))
            .order_by(Call.started_at.desc(), Call.id)
        )
        async with self._sessions() as s:
            return tuple(call_view(row) for row in (await s.scalars(query)).all())

    async def call_turns(self, call_id: str) -> tuple[TurnView, ...]:
        """The call's turn latencies in turn order (empty for an unknown call: check it with
        `call(call_id, tenant=...)` first)."""
        async with self._sessions() as s:
            rows = (
                await s.scalars(
                    select(TurnMetric).where(TurnMetric.call_id == call_id).order_by(TurnMetric.turn)
                )
            ).all()
        return tuple(
            TurnView(
                turn=t.turn,
                agent=t.agent,
                eou_delay_ms=t.eou_delay_ms,
                stt_latency_ms=t.stt_latency_ms,
                llm_ttft_ms=t.llm_ttft_ms,
                tts_ttfb_ms=t.tts_ttfb_ms,
                e2e_latency_ms=t.e2e_latency_ms,
                interrupted=t.interrupted,
                at=t.recorded_at,
            )
            for t in rows
        )

    async def call_detail(self, call_id: str, *, tenant: str) -> CallDetailView | None:
        """The tenant's call with its figures (turn latency means, usage totals), read in one
        statement; None if it is not the tenant's call. The control API's GET /calls/{id} reads
        this on every poll, so it is one round trip with no transaction around it."""
        params = {"call_id": call_id, "tenant": check_tenant(tenant)}
        row = await self._read(_CALL_DETAIL, params)
        if row is None:
            return None
        figures = CallFigures(
            turns=row.turns or 0,
            stt_latency_ms=row.stt,
            llm_ttft_ms=row.llm,
            tts_ttfb_ms=row.tts,
            e2e_latency_ms=row.e2e,
            usage=UsageTotals(
                prompt_tokens=int(row.prompt or 0),
                completion_tokens=int(row.completion or 0),
                cached_tokens=int(row.cached or 0),
                tts_characters=int(row.characters or 0),
                # SQLite sums NUMERIC as a float: back to the 3 decimals it was stored with.
                stt_audio_seconds=seconds(Decimal(str(row.audio or 0))),
            ),
        )
        return CallDetailView(call=call_view(row), figures=figures)

    # -- the control API's keys ------------------------------------------------------------

    async def create_api_key(self, tenant: str, name: str = "") -> NewApiKey:
        """A new key for `tenant`. Its secret is in the result only: the ledger keeps its hash."""
        check_tenant(tenant)
        check_name(name)
        key, prefix = new_key()
        row = ApiKey(
            id=str(uuid.uuid4()),
            tenant=tenant,
            name=name,
            key_hash=key_hash(key),
            prefix=prefix,
            created_at=self.clock(),
            revoked_at=None,
        )
        async with self._writes.begin() as s:
            s.add(row)
        log.info("api_key_created", tenant=tenant, key_id=row.id, prefix=prefix)
        return NewApiKey(
            id=row.id, tenant=tenant, name=name, key=key, prefix=prefix, created_at=row.created_at
        )

    async def api_key_tenant(self, key: str) -> str | None:
        """The tenant `key` authenticates; None for a key unknown or revoked."""
        row = await self._read(_API_KEY_TENANT, {"key_hash": key_hash(key)})
        return None if row is None else str(row.tenant)

    async def revoke_api_key(self, key_id: str, *, tenant: str) -> bool:
        """Revoke the tenant's key `key_id` (from then on it authenticates nothing). True if the
        tenant has that key, revoked now or before (its first revocation time is kept); False
        for a key that is not the tenant's, so no tenant can revoke, or learn of, another's."""
        check_tenant(tenant)
        mine = and_(ApiKey.id == key_id, ApiKey.tenant == tenant)
        async with self._writes.begin() as s:
            revoked = await s.execute(
                update(ApiKey)
                .where(mine, ApiKey.revoked_at.is_(None))
                .values(revoked_at=self.clock())
                .returning(ApiKey.id)
            )
            if revoked.first() is not None:
                log.info("api_key_revoked", tenant=tenant, key_id=key_id)
                return True
            return bool(await s.scalar(select(exists().where(mine))))

    async def api_keys(self, tenant: str) -> tuple[ApiKeyView, ...]:
        """The tenant's keys, revoked ones included, oldest first."""
        query = (
            select(ApiKey).where(ApiKey.tenant == check_tenant(tenant)).order_by(ApiKey.created_at, ApiKey.id)
        )
        async with self._sessions() as s:
            rows = (await s.scalars(query)).all()
        return tuple(
            ApiKeyView(
                id=k.id,
                tenant=k.tenant,
                name=k.name,
                prefix=k.prefix,
                created_at=k.created_at,
                revoked_at=k.revoked_at,
            )
            for k in rows
        )

    async def recent_calls(self, *, limit: int, status: str | None = None) -> list[Call]:
        """The latest calls first (by start), optionally only those with `status`."""
        query = select(Call).order_by(Call.started_at.desc(), Call.id).limit(limit)
        if status is not None:
            query = query.where(Call.status == status)
        async with self._sessions() as s:
            return list((await s.scalars(query)).all())

    async def usage_lines(self, call_id: str) -> list[UsageLine]:
        async with self._sessions() as s:
            return await self._lines(s, call_id)

    # -- webhooks (metering/_webhooks.py) ----------------------------------------------------

    async def create_webhook_endpoint(
        self, tenant: str, url: str, events: Sequence[str] | None = None
    ) -> NewWebhookEndpoint:
        """A new endpoint of `tenant`, receiving `events` (None: all) of every call of the
        tenant from now on. Its signing secret is in the result only. ValueError: a malformed
        tenant or URL (http or https only), an unknown event type."""
        async with self._writes.begin() as s:
            new = await _webhooks.create_endpoint(s, tenant, url, events, now=self.clock())
        log.info("webhook_endpoint_created", tenant=tenant, endpoint_id=new.id)
        return new

    async def webhook_endpoints(self, tenant: str) -> tuple[WebhookEndpointView, ...]:
        """The tenant's endpoints, disabled ones included, oldest first (never their secrets)."""
        query = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant == check_tenant(tenant))
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        async with self._sessions() as s:
            return tuple(_webhooks.endpoint_view(row) for row in (await s.scalars(query)).all())

    async def delete_webhook_endpoint(self, endpoint_id: str, *, tenant: str) -> bool:
        """Delete the tenant's endpoint; events it had yet to receive are cancelled. False for
        an endpoint that is not the tenant's (no tenant deletes, or learns of, another's)."""
        async with self._writes.begin() as s:
            deleted = await _webhooks.delete_endpoint(s, endpoint_id, tenant)
        if deleted:
            log.info("webhook_endpoint_deleted", tenant=tenant, endpoint_id=endpoint_id)
        return deleted

    async def tenant_webhook_secret(self, tenant: str) -> str:
        """The secret that signs the events sent to a call's own webhook_url (created on first
        use). Endpoints have their own, given when they are created."""
        async with self._writes.begin() as s:
            return await _webhooks.tenant_secret(
                s, tenant, now=self.clock(), insert=self._insert_ignoring_duplicates
            )

    async def claim_webhooks(self, *, limit: int, lease_s: float) -> list[WebhookDelivery]:
        """Due webhook events, claimed like the exporter's (`claim_due`): leased for `lease_s`,
        each only once every earlier event of its call to its target is delivered. Events whose
        target went away meanwhile are cancelled, not returned."""
        items = await self.claim_due(limit=limit, lease_s=lease_s, kind=WEBHOOK)
        if not items:
            return []
        async with self._writes.begin() as s:
            return await _webhooks.deliveries(
                s, [i.id for i in items], now=self.clock(), insert=self._insert_ignoring_duplicates
            )

    async def disable_webhook_target(self, outbox_id: int) -> str | None:
        """The target of webhook event `outbox_id` answered 410 Gone: an endpoint is disabled
        (a call's webhook_url dropped) and its pending events cancelled. Returns the target."""
        async with self._writes.begin() as s:
            return await _webhooks.disable_target(s, outbox_id, now=self.clock())

    # -- tenants' provider keys (metering/_provider_keys.py) -----------------------------------

    async def create_provider_key(
        self,
        tenant: str,
        provider_type: str,
        provider_name: str,
        api_key: str,
        *,
        is_default: bool = False,
        cipher: KeyCipher,
    ) -> ProviderKeyView:
        """Store the tenant's `api_key` for a provider, encrypted by `cipher`. A new default
        replaces the tenant's default of that stage. ValueError: a malformed tenant, a stage or
        provider that takes no key, a key not 8-512 characters long."""
        check_tenant(tenant)
        stage = check_provider(provider_type, provider_name)
        check_api_key(api_key)
        ciphertext = cipher.encrypt(api_key)
        for attempt in range(3):
            row = ProviderKey(
                id=str(uuid.uuid4()),
                tenant=tenant,
                provider_type=stage,
                provider_name=provider_name,
                ciphertext=ciphertext,
                last4=api_key[-4:],
                is_default=is_default,
                created_at=self.clock(),
            )
            try:
                async with self._writes.begin() as s:
                    if is_default:
                        await s.execute(
                            update(ProviderKey)
                            .where(
                                ProviderKey.tenant == tenant,
                                ProviderKey.provider_type == stage,
                                ProviderKey.is_default.is_(True),
                            )
                            .values(is_default=False)
                        )
                    s.add(row)
                break
            except IntegrityError:
                # Two defaults created at once (PostgreSQL): the unique index refused the
                # second; clearing again now sees the first.
                if not is_default or attempt == 2:
                    raise
        log.info(
            "provider_key_created", tenant=tenant, key_id=row.id, provider_type=stage,
            provider_name=provider_name, is_default=is_default,
        )  # fmt: skip
        return _provider_key_view(row)

    async def provider_keys(self, tenant: str) -> tuple[ProviderKeyView, ...]:
        """The tenant's provider keys, oldest first, masked (never a key, nor its ciphertext)."""
        query = (
            select(ProviderKey)
            .where(ProviderKey.tenant == check_tenant(tenant))
            .order_by(ProviderKey.created_at, ProviderKey.id)
        )
        async with self._sessions() as s:
            return tuple(_provider_key_view(row) for row in (await s.scalars(query)).all())

    async def delete_provider_key(self, key_id: str, *, tenant: str) -> bool:
        """Delete the tenant's provider key. False for a key that is not the tenant's (no tenant
        deletes, or learns of, another's)."""
        check_tenant(tenant)
        async with self._writes.begin() as s:
            deleted = await s.execute(
                delete(ProviderKey)
                .where(ProviderKey.id == key_id, ProviderKey.tenant == tenant)
                .returning(ProviderKey.id)
            )
            found = deleted.first() is not None
        if found:
            log.info("provider_key_deleted", tenant=tenant, key_id=key_id)
        return found

    async def tenant_credentials(self, tenant: str, *, cipher: KeyCipher) -> dict[str, dict[str, str]]:
        """The options the tenant's keys give its calls' providers, by provider name
        ({"openai": {"api_key": ...}}), for ProviderPool's `credentials`; a provider without a
        key of the tenant is absent (the process environment is used). Of a provider's several
        keys, a default one wins, then the newest. ProviderKeyError: a key that cannot be
        decrypted (its id named)."""
        query = (
            select(ProviderKey.id, ProviderKey.provider_name, ProviderKey.ciphertext)
            .where(ProviderKey.tenant == check_tenant(tenant))
            .order_by(ProviderKey.is_default, ProviderKey.created_at, ProviderKey.id)
        )
        async with self._sessions() as s:
            rows = (await s.execute(query)).all()
        chosen = {name: (key_id, token) for key_id, name, token in rows}  # the last one wins
        return {
            name: {"api_key": cipher.decrypt(token, key_id=key_id)}
            for name, (key_id, token) in chosen.items()
        }

    async def reencrypt_provider_keys(self, cipher: KeyCipher) -> int:
        """Encrypt every stored provider key again with `cipher`'s first master key (rotation);
        returns how many. All or none: a key that cannot be decrypted is a ProviderKeyError
        naming it, and nothing is changed."""
        async with self._writes.begin() as s:
            rows = (await s.execute(select(ProviderKey.id, ProviderKey.ciphertext))).all()
            for key_id, token in rows:
                await s.execute(
                    update(ProviderKey)
                    .where(ProviderKey.id == key_id)
                    .values(ciphertext=cipher.rotate(token, key_id=key_id))
                )
        log.info("provider_keys_reencrypted", count=len(rows))
        return len(rows)

    # -- the outbox ------------------------------------------------------------------------

    async def claim_due(
        self, *, limit: int, lease_s: float, resend_unanswered: bool = True, kind: str = "usage"
    ) -> list[OutboxItem]:
        """Pending events whose time has come and whose call's earlier steps are delivered.

        Claiming moves an event's next attempt `lease_s` ahead, so exporters sharing the
        database never send it at once, and one that dies mid-request leaves it to be retried
        when the lease runs out. With resend_unanswered=False (an API that ignores
        Idempotency-Key), claiming also marks the event as being sent (`sending_since`), and an
        event whose lease ran out with that mark and no outcome recorded (its sender died) is
        moved to `doubt` instead: resending might bill it twice.

        kind: the outbox's lanes this claims from, `usage` (the exporter's) or `webhook`.
        """
        now = self.clock()
        query = (
            select(OutboxEvent)
            .where(
                OutboxEvent.kind == kind,
                OutboxEvent.state == "pending",
                OutboxEvent.next_attempt_at <= now,
                ~_waiting_for_earlier(),
            )
            .order_by(OutboxEvent.id)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=OutboxEvent)
        lease_until = now + timedelta(seconds=lease_s)
        unanswered: Sequence[int] = ()
        async with self._writes.begin() as s:
            if not resend_unanswered:  # in the claim's transaction: one write lock per pass
                unanswered = (
                    await s.scalars(
                        update(OutboxEvent)
                        .where(
                            OutboxEvent.kind == kind,
                            OutboxEvent.state == "pending",
                            OutboxEvent.sending_since.is_not(None),
                            OutboxEvent.next_attempt_at <= now,
                        )
                        .values(state="doubt", last_error="the sender stopped before the answer was recorded")
                        .returning(OutboxEvent.id)
                    )
                ).all()
            events = list((await s.scalars(query)).all())
            for e in events:
                e.next_attempt_at = lease_until
                if not resend_unanswered:
                    # A call has one claimable step at a time, and the exporter sends what it
                    # claims at once (or releases it): claimed is as good as in flight.
                    e.sending_since = now
            items = [
                OutboxItem(e.id, e.call_id, e.step, dict(e.payload), e.idempotency_key, e.attempts)
                for e in events
            ]
        if unanswered:
            log.warning("usage_in_doubt", outbox_ids=list(unanswered), reason="sender_lost")
        return items

    async def mark_delivered(self, item_id: int) -> None:
        async with self._writes.begin() as s:
            await s.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == item_id)
                .values(
                    state="delivered",
                    delivered_at=self.clock(),
                    attempts=OutboxEvent.attempts + 1,
                    last_error=None,
                    sending_since=None,
                )
            )

    async def mark_failed(self, item_id: int, error: str, *, retry_at: datetime | None) -> bool:
        """Record a failed attempt; `retry_at` None (or running out of attempts, decided by the
        caller) moves the event to the dead letters. Returns True if it is now dead."""
        now = self.clock()
        async with self._writes.begin() as s:
            e = await s.get(OutboxEvent, item_id)
            if e is None or e.state != "pending":
                return False
            e.attempts += 1
            e.last_error = error[:2000]
            e.sending_since = None
            if retry_at is not None:
                e.next_attempt_at = retry_at
                return False
            e.state = "dead"
            await s.merge(
                DeadLetter(outbox_id=e.id, failed_at=now, attempts=e.attempts, last_error=e.last_error)
            )
            return True

    async def mark_in_doubt(self, item_id: int, error: str) -> None:
        """The request went out and no answer came (a timeout, a dropped connection): it may
        have been applied. Held for an operator (`resolve_doubt`)."""
        async with self._writes.begin() as s:
            await s.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == item_id, OutboxEvent.state == "pending")
                .values(state="doubt", attempts=OutboxEvent.attempts + 1, last_error=error[:2000])
            )

    async def in_doubt(self) -> list[OutboxEvent]:
        async with self._sessions() as s:
            return list(
                (
                    await s.scalars(
                        select(OutboxEvent).where(OutboxEvent.state == "doubt").order_by(OutboxEvent.id)
                    )
                ).all()
            )

    async def resolve_doubt(self, item_ids: Sequence[int], *, sent: bool) -> list[int]:
        """The operator's answer for events in doubt: `sent` (the API has them: delivered) or
        not (back to pending, sent again at once). Returns the ids that were in doubt."""
        now = self.clock()
        values: dict[str, Any] = (
            {"state": "delivered", "delivered_at": now, "last_error": None}
            if sent
            else {"state": "pending", "next_attempt_at": now}
        )
        async with self._writes.begin() as s:
            changed = (
                await s.scalars(
                    update(OutboxEvent)
                    .where(OutboxEvent.id.in_(list(item_ids)), OutboxEvent.state == "doubt")
                    .values(sending_since=None, **values)
                    .returning(OutboxEvent.id)
                )
            ).all()
        return sorted(changed)

    async def release(self, item_ids: Sequence[int]) -> None:
        """Give back claimed events that were not sent, so they need not wait out their lease."""
        if not item_ids:
            return
        async with self._writes.begin() as s:
            await s.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(item_ids), OutboxEvent.state == "pending")
                .values(next_attempt_at=self.clock(), sending_since=None)
            )

    async def prune_delivered(self, before: datetime) -> int:
        """Delete outbox events delivered before `before`; returns how many. They only record a
        request that succeeded: the call, its usage events and its cost stay."""
        async with self._writes.begin() as s:
            result = await s.execute(
                delete(OutboxEvent).where(OutboxEvent.state == "delivered", OutboxEvent.delivered_at < before)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def schema_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_migrate.current_revision)

    async def outbox_status(self, *, kind: str = "usage") -> OutboxStatus:
        mine = OutboxEvent.kind == kind
        async with self._sessions() as s:
            counts = dict(
                (
                    await s.execute(
                        select(OutboxEvent.state, func.count()).where(mine).group_by(OutboxEvent.state)
                    )
                ).all()
            )
            blocked = await s.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(
                    mine,
                    OutboxEvent.state == "pending",
                    _has_earlier_step(lambda e: e.state.in_(("dead", "doubt"))),
                )
            )
            oldest = await s.scalar(
                select(func.min(OutboxEvent.created_at)).where(mine, OutboxEvent.state == "pending")
            )
        return OutboxStatus(
            pending=counts.get("pending", 0),
            blocked=blocked or 0,
            dead=counts.get("dead", 0),
            in_doubt=counts.get("doubt", 0),
            delivered=counts.get("delivered", 0),
            oldest_pending_at=oldest,
        )

    async def dead_letters(self) -> list[tuple[OutboxEvent, DeadLetter]]:
        async with self._sessions() as s:
            rows = await s.execute(
                select(OutboxEvent, DeadLetter)
                .join(DeadLetter, DeadLetter.outbox_id == OutboxEvent.id)
                .order_by(OutboxEvent.id)
            )
            return [(e, d) for e, d in rows.all()]

    async def retry_dead(self) -> int:
        """Put every dead letter back in the outbox with a fresh attempt count; returns how many."""
        now = self.clock()
        async with self._writes.begin() as s:
            ids = list((await s.scalars(select(DeadLetter.outbox_id))).all())
            if not ids:
                return 0
            await s.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(ids))
                .values(state="pending", attempts=0, next_attempt_at=now)
            )
            await s.execute(delete(DeadLetter).where(DeadLetter.outbox_id.in_(ids)))
            return len(ids)

    async def next_attempt_at(self, *, kind: str = "usage") -> datetime | None:
        """When the next deliverable event is due. None: nothing can be sent until something
        else is delivered or retried (events waiting for an earlier step do not count)."""
        async with self._sessions() as s:
            return await s.scalar(
                select(func.min(OutboxEvent.next_attempt_at)).where(
                    OutboxEvent.kind == kind, OutboxEvent.state == "pending", ~_waiting_for_earlier()
                )
            )


def _provider_key_view(row: ProviderKey) -> ProviderKeyView:
    return ProviderKeyView(
        id=row.id,
        tenant=row.tenant,
        provider_type=cast(ProviderType, row.provider_type),
        provider_name=row.provider_name,
        is_default=row.is_default,
        masked_key=masked(row.last4),
        created_at=row.created_at,
    )


def _has_earlier_step(test: Callable[[Any], Any]) -> Any:
    """An outbox event whose lane (call, kind, target) has an earlier step for which
    `test(step)` holds."""
    earlier = aliased(OutboxEvent)
    return exists().where(
        and_(
            earlier.call_id == OutboxEvent.call_id,
            earlier.kind == OutboxEvent.kind,
            earlier.target == OutboxEvent.target,
            earlier.seq < OutboxEvent.seq,
            test(earlier),
        )
    )


def _waiting_for_earlier() -> Any:
    """An outbox event whose lane has an earlier step not yet delivered (nor cancelled: a
    webhook event whose target went away)."""
    return _has_earlier_step(lambda e: e.state.not_in(("delivered", "cancelled")))


_WRITE = {"voicerun_write": True}
_QUEUED_WEBHOOKS = "voicerun_queued_webhooks"
"""Set in a write session's info when it queued webhook events (see on_webhooks_queued)."""


def _drop_if_closed(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    # The reads pool's stand-in for pool_pre_ping, whose ping is three round trips on asyncpg
    # (BEGIN, a query, ROLLBACK): a connection PostgreSQL closed (a restart, an idle timeout)
    # has seen its end of stream, so asyncpg knows it is closed without asking, and the pool
    # replaces it. A read that meets one closed a moment ago retries once (Ledger._read).
    if dbapi_conn.driver_connection.is_closed():
        raise DisconnectionError("PostgreSQL closed this pooled connection")


def _sqlite_begin(conn: Any) -> None:
    # SQLite's driver would open transactions lazily and commit DDL on its own. We begin them
    # ourselves: migrations are then atomic, and a write transaction starts with the write lock
    # (IMMEDIATE), so two writers queue on busy_timeout instead of one failing with
    # SQLITE_BUSY when it upgrades a read to a write. Reads stay deferred and never block (WAL).
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("voicerun_write") else "BEGIN")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # see _sqlite_begin
    # WAL lets the control API read while a worker writes; NORMAL sync in WAL mode survives a
    # killed process (only an OS crash can lose the last commits); the FKs keep rows consistent.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")
    # Switching a new file to WAL needs it to itself, and SQLite reports "locked" at once rather
    # than waiting; processes opening a new ledger together retry (this runs in the driver's
    # thread, never on the event loop). Once in WAL, the file stays in WAL.
    for _ in range(50):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except Exception as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.1)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _call_detail_statement() -> Select[Any]:
    """Built once: constructing a statement costs more than running it (hot read paths)."""
    call_id: BindParameter[str] = bindparam("call_id")

    def total(column: Any, stage: str) -> Any:
        return func.coalesce(func.sum(case((UsageEvent.stage == stage, column), else_=0)), 0)

    turns = (
        select(
            TurnMetric.call_id.label("turn_call"),
            func.count().label("turns"),
            func.avg(TurnMetric.stt_latency_ms).label("stt"),
            func.avg(TurnMetric.llm_ttft_ms).label("llm"),
            func.avg(TurnMetric.tts_ttfb_ms).label("tts"),
            func.avg(TurnMetric.e2e_latency_ms).label("e2e"),
        )
        .where(TurnMetric.call_id == call_id)
        .group_by(TurnMetric.call_id)
        .subquery()
    )
    usage = (
        select(
            UsageEvent.call_id.label("usage_call"),
            total(UsageEvent.prompt_tokens, "llm").label("prompt"),
            total(UsageEvent.completion_tokens, "llm").label("completion"),
            total(UsageEvent.cached_tokens, "llm").label("cached"),
            total(UsageEvent.characters, "tts").label("characters"),
            total(UsageEvent.audio_seconds, "stt").label("audio"),
        )
        .where(UsageEvent.call_id == call_id)
        .group_by(UsageEvent.call_id)
        .subquery()
    )
    # The calls table's columns named as Call's attributes, so the row reads as call_view expects.
    columns = [attr.columns[0].label(attr.key) for attr in sa_inspect(Call).column_attrs]
    joined = Call.__table__.outerjoin(turns, turns.c.turn_call == Call.id).outerjoin(
        usage, usage.c.usage_call == Call.id
    )
    return (
        select(*columns, *turns.c, *usage.c)
        .select_from(joined)
        .where(Call.id == call_id, Call.tenant == bindparam("tenant"))
    )


_CALL_DETAIL = _call_detail_statement()
_API_KEY_TENANT = select(ApiKey.tenant).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def _aware(at: datetime) -> datetime:
    # A scalar subquery's value comes back without the column's type: naive on SQLite.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _prepare_sqlite_file(path: Path, *, create: bool) -> None:
    if not create:
        if not path.exists():
            raise LedgerMissingError(
                f"no ledger at {path}: no call has been recorded here yet (set VOICERUN_DATA_DIR or DATABASE_URL)"
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerConfigError(
            f"cannot create the ledger's directory {path.parent}: {exc.strerror or exc}"
        ) from None


def _probe_write(conn: Any, where: Path | str) -> None:
    """A write that changes nothing, so a ledger that can be read but not written (a read-only
    file, a read-only database user or replica) is found at open, not at a call's end."""
    try:
        conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
    except DBAPIError as exc:
        what = f"the ledger file {where}" if isinstance(where, Path) else f"the ledger at {where}"
        raise LedgerConfigError(f"{what} cannot be written: {_first_line(exc.orig or exc)}") from None


def _check_schema(conn: Any) -> None:
    current, head = _migrate.current_revision(conn), _migrate.head_revision()
    if current != head:
        raise LedgerError(
            f"the ledger's schema is at revision {current or '(none)'}, this build needs {head}: "
            "run `voicerun metering migrate`"
        )
