"""The ledger on SQLite and PostgreSQL: migrations, exact totals, idempotent writes, the outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
from clocks import FakeClock
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering import (
    BillingIdentity,
    CallClosed,
    CallOpened,
    Ledger,
    LedgerConfigError,
    LedgerError,
    LedgerMissingError,
    Record,
    TurnReported,
    UsageLine,
    UsageReported,
    database_url,
    load_catalog,
)
from metering._migrate import downgrade, upgrade
from metering._schema import OutboxEvent, UsageEvent

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
BILLING = BillingIdentity(agent_id="agent-7", customer_id="acme", customer_name="Acme Ltd", plan="pro")


@pytest.fixture
def clock() -> FakeClock:
    """The ledger's wall clock: the calls below happen at T0, the ledger sees them a day later."""
    return FakeClock(T0 + timedelta(days=1))


@pytest_asyncio.fixture
async def ledger(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(database_url, catalog=load_catalog(), worker_id="w1", billing=BILLING, clock=clock)
    try:
        yield lg
    finally:
        await lg.aclose()


async def outbox_event(ledger: Ledger, item_id: int) -> OutboxEvent:
    async with AsyncSession(ledger.engine) as s:
        row = await s.get(OutboxEvent, item_id)
    assert row is not None
    return row


def usage(call_id: str, seq: int, line: UsageLine, agent: str = "front") -> UsageReported:
    return UsageReported(call_id=call_id, seq=seq, line=line, agent=agent, at=T0 + timedelta(seconds=seq))


def known_call(call_id: str = "call-1") -> list[Record]:
    """Two agents: the second speaks with Polly. 4 utterances, 2 completions, 3 segments."""
    return [
        CallOpened(call_id=call_id, workflow_slug="front-desk", started_at=T0),
        usage(call_id, 0, UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("2.340"))),
        usage(call_id, 1, UsageLine("llm", "openai", "gpt-4o-mini", prompt_tokens=812, completion_tokens=41, cached_tokens=512)),
        usage(call_id, 2, UsageLine("tts", "deepgram", "aura-2-thalia-en", characters=57)),
        usage(call_id, 3, UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("1.105"))),
        usage(call_id, 4, UsageLine("llm", "openai", "gpt-4o-mini", prompt_tokens=903, completion_tokens=18, cached_tokens=768)),
        usage(call_id, 5, UsageLine("tts", "polly", "neural", characters=120), agent="billing"),
        usage(call_id, 6, UsageLine("tts", "polly", "neural", characters=33), agent="billing"),
        usage(call_id, 7, UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("0.555"))),
        usage(call_id, 8, UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("3.000"))),
        TurnReported(
            call_id=call_id, turn=0, agent="front", eou_delay_ms=301.0, stt_latency_ms=120.5,
            llm_ttft_ms=210.0, tts_ttfb_ms=95.0, e2e_latency_ms=640.2, interrupted=False, at=T0,
        ),
        TurnReported(
            call_id=call_id, turn=1, agent="billing", eou_delay_ms=300.0, stt_latency_ms=98.0,
            llm_ttft_ms=None, tts_ttfb_ms=None, e2e_latency_ms=None, interrupted=True, at=T0,
        ),
        CallClosed(
            call_id=call_id, status="completed", reason="agent_ended",
            ended_at=T0 + timedelta(seconds=95.25), duration_s=95.25,
        ),
    ]  # fmt: skip


async def test_a_known_call_has_exact_totals_cost_and_turns(ledger: Ledger) -> None:
    await ledger.write(known_call())
    call = await ledger.call("call-1")
    assert call is not None
    assert (call.status, call.ended_reason, call.worker_id, call.customer_id) == (
        "completed",
        "agent_ended",
        "w1",
        "acme",
    )
    assert call.started_at == T0 and call.ended_at == T0 + timedelta(seconds=95.25)
    assert call.duration_s == 95.25
    lines = {(ln.stage, ln.provider, ln.model): ln for ln in await ledger.usage_lines("call-1")}
    assert lines["stt", "deepgram", "nova-3"].audio_seconds == Decimal("7.000")
    llm = lines["llm", "openai", "gpt-4o-mini"]
    assert (llm.prompt_tokens, llm.completion_tokens, llm.cached_tokens) == (1715, 59, 1280)
    assert lines["tts", "deepgram", "aura-2-thalia-en"].characters == 57
    assert lines["tts", "polly", "neural"].characters == 153
    costs = call.cost_breakdown
    assert costs is not None and call.cost_total == Decimal(costs["total"])
    assert isinstance(call.cost_total, Decimal)
    assert costs["transcriber"]["seconds"] == 7.0 and costs["voice"]["characters"] == 210
    assert [p["provider"] for p in costs["voice"]["providers"]] == ["deepgram", "polly"]
    assert costs["agent"]["seconds"] == 95.25
    turns = await ledger.call_turns("call-1")
    assert [(t.turn, t.agent, t.e2e_latency_ms, t.interrupted) for t in turns] == [
        (0, "front", 640.2, False),
        (1, "billing", None, True),
    ]


async def test_a_batch_written_twice_counts_once(ledger: Ledger) -> None:
    # A batch is retried whole after a failed commit: nothing may be counted twice.
    await ledger.write(known_call())
    await ledger.write(known_call())
    async with ledger.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(UsageEvent)) == 9
        assert await conn.scalar(select(func.count()).select_from(OutboxEvent)) == 7
    call = await ledger.call("call-1")
    assert call is not None and call.status == "completed"
    lines = await ledger.usage_lines("call-1")
    assert sum(ln.characters for ln in lines) == 210


async def test_the_outbox_holds_the_billing_steps_in_order(ledger: Ledger) -> None:
    await ledger.write(known_call())
    async with ledger.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(OutboxEvent.seq, OutboxEvent.step, OutboxEvent.idempotency_key, OutboxEvent.payload)
                .where(OutboxEvent.call_id == "call-1")
                .order_by(OutboxEvent.seq)
            )
        ).all()
    assert [(r.seq, r.step) for r in rows] == [
        (0, "customer"), (1, "session"), (2, "stt"), (3, "llm"), (4, "tts"), (5, "tts"), (6, "indicator"),
    ]  # fmt: skip
    assert len({r.idempotency_key for r in rows}) == 7
    payloads = [r.payload for r in rows]
    assert payloads[0] == {"name": "Acme Ltd", "externalId": "acme"}
    assert payloads[1] == {"sessionId": "call-1", "agentId": "agent-7", "customerId": "acme"}
    assert payloads[2] == {
        "sessionId": "call-1", "provider": "deepgram", "model": "nova-3", "plan": "pro", "audioMinutes": 0.116667,
    }  # fmt: skip
    assert payloads[3] == {
        "sessionId": "call-1", "provider": "openai", "model": "gpt-4o-mini", "plan": "pro",
        "promptTokens": 1715, "completionTokens": 59, "cachedTokens": 1280,
    }  # fmt: skip
    assert payloads[5] == {
        "sessionId": "call-1", "provider": "amazon-polly", "model": "neural", "plan": "pro", "characters": 153,
    }  # fmt: skip
    assert payloads[6] == {"sessionId": "call-1", "indicator": "per-minute-call", "totalDuration": 1.5875}


async def test_a_call_names_its_own_customer_and_billing_agent(ledger: Ledger) -> None:
    await ledger.write(
        [
            CallOpened(
                call_id="c2",
                workflow_slug="wf",
                started_at=T0,
                customer_id="cust-9",
                billing_agent_id="agent-b",
            )
        ]
    )
    items = await ledger.claim_due(limit=10, lease_s=30)
    assert items[0].payload == {"name": "Acme Ltd", "externalId": "cust-9"}
    await ledger.mark_delivered(items[0].id)
    (session,) = await ledger.claim_due(limit=10, lease_s=30)
    assert session.payload == {"sessionId": "c2", "agentId": "agent-b", "customerId": "cust-9"}
    call = await ledger.call("c2")
    assert call is not None and call.customer_id == "cust-9" and call.status == "active"


async def test_without_billing_calls_are_recorded_and_nothing_is_queued(database_url: str) -> None:
    lg = await Ledger.open(database_url, catalog=load_catalog())
    try:
        await lg.write(known_call())
        call = await lg.call("call-1")
        assert call is not None and call.cost_total is not None
        status = await lg.outbox_status()
        assert (status.pending, status.delivered, status.dead) == (0, 0, 0)
    finally:
        await lg.aclose()


async def test_claims_follow_each_calls_order_and_leases_expire(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.write([*known_call("a"), *known_call("b")])
    first = await ledger.claim_due(limit=100, lease_s=30)
    assert [(i.call_id, i.step) for i in first] == [("a", "customer"), ("b", "customer")]
    # Claimed and not yet answered: nobody else gets them until the lease runs out.
    clock.advance(seconds=29)
    assert await ledger.claim_due(limit=100, lease_s=30) == []
    clock.advance(seconds=2)
    again = await ledger.claim_due(limit=100, lease_s=30)
    assert [i.id for i in again] == [i.id for i in first]
    await ledger.mark_delivered(first[0].id)
    clock.advance(days=1)
    nxt = await ledger.claim_due(limit=100, lease_s=30)
    assert [(i.call_id, i.step) for i in nxt] == [("a", "session"), ("b", "customer")]


async def test_no_outbox_time_comes_from_anywhere_but_the_ledgers_clock(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Calls dated long before the ledger's "now" (or after it) are queued at the ledger's now.
    clock.at = T0 - timedelta(days=400)
    await ledger.write(known_call("old"))
    (item,) = await ledger.claim_due(limit=10, lease_s=30)
    row = await outbox_event(ledger, item.id)
    assert (row.created_at, row.next_attempt_at) == (clock.at, clock.at + timedelta(seconds=30))
    await ledger.release([item.id])
    assert await ledger.next_attempt_at() == clock.at
    clock.advance(seconds=5)
    (item,) = await ledger.claim_due(limit=10, lease_s=30)
    await ledger.mark_delivered(item.id)
    assert (await outbox_event(ledger, item.id)).delivered_at == clock.at


async def test_dead_letters_block_their_call_until_retried(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.write(known_call())
    (customer,) = await ledger.claim_due(limit=10, lease_s=30)
    retry_at = clock() + timedelta(minutes=5)
    assert await ledger.mark_failed(customer.id, "HTTP 503", retry_at=retry_at) is False
    assert await ledger.next_attempt_at() == retry_at
    assert await ledger.mark_failed(customer.id, "HTTP 401: bad key", retry_at=None) is True
    status = await ledger.outbox_status()
    assert (status.pending, status.blocked, status.dead, status.delivered) == (6, 6, 1, 0)
    [(event, dead)] = await ledger.dead_letters()
    assert (event.step, dead.attempts, dead.last_error) == ("customer", 2, "HTTP 401: bad key")
    clock.advance(days=1)
    assert await ledger.claim_due(limit=10, lease_s=30) == []
    assert await ledger.retry_dead() == 1
    assert await ledger.dead_letters() == []
    (again,) = await ledger.claim_due(limit=10, lease_s=30)
    assert (again.id, again.attempts) == (customer.id, 0)


async def test_recover_closes_only_this_workers_open_calls(database_url: str) -> None:
    catalog = load_catalog()
    clock = FakeClock(T0 + timedelta(days=3))
    w1 = await Ledger.open(database_url, catalog=catalog, worker_id="w1", billing=BILLING, clock=clock)
    w2 = await Ledger.open(database_url, catalog=catalog, worker_id="w2", billing=BILLING, clock=clock)
    try:
        crashed = known_call("crashed")[:-1]  # the worker died before the call closed
        await w1.write(crashed)
        await w2.write([CallOpened(call_id="alive", workflow_slug="wf", started_at=T0)])
        assert await w1.recover() == ["crashed"]
        call = await w1.call("crashed")
        assert call is not None
        # It lasted until its last sign of life (usage at T0 + 8 s), not until it was found.
        assert (call.status, call.ended_reason, call.duration_s) == ("abandoned", "worker_lost", 8.0)
        assert call.cost_breakdown is not None and call.cost_breakdown["voice"]["characters"] == 210
        alive = await w1.call("alive")
        assert alive is not None and alive.status == "active"
        assert await w1.recover() == []
        status = await w1.outbox_status()
        assert status.pending == 7 + 2  # the abandoned call is billed; the live one has started
    finally:
        await w1.aclose()
        await w2.aclose()


async def test_migrations_go_down_and_up_again(database_url: str) -> None:
    lg = await Ledger.open(database_url, catalog=load_catalog())
    try:
        async with lg.engine.begin() as conn:
            await conn.run_sync(downgrade, "base")
        async with lg.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(c.dialect.get_table_names(c)))
        assert tables <= {"alembic_version"}
        async with lg.engine.begin() as conn:
            await conn.run_sync(upgrade)
        await lg.write(known_call())
    finally:
        await lg.aclose()


async def test_workers_starting_together_migrate_once(database_url: str) -> None:
    ledgers = await asyncio.gather(*(Ledger.open(database_url, catalog=load_catalog()) for _ in range(3)))
    try:
        async with ledgers[0].engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        for lg in ledgers:
            await lg.aclose()


async def test_an_unmigrated_database_is_refused_with_the_command_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"revision \(none\).*voicerun metering migrate"):
        await Ledger.open(database_url(None, tmp_path), catalog=load_catalog(), migrate=False)


async def test_an_unreachable_database_names_the_url_without_its_password(tmp_path: Path) -> None:
    url = database_url("postgresql://voicerun:s3cret@127.0.0.1:1/nowhere", tmp_path)
    with pytest.raises(LedgerError) as err:
        await Ledger.open(url, catalog=load_catalog())
    assert "127.0.0.1:1/nowhere" in str(err.value) and "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/voice", "postgresql+asyncpg://u:p@db:5432/voice"),
        ("postgresql://u@db/voice", "postgresql+asyncpg://u@db/voice"),
        ("postgresql+asyncpg://u@db/voice", "postgresql+asyncpg://u@db/voice"),
        ("sqlite:////var/lib/voicerun/ledger.db", "sqlite+aiosqlite:////var/lib/voicerun/ledger.db"),
    ],
)
def test_database_urls_operators_paste_are_accepted(given: str, expected: str, tmp_path: Path) -> None:
    assert database_url(given, tmp_path) == expected


def test_the_embedded_default_is_a_file_in_the_data_directory(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/voicerun.db"


@pytest.mark.parametrize(
    "bad",
    [
        "mysql://u@db/voice",
        "not a url",
        "postgresql://u:s3cret@db:port/x",
        "postgresql://u:s3cret@db:70000/x",
    ],
)
def test_unusable_database_urls_are_a_configuration_error_without_the_password(
    bad: str, tmp_path: Path
) -> None:
    with pytest.raises(LedgerConfigError, match=r"^DATABASE_URL") as err:
        database_url(bad, tmp_path)
    assert "s3cret" not in str(err.value) and len(str(err.value).splitlines()) == 1


async def test_a_ledger_that_cannot_be_written_is_refused_at_open(tmp_path: Path) -> None:
    await (await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())).aclose()
    read_only = f"sqlite+aiosqlite:///file:{tmp_path / 'voicerun.db'}?mode=ro&uri=true"
    with pytest.raises(LedgerConfigError, match="cannot be written: attempt to write a readonly database"):
        await Ledger.open(read_only, catalog=load_catalog())
    # A reader needs no write access.
    lg = await Ledger.open(read_only, catalog=load_catalog(), writable=False)
    assert (await lg.outbox_status()).pending == 0
    await lg.aclose()


async def test_a_reader_never_creates_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(
        LedgerMissingError, match=r"^no ledger at .*voicerun\.db: no call has been recorded here yet"
    ):
        await Ledger.open(database_url(None, tmp_path / "data"), catalog=load_catalog(), writable=False)
    assert not (tmp_path / "data").exists()


async def test_prune_deletes_only_delivered_events_older_than_the_cutoff(
    ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.write(known_call())
    (customer,) = await ledger.claim_due(limit=10, lease_s=30)
    await ledger.mark_delivered(customer.id)
    clock.advance(days=10)
    (session,) = await ledger.claim_due(limit=10, lease_s=30)
    await ledger.mark_delivered(session.id)

    assert await ledger.prune_delivered(T0 + timedelta(days=5)) == 1  # the customer step only
    status = await ledger.outbox_status()
    assert (status.pending, status.delivered) == (5, 1)
    # The call's later steps are still sent in order, and the call keeps its usage and cost.
    (stt,) = await ledger.claim_due(limit=10, lease_s=30)
    assert stt.step == "stt"
    call = await ledger.call("call-1")
    assert call is not None and call.cost_total is not None
    assert len(await ledger.usage_lines("call-1")) == 4


async def test_an_event_claimed_and_never_answered_is_in_doubt_and_a_released_one_is_not(
    ledger: Ledger, clock: FakeClock
) -> None:
    # For an API that ignores Idempotency-Key: a claim whose sender died cannot be resent.
    await ledger.write([*known_call("a"), *known_call("b")])
    a, b = await ledger.claim_due(limit=10, lease_s=30, resend_unanswered=False)
    await ledger.release([b.id])  # handed back unsent (shutdown, a deadline): not in doubt
    clock.advance(seconds=31)  # a's sender died: its claim ran out with no outcome
    (again,) = await ledger.claim_due(limit=10, lease_s=30, resend_unanswered=False)
    assert again.id == b.id
    [held] = await ledger.in_doubt()
    assert (held.id, held.call_id, held.step) == (a.id, "a", "customer")
    status = await ledger.outbox_status()
    assert (status.in_doubt, status.blocked) == (1, 6)  # a's later steps wait behind it
    assert await ledger.resolve_doubt([a.id, 12345], sent=False) == [a.id]
    clock.advance(seconds=1)
    assert [i.id for i in await ledger.claim_due(limit=10, lease_s=30)] == [a.id]
    # With an idempotent API an expired claim is simply claimed again.
    clock.advance(seconds=31)
    assert {i.id for i in await ledger.claim_due(limit=10, lease_s=30)} == {a.id, b.id}
