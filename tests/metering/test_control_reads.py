"""What the control API reads from the ledger: a tenant's calls (one, a page, the running ones),
a call's turns and usage totals, calls it opened pending and a worker adopted, and its API keys;
on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from clocks import FakeClock
from sqlalchemy import func, select, text

from metering import (
    TENANT_RULE,
    ApiKeyView,
    BillingIdentity,
    CallClosed,
    CallOpened,
    CallPage,
    CallView,
    Ledger,
    RunningStatus,
    TurnReported,
    TurnView,
    UsageLine,
    UsageReported,
    UsageTotals,
    load_catalog,
)
from metering._migrate import current_revision, downgrade, upgrade
from metering._schema import OutboxEvent

T0 = datetime(2026, 12, 15, 9, 0, tzinfo=UTC)
BILLING = BillingIdentity(agent_id="agent-7", customer_id="acme")


@pytest_asyncio.fixture
async def clock() -> FakeClock:
    return FakeClock(T0)


@pytest_asyncio.fixture
async def ledger(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    """The worker's ledger (it bills)."""
    lg = await Ledger.open(database_url, catalog=load_catalog(), worker_id="w1", billing=BILLING, clock=clock)
    try:
        yield lg
    finally:
        await lg.aclose()


@pytest_asyncio.fixture
async def api(database_url: str, ledger: Ledger, clock: FakeClock) -> AsyncIterator[Ledger]:
    """The control API's ledger on the same database (no billing: the worker queues it)."""
    lg = await Ledger.open(database_url, catalog=load_catalog(), worker_id="control-api", clock=clock)
    try:
        yield lg
    finally:
        await lg.aclose()


def opened(
    call_id: str,
    *,
    tenant: str | None = "acme",
    at: datetime = T0,
    status: RunningStatus = "active",
    workflow_slug: str = "daily-call",
    user_id: str | None = "user-1",
) -> CallOpened:
    return CallOpened(
        call_id=call_id,
        workflow_slug=workflow_slug,
        started_at=at,
        status=status,
        tenant=tenant,
        user_id=user_id,
    )


def closed(call_id: str) -> CallClosed:
    return CallClosed(
        call_id=call_id,
        status="completed",
        reason="agent_ended",
        ended_at=T0 + timedelta(hours=1),
        duration_s=60.0,
    )


def ids(page: CallPage | tuple[CallView, ...]) -> list[str]:
    return [c.id for c in (page.items if isinstance(page, CallPage) else page)]


# -- tenant-scoped reads -------------------------------------------------------------------


async def test_a_call_is_only_there_for_its_own_tenant(ledger: Ledger) -> None:
    await ledger.write(
        [opened("a1", tenant="acme"), opened("g1", tenant="globex"), opened("n1", tenant=None)]
    )
    mine = await ledger.call("a1", tenant="acme")
    assert mine is not None and mine.tenant == "acme"
    assert await ledger.call("a1", tenant="globex") is None
    assert await ledger.call("n1", tenant="acme") is None
    assert await ledger.call("ghost", tenant="acme") is None
    # Without a tenant, as before: every call.
    assert [(await ledger.call(c)) is not None for c in ("a1", "g1", "n1")] == [True, True, True]
    assert await ledger.call("a1") == mine


async def test_list_calls_pages_a_tenants_calls_newest_first(ledger: Ledger) -> None:
    await ledger.write([opened(f"a{i:02}", at=T0 + timedelta(minutes=i)) for i in range(25)])
    await ledger.write([opened(f"g{i}", tenant="globex", at=T0 + timedelta(minutes=i)) for i in range(3)])
    newest_first = [f"a{i:02}" for i in reversed(range(25))]

    pages = [await ledger.list_calls(tenant="acme", page=p, page_size=10) for p in (1, 2, 3, 4)]
    assert [(p.total, p.page, p.page_size, p.pages) for p in pages] == [
        (25, 1, 10, 3),
        (25, 2, 10, 3),
        (25, 3, 10, 3),
        (25, 4, 10, 3),
    ]
    assert [ids(p) for p in pages] == [newest_first[:10], newest_first[10:20], newest_first[20:], []]

    default = await ledger.list_calls(tenant="acme")
    assert (default.page, default.page_size, default.pages, ids(default)) == (1, 20, 2, newest_first[:20])
    globex = await ledger.list_calls(tenant="globex", page_size=100)
    assert (ids(globex), globex.total, globex.pages) == (["g2", "g1", "g0"], 3, 1)
    nobody = await ledger.list_calls(tenant="initech")
    assert (nobody.items, nobody.total, nobody.pages) == ((), 0, 0)


async def test_calls_that_started_together_are_listed_by_id(ledger: Ledger) -> None:
    await ledger.write([opened(c) for c in ("c", "a", "b")] + [opened("z", at=T0 - timedelta(seconds=1))])
    assert ids(await ledger.list_calls(tenant="acme")) == ["a", "b", "c", "z"]
    assert ids(await ledger.active_calls(tenant="acme")) == ["a", "b", "c", "z"]


async def test_list_calls_filters_and_counts_only_what_matches(ledger: Ledger) -> None:
    records = [
        opened(
            f"c{i}",
            at=T0 + timedelta(minutes=i),
            workflow_slug="daily-call" if i % 2 else "intake",
            user_id=f"user-{i % 3}",
        )
        for i in range(12)
    ]
    await ledger.write([*records, opened("other", tenant="globex", user_id="user-0")])
    await ledger.write([closed(f"c{i}") for i in range(0, 12, 4)])  # c0, c4, c8

    async def listed(**filters: object) -> tuple[list[str], int, int]:
        page = await ledger.list_calls(tenant="acme", page_size=2, **filters)  # type: ignore[arg-type]
        return ids(page), page.total, page.pages

    assert await listed(status="completed") == (["c8", "c4"], 3, 2)
    assert await listed(status="active") == (["c11", "c10"], 9, 5)
    assert await listed(workflow_slug="intake") == (["c10", "c8"], 6, 3)
    assert await listed(user_id="user-0") == (["c9", "c6"], 4, 2)
    assert await listed(workflow_slug="intake", user_id="user-0", status="active") == (["c6"], 1, 1)
    # started_after inclusive, started_before exclusive.
    window = {"started_after": T0 + timedelta(minutes=3), "started_before": T0 + timedelta(minutes=7)}
    assert await listed(**window) == (["c6", "c5"], 4, 2)
    assert ids(await ledger.list_calls(tenant="acme", page=2, page_size=2, **window)) == ["c4", "c3"]  # type: ignore[arg-type]
    assert await listed(status="failed") == ([], 0, 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"page_size": 0}, r"page_size 0 is out of range \(1-100\)"),
        ({"page_size": 101}, r"page_size 101 is out of range \(1-100\)"),
        ({"page": 0}, r"page 0 is out of range"),
        ({"status": "ringing"}, r"status 'ringing' is not a call status: one of scheduled, pending, "),
        ({"started_after": datetime(2026, 12, 15, 9)}, r"started_after 2026-12-15T09:00:00 has no time zone"),
        ({"tenant": "acme corp"}, re.escape(f"tenant 'acme corp' is not a tenant name: {TENANT_RULE}")),
    ],
)
async def test_list_calls_refuses_what_it_cannot_answer(
    ledger: Ledger, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await ledger.list_calls(**{"tenant": "acme", **arguments})  # type: ignore[arg-type]


async def test_active_calls_are_a_tenants_running_calls(ledger: Ledger) -> None:
    await ledger.write(
        [
            opened("waiting", status="pending", at=T0 + timedelta(minutes=3)),
            opened("dialling", status="connecting", at=T0 + timedelta(minutes=2)),
            opened("talking", at=T0 + timedelta(minutes=1)),
            opened("done"),
            opened("theirs", tenant="globex", at=T0 + timedelta(minutes=9)),
        ]
    )
    await ledger.write([closed("done")])
    active = await ledger.active_calls(tenant="acme")
    assert [(c.id, c.status) for c in active] == [
        ("waiting", "pending"),
        ("dialling", "connecting"),
        ("talking", "active"),
    ]
    assert ids(await ledger.active_calls(tenant="globex")) == ["theirs"]
    assert await ledger.active_calls(tenant="initech") == ()


# -- a call's turns and usage ----------------------------------------------------------------


def turn(call_id: str, n: int, **fields: Any) -> TurnReported:
    record = TurnReported(
        call_id=call_id,
        turn=n,
        agent="greeter",
        eou_delay_ms=300.0,
        stt_latency_ms=100.0 + n,
        llm_ttft_ms=250.0,
        tts_ttfb_ms=80.0,
        e2e_latency_ms=700.0,
        interrupted=False,
        at=T0 + timedelta(seconds=10 * n),
    )
    return replace(record, **fields)


async def test_call_turns_come_in_turn_order(ledger: Ledger) -> None:
    await ledger.write([opened("c1"), opened("c2")])
    await ledger.write([turn("c1", 2, agent="meals", interrupted=True), turn("c1", 0), turn("c2", 0)])
    await ledger.write([turn("c1", 1, llm_ttft_ms=None, tts_ttfb_ms=None, e2e_latency_ms=None)])
    turns = await ledger.call_turns("c1")
    assert [t.turn for t in turns] == [0, 1, 2]
    assert turns[1] == TurnView(
        turn=1,
        agent="greeter",
        eou_delay_ms=300.0,
        stt_latency_ms=101.0,
        llm_ttft_ms=None,
        tts_ttfb_ms=None,
        e2e_latency_ms=None,
        interrupted=False,
        at=T0 + timedelta(seconds=10),
    )
    assert (turns[2].agent, turns[2].interrupted) == ("meals", True)
    assert await ledger.call_turns("ghost") == ()


async def test_a_calls_detail_sums_usage_over_every_provider_and_agent(ledger: Ledger) -> None:
    lines = [
        UsageLine(
            "llm", "openai", "gpt-4o-mini", prompt_tokens=1000, completion_tokens=200, cached_tokens=300
        ),
        UsageLine("llm", "anthropic", "claude-haiku", prompt_tokens=500, completion_tokens=50),
        UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("12.345")),
        UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("0.655")),
        UsageLine("stt", "whisper", None, audio_seconds=Decimal("7.1")),
        UsageLine("tts", "polly", "neural", characters=120),
        UsageLine("tts", "elevenlabs", None, characters=80),
    ]
    await ledger.write([opened("c1"), opened("c2")])
    await ledger.write(
        [
            UsageReported(call_id="c1", seq=i, line=line, agent=f"agent-{i % 2}", at=T0)
            for i, line in enumerate(lines)
        ]
        + [UsageReported(call_id="c2", seq=0, line=lines[0], agent=None, at=T0)]
    )
    one = await ledger.call_detail("c1", tenant="acme")
    assert one is not None and one.figures.usage == UsageTotals(
        prompt_tokens=1500,
        completion_tokens=250,
        cached_tokens=300,
        tts_characters=200,
        stt_audio_seconds=Decimal("20.100"),
    )
    other = await ledger.call_detail("c2", tenant="acme")
    assert other is not None and other.figures.usage.prompt_tokens == 1000
    assert await ledger.call_detail("ghost", tenant="acme") is None


async def test_a_calls_detail_averages_its_turns_latencies_over_the_turns_that_had_them(
    ledger: Ledger,
) -> None:
    await ledger.write([opened("c1"), opened("c2")])
    await ledger.write([turn("c1", 0, llm_ttft_ms=200.0), turn("c1", 1, llm_ttft_ms=None), turn("c2", 0)])
    await ledger.write([turn("c1", 2, llm_ttft_ms=300.0, e2e_latency_ms=None)])
    detail = await ledger.call_detail("c1", tenant="acme")
    assert detail is not None and detail.call.id == "c1"
    figures = detail.figures
    assert figures.turns == 3
    assert figures.llm_ttft_ms == 250.0  # the turn without an LLM stage is not a zero
    assert figures.e2e_latency_ms == 700.0
    assert figures.usage.prompt_tokens == 0
    fresh = await ledger.call_detail("c2", tenant="acme")
    assert fresh is not None and fresh.figures.turns == 1
    await ledger.write([opened("c3")])
    empty = await ledger.call_detail("c3", tenant="acme")
    assert empty is not None and empty.figures.turns == 0 and empty.figures.e2e_latency_ms is None


async def test_a_calls_detail_is_only_its_tenants(ledger: Ledger) -> None:
    await ledger.write([opened("c1")])
    assert await ledger.call_detail("c1", tenant="globex") is None


# -- calls the control API opens before a worker runs them ---------------------------------


def api_opened(call_id: str) -> CallOpened:
    return CallOpened(
        call_id=call_id,
        workflow_slug="daily-call",
        started_at=T0,
        status="pending",
        tenant="acme",
        user_id="user-123",
        direction="web",
        metadata={"source": "mobile-app"},
    )


def worker_opened(call_id: str) -> CallOpened:
    # What a worker knows: the call, its workflow, when it took it. Nothing about who it is.
    return CallOpened(
        call_id=call_id, workflow_slug="daily-call", started_at=T0 + timedelta(seconds=3), status="connecting"
    )


async def outbox_steps(ledger: Ledger, call_id: str) -> list[str]:
    async with ledger.engine.connect() as conn:
        steps = await conn.scalars(
            select(OutboxEvent.step).where(OutboxEvent.call_id == call_id).order_by(OutboxEvent.seq)
        )
        return list(steps)


async def test_a_worker_adopts_the_call_the_api_opened_pending(api: Ledger, ledger: Ledger) -> None:
    await api.write([api_opened("c1")])
    pending = await api.call("c1", tenant="acme")
    assert pending is not None
    assert (pending.status, pending.worker_id, pending.customer_id) == ("pending", "control-api", None)
    assert await outbox_steps(ledger, "c1") == []  # the API's ledger does not bill

    await ledger.write([worker_opened("c1")])
    adopted = await ledger.call("c1", tenant="acme")
    assert adopted is not None
    assert adopted == replace(
        pending, status="connecting", status_at=T0 + timedelta(seconds=3), worker_id="w1", customer_id="acme"
    )
    assert (adopted.started_at, adopted.user_id, adopted.direction, adopted.metadata) == (
        T0,
        "user-123",
        "web",
        {"source": "mobile-app"},
    )
    async with ledger.engine.connect() as conn:
        owner = (await conn.execute(text("SELECT owner_pid FROM calls WHERE id = 'c1'"))).scalar_one()
    assert owner == ledger.process.pid
    # The worker's billing starts the call's lifecycle once, and its close follows it.
    await ledger.write([worker_opened("c1")])  # a retried batch
    await ledger.write([closed("c1")])
    assert await outbox_steps(ledger, "c1") == ["customer", "session", "indicator"]
    assert (await ledger.recover()) == []  # closed: nothing left for the worker to abandon


async def test_a_worker_adopts_in_the_same_batch_and_its_own_values_win(ledger: Ledger) -> None:
    mine = replace(worker_opened("c1"), status="active", user_id="user-999", customer_id="globex-billing")
    await ledger.write([api_opened("c1"), mine])
    view = await ledger.call("c1", tenant="acme")
    assert view is not None
    assert (view.status, view.user_id, view.customer_id, view.direction, view.started_at) == (
        "active",
        "user-999",
        "globex-billing",
        "web",
        T0,
    )
    # This ledger bills, so the pending open queued the start: it is not queued twice.
    assert await outbox_steps(ledger, "c1") == ["customer", "session"]


async def test_the_apis_open_arriving_after_the_workers_changes_nothing(api: Ledger, ledger: Ledger) -> None:
    worker = replace(worker_opened("c1"), tenant="acme", user_id="user-123")
    await ledger.write([worker])
    before = await ledger.call("c1")
    await api.write([api_opened("c1")])
    assert await ledger.call("c1") == before
    assert before is not None and (before.status, before.worker_id, before.started_at) == (
        "connecting",
        "w1",
        T0 + timedelta(seconds=3),
    )


async def test_an_open_of_a_call_past_pending_or_of_a_pending_one_again_is_ignored(
    api: Ledger, ledger: Ledger, database_url: str
) -> None:
    await api.write([api_opened("pending")])
    await api.write([replace(api_opened("pending"), user_id="someone-else")])
    await ledger.write([opened("talking"), opened("done")])
    await ledger.write([closed("done")])
    before = {c: await ledger.call(c) for c in ("pending", "talking", "done")}
    other = await Ledger.open(database_url, catalog=load_catalog(), worker_id="w2")
    try:
        await other.write([worker_opened("talking"), worker_opened("done")])
    finally:
        await other.aclose()
    assert {c: await ledger.call(c) for c in ("pending", "talking", "done")} == before
    assert before["pending"] is not None and before["pending"].user_id == "user-123"


# -- API keys --------------------------------------------------------------------------------


async def test_a_key_authenticates_its_tenant_until_revoked(ledger: Ledger, clock: FakeClock) -> None:
    new = await ledger.create_api_key("acme", "ci")
    assert re.fullmatch(r"vr_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", new.key)
    assert new.key.startswith(f"vr_{new.prefix}_") and new.key not in repr(new)
    assert (new.tenant, new.name, new.created_at) == ("acme", "ci", T0)
    assert await ledger.api_key_tenant(new.key) == "acme"
    assert await ledger.api_key_tenant(new.key + "x") is None
    assert await ledger.api_key_tenant("") is None

    clock.advance(minutes=5)
    assert await ledger.revoke_api_key(new.id, tenant="acme") is True
    assert await ledger.api_key_tenant(new.key) is None
    clock.advance(minutes=5)
    assert await ledger.revoke_api_key(new.id, tenant="acme") is True  # again: still revoked
    assert await ledger.api_keys("acme") == (
        ApiKeyView(
            id=new.id,
            tenant="acme",
            name="ci",
            prefix=new.prefix,
            created_at=T0,
            revoked_at=T0 + timedelta(minutes=5),
        ),
    )


async def test_the_ledger_stores_a_keys_hash_never_the_key(ledger: Ledger) -> None:
    new = await ledger.create_api_key("acme")
    async with ledger.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().one()
    assert row["key_hash"] == hashlib.sha256(new.key.encode()).hexdigest()
    secret = new.key.removeprefix(f"vr_{new.prefix}_")
    assert not any(isinstance(v, str) and (new.key in v or secret in v) for v in row.values())
    assert (row["id"], row["tenant"], row["name"], row["prefix"], row["revoked_at"]) == (
        new.id,
        "acme",
        "",
        new.prefix,
        None,
    )


async def test_a_tenant_cannot_revoke_or_see_another_tenants_keys(ledger: Ledger) -> None:
    acme = await ledger.create_api_key("acme", "prod")
    globex = await ledger.create_api_key("globex", "prod")
    assert acme.key != globex.key and acme.id != globex.id
    assert await ledger.revoke_api_key(acme.id, tenant="globex") is False
    assert await ledger.revoke_api_key("no-such-key", tenant="acme") is False
    assert await ledger.api_key_tenant(acme.key) == "acme"
    assert await ledger.api_key_tenant(globex.key) == "globex"
    assert [k.id for k in await ledger.api_keys("acme")] == [acme.id]
    assert [k.id for k in await ledger.api_keys("globex")] == [globex.id]
    assert await ledger.api_keys("initech") == ()


async def test_keys_are_listed_oldest_first_and_never_show_the_secret(
    ledger: Ledger, clock: FakeClock
) -> None:
    first = await ledger.create_api_key("acme", "first")
    clock.advance(seconds=1)
    second = await ledger.create_api_key("acme", "second")
    listed = await ledger.api_keys("acme")
    assert [(k.id, k.name, k.created_at, k.revoked_at) for k in listed] == [
        (first.id, "first", T0, None),
        (second.id, "second", T0 + timedelta(seconds=1), None),
    ]
    assert all(first.key not in repr(k) and second.key not in repr(k) for k in listed)


@pytest.mark.parametrize("tenant", ["", "-acme", "acme corp", "a" * 65, "acme/x", "ácme"])
async def test_tenant_names_follow_one_rule(ledger: Ledger, tenant: str) -> None:
    message = re.escape(f"tenant {tenant!r} is not a tenant name: {TENANT_RULE}")
    with pytest.raises(ValueError, match=message):
        await ledger.create_api_key(tenant)
    with pytest.raises(ValueError, match=message):
        await ledger.active_calls(tenant=tenant)
    with pytest.raises(ValueError, match=message):
        await ledger.revoke_api_key("k", tenant=tenant)


async def test_tenant_names_may_be_64_characters_of_the_allowed_ones(ledger: Ledger) -> None:
    for tenant in ("a", "0", "Acme.Health_EU-1", "a" * 64):
        new = await ledger.create_api_key(tenant)
        assert await ledger.api_key_tenant(new.key) == tenant


async def test_a_key_name_is_at_most_200_characters(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="API key name is 201 characters long: at most 200"):
        await ledger.create_api_key("acme", "n" * 201)


async def test_the_0004_migration_goes_down_and_up_keeping_every_call(ledger: Ledger) -> None:
    await ledger.write([opened("c1"), api_opened("c2")])
    await ledger.create_api_key("acme")
    async with ledger.engine.begin() as conn:
        await conn.run_sync(downgrade, "0003")
    async with ledger.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == "0003"
        assert await conn.scalar(select(func.count()).select_from(text("calls"))) == 2
        tables = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
        indexes = await conn.run_sync(lambda c: {i["name"] for i in c.dialect.get_indexes(c, "calls")})
    assert "api_keys" not in tables
    assert not {"ix_calls_tenant_started_at", "ix_calls_tenant_status"} & indexes
    async with ledger.engine.begin() as conn:
        await conn.run_sync(upgrade)
    async with ledger.engine.connect() as conn:
        indexes = await conn.run_sync(lambda c: {i["name"] for i in c.dialect.get_indexes(c, "calls")})
    assert {"ix_calls_tenant_started_at", "ix_calls_tenant_status"} <= indexes
    assert ids(await ledger.list_calls(tenant="acme")) == ["c1", "c2"]
    assert await ledger.api_keys("acme") == ()  # the table came back empty


async def test_a_read_survives_the_server_dropping_the_pools_connections(
    ledger: Ledger, database_url: str
) -> None:
    """The reads pool has no pre-ping: a connection PostgreSQL closed (a restart, a failover)
    fails its read, which is retried once on a fresh connection rather than answered 500."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server to drop connections")
    import asyncpg
    from sqlalchemy.engine import make_url

    await ledger.write([opened("c1")])
    assert await ledger.call_detail("c1", tenant="acme") is not None  # a pooled connection now
    url = make_url(database_url)
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            url.database,
        )
    finally:
        await admin.close()
    assert dropped >= 1
    detail = await ledger.call_detail("c1", tenant="acme")
    assert detail is not None and detail.call.id == "c1"
