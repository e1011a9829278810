"""Call webhooks, queued in the ledger's outbox and delivered to real receivers on 127.0.0.1,
on SQLite and PostgreSQL.

Nothing sleeps to synchronise: tests drive the deliverer's passes (`deliver_due`) with a clock
that moves only when told, or wait on the receiver's own event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from clocks import FakeClock
from sqlalchemy import func, select, text

from metering import (
    BillingIdentity,
    CallClosed,
    CallOpened,
    CallProgressed,
    Ledger,
    Record,
    TurnReported,
    UsageLine,
    UsageReported,
    WebhookDeliverer,
    load_catalog,
    sign_webhook,
    utcnow,
)
from metering._migrate import current_revision, downgrade, upgrade
from metering._schema import OutboxEvent
from tests.fakes.webhook_receiver import documented_verify

LIFECYCLE = ["call.initiating", "call.in_progress", "call.completed", "call.report"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class Receiver:
    """A webhook receiver: answers each request with the next scripted status (then 200)."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    requests: list[tuple[int, Received]] = field(default_factory=list)
    wanted: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        status = self.script.pop(0) if self.script else 200
        got = Received(request.path, dict(request.headers), await request.read())
        self.requests.append((status, got))
        if self.wanted and len(self.delivered()) >= self.wanted:
            self.enough.set()
        return web.Response(status=status, text="ok")

    def delivered(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r.event for s, r in self.requests if 200 <= s < 300 and path in (None, r.path)]

    def types(self, path: str | None = None) -> list[str]:
        return [e["type"] for e in self.delivered(path)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rx.url = f"http://127.0.0.1:{port}"
    try:
        yield rx
    finally:
        await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    # Now, to the second (receivers check the timestamp's age), then moved only by the tests.
    return FakeClock(utcnow().replace(microsecond=0))


@pytest.fixture
async def ledger(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(database_url, catalog=load_catalog(), clock=clock)
    try:
        yield lg
    finally:
        await lg.aclose()


@pytest.fixture
async def deliverer(ledger: Ledger) -> AsyncIterator[WebhookDeliverer]:
    d = WebhookDeliverer(ledger, backoff_base_s=1.0, backoff_max_s=4.0, max_attempts=5, request_timeout_s=5.0)
    try:
        yield d
    finally:
        await d.aclose()


def a_call(
    call_id: str, clock: FakeClock, *, tenant: str = "acme", webhook_url: str | None = None
) -> Iterator[list[Record]]:
    """A call's records in the batches a worker writes them: opened pending by the API, active,
    its usage and turns, closed."""
    t0 = clock()
    yield [
        CallOpened(
            call_id=call_id,
            workflow_slug="front-desk",
            started_at=t0,
            status="pending",
            tenant=tenant,
            direction="outbound",
            metadata={"order": 42},
            webhook_url=webhook_url,
        )
    ]
    yield [CallProgressed(call_id=call_id, status="active", at=t0 + timedelta(seconds=2))]
    yield [
        UsageReported(
            call_id=call_id,
            seq=0,
            line=UsageLine("llm", "openai", "gpt-4o-mini", prompt_tokens=1200, completion_tokens=300),
            agent="reception",
            at=t0 + timedelta(seconds=20),
        ),
        *(
            TurnReported(
                call_id=call_id,
                turn=i,
                agent="reception",
                eou_delay_ms=200.0,
                stt_latency_ms=100.0,
                llm_ttft_ms=300.0 + i,
                tts_ttfb_ms=150.0,
                e2e_latency_ms=700.0 + 100 * i,
                interrupted=i == 1,
                at=t0 + timedelta(seconds=10 * i),
            )
            for i in range(3)
        ),
        CallClosed(
            call_id=call_id,
            status="completed",
            reason="agent_ended",
            ended_at=t0 + timedelta(seconds=90),
            duration_s=90.0,
            transcript=({"role": "user", "content": "Hi, I'd like to book a table."},),
            agent_history=("reception",),
        ),
    ]


async def write_call(ledger: Ledger, call_id: str, clock: FakeClock, **kwargs: Any) -> None:
    for batch in a_call(call_id, clock, **kwargs):
        await ledger.write(batch)


# -- delivery -------------------------------------------------------------------------------


async def test_a_call_reaches_an_endpoint_in_order_signed_as_documented(
    ledger: Ledger, deliverer: WebhookDeliverer, receiver: Receiver, clock: FakeClock
) -> None:
    endpoint = await ledger.create_webhook_endpoint("acme", receiver.url + "/hooks")
    await write_call(ledger, "c1", clock)

    assert await deliverer.deliver_due() == 4

    verify = documented_verify()
    assert receiver.types() == LIFECYCLE
    for _, got in receiver.requests:
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["Webhook-Id"] == got.event["id"]
        assert got.headers["Webhook-Timestamp"] == str(int(clock().timestamp()))
        assert verify(endpoint.secret, got.headers, got.body)
        assert not verify(endpoint.secret, got.headers, got.body + b" ")
        assert not verify("whsec_another", got.headers, got.body)
        assert got.headers["Webhook-Signature"] == sign_webhook(
            endpoint.secret, int(got.headers["Webhook-Timestamp"]), got.body
        )
    initiating, in_progress, completed, report = receiver.delivered()
    assert {e["call_id"] for e in receiver.delivered()} == {"c1"}
    assert len({e["id"] for e in receiver.delivered()}) == 4
    assert initiating["data"]["status"] == "pending"
    assert initiating["data"]["metadata"] == {"order": 42}
    assert in_progress["created_at"] == (clock() + timedelta(seconds=2)).isoformat()
    assert completed["data"] | {"ended_reason": "agent_ended", "duration_s": 90.0} == completed["data"]
    data = report["data"]
    assert data["transcript"] == [{"role": "user", "content": "Hi, I'd like to book a table."}]
    assert data["agent_history"] == ["reception"]
    assert data["metrics"]["turns"] == 3
    assert data["metrics"]["interrupted_turns"] == 1
    assert data["metrics"]["e2e_latency_ms"] == {"mean": 800.0, "p50": 800.0, "p95": 900.0}
    assert data["cost"]["currency"] == "USD"
    assert Decimal(str(data["cost"]["total"])) > 0
    assert data["cost"]["breakdown"]["language_model"]["provider"] == "openai"
    status = await ledger.outbox_status(kind="webhook")
    assert (status.pending, status.delivered, status.dead) == (0, 4, 0)


async def test_a_calls_own_webhook_url_is_signed_with_the_tenants_secret(
    ledger: Ledger, deliverer: WebhookDeliverer, receiver: Receiver, clock: FakeClock
) -> None:
    await write_call(ledger, "c1", clock, webhook_url=receiver.url + "/mine?token=t0k3n")
    await deliverer.deliver_due()

    assert receiver.types("/mine") == LIFECYCLE
    secret = await ledger.tenant_webhook_secret("acme")
    assert secret.startswith("whsec_") and secret == await ledger.tenant_webhook_secret("acme")
    verify = documented_verify()
    assert all(verify(secret, got.headers, got.body) for _, got in receiver.requests)


async def test_a_receiver_that_is_down_a_while_gets_every_event_in_order_per_call(
    ledger: Ledger, deliverer: WebhookDeliverer, receiver: Receiver, clock: FakeClock
) -> None:
    await ledger.create_webhook_endpoint("acme", receiver.url + "/hooks")
    receiver.script = [500] * 5  # down for the first five requests
    batches = [list(a_call(call_id, clock)) for call_id in ("c1", "c2")]
    for i in range(3):  # the two calls' records interleaved
        await ledger.write(batches[0][i])
        await ledger.write(batches[1][i])

    passes = 0
    while len(receiver.delivered()) < 8:
        await deliverer.deliver_due()
        clock.advance(seconds=deliverer.backoff_max_s)  # every retry is due by then
        passes += 1
        assert passes < 10

    failed_ids = {r.event["id"] for s, r in receiver.requests if s == 500}
    delivered = receiver.delivered()
    assert len(failed_ids) == 2  # each call's first event, until the receiver came back
    assert failed_ids <= {e["id"] for e in delivered}  # resent with the same id: the dedupe key
    assert len({e["id"] for e in delivered}) == 8  # each event delivered once
    for call_id in ("c1", "c2"):
        assert [e["type"] for e in delivered if e["call_id"] == call_id] == LIFECYCLE
    assert {r.event["id"] for _, r in receiver.requests} == {e["id"] for e in delivered}


async def test_an_event_that_keeps_failing_becomes_a_dead_letter_and_holds_its_call_back(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    await ledger.create_webhook_endpoint("acme", receiver.url + "/hooks")
    deliverer = WebhookDeliverer(ledger, backoff_base_s=1.0, backoff_max_s=2.0, max_attempts=2)
    try:
        receiver.script = [503, 503]
        await write_call(ledger, "c1", clock)
        await deliverer.deliver_due()
        clock.advance(seconds=2)
        await deliverer.deliver_due()
        status = await ledger.outbox_status(kind="webhook")
        assert (status.dead, status.blocked, status.delivered) == (1, 3, 0)
        assert [e.step for e, _ in await ledger.dead_letters()] == ["call.initiating"]

        await write_call(ledger, "c2", clock)  # another call is not held up
        await deliverer.deliver_due()
        assert receiver.types() == LIFECYCLE

        assert await ledger.retry_dead() == 1
        await deliverer.deliver_due()
        assert [e["type"] for e in receiver.delivered() if e["call_id"] == "c1"] == LIFECYCLE
    finally:
        await deliverer.aclose()


async def test_410_disables_the_endpoint(
    ledger: Ledger, deliverer: WebhookDeliverer, receiver: Receiver, clock: FakeClock
) -> None:
    gone = await ledger.create_webhook_endpoint("acme", receiver.url + "/gone")
    receiver.script = [410]
    await write_call(ledger, "c1", clock)
    await deliverer.deliver_due()

    assert len(receiver.requests) == 1
    (view,) = await ledger.webhook_endpoints("acme")
    assert view.id == gone.id and view.disabled_at == clock()
    status = await ledger.outbox_status(kind="webhook")
    assert (status.pending, status.blocked) == (0, 0)  # the rest cancelled, not waiting forever
    await write_call(ledger, "c2", clock)
    await deliverer.deliver_due()
    assert len(receiver.requests) == 1  # nothing more queued for it


async def test_another_tenants_endpoint_gets_nothing(
    ledger: Ledger, deliverer: WebhookDeliverer, receiver: Receiver, clock: FakeClock
) -> None:
    await ledger.create_webhook_endpoint("acme", receiver.url + "/acme")
    await ledger.create_webhook_endpoint("globex", receiver.url + "/globex", events=["call.report"])
    await write_call(ledger, "c1", clock, tenant="acme")
    await write_call(ledger, "g1", clock, tenant="globex")
    await deliverer.deliver_due()

    assert {e["call_id"] for e in receiver.delivered("/acme")} == {"c1"}
    assert receiver.types("/globex") == ["call.report"]  # its filter, its calls only
    assert {e["call_id"] for e in receiver.delivered("/globex")} == {"g1"}


async def test_run_delivers_until_stopped(ledger: Ledger, receiver: Receiver, clock: FakeClock) -> None:
    await ledger.create_webhook_endpoint("acme", receiver.url + "/hooks")
    await write_call(ledger, "c1", clock)
    receiver.wanted = 4
    deliverer = WebhookDeliverer(ledger, idle_wait_s=0.2)
    stop = asyncio.Event()
    try:
        async with asyncio.timeout(10), asyncio.TaskGroup() as group:
            group.create_task(deliverer.run(stop))
            await receiver.enough.wait()
            stop.set()
    finally:
        await deliverer.aclose()
    assert receiver.types() == LIFECYCLE


# -- the outbox it shares with the usage exporter ----------------------------------------------


async def test_the_usage_exporter_sees_only_its_own_events(
    database_url: str, receiver: Receiver, clock: FakeClock
) -> None:
    billing = BillingIdentity(agent_id="agent-7", customer_id="cust-42")
    lg = await Ledger.open(database_url, catalog=load_catalog(), clock=clock, billing=billing)
    try:
        await lg.create_webhook_endpoint("acme", receiver.url + "/hooks")
        await write_call(lg, "c1", clock)
        usage = await lg.claim_due(limit=100, lease_s=30)
        assert [i.step for i in usage] == ["customer"]  # its lane's first step, not a webhook
        status = await lg.outbox_status()
        assert (status.pending, status.delivered) == (4, 0)  # customer, session, llm, indicator
        for item in usage:
            await lg.mark_delivered(item.id)
        assert [i.step for i in await lg.claim_due(limit=100, lease_s=30)] == ["session"]
        assert len(await lg.claim_webhooks(limit=100, lease_s=30)) == 1
    finally:
        await lg.aclose()


async def test_the_0005_migration_goes_down_and_up_keeping_the_usage_outbox(
    database_url: str, clock: FakeClock, receiver: Receiver
) -> None:
    billing = BillingIdentity(agent_id="agent-7", customer_id="cust-42")
    lg = await Ledger.open(database_url, catalog=load_catalog(), clock=clock, billing=billing)
    try:
        await lg.create_webhook_endpoint("acme", receiver.url + "/hooks")
        await write_call(lg, "c1", clock)
        async with lg.engine.begin() as conn:
            await conn.run_sync(downgrade, "0004")
        async with lg.engine.connect() as conn:
            assert await conn.run_sync(current_revision) == "0004"
            assert await conn.scalar(text("SELECT count(*) FROM usage_outbox")) == 4
            tables = await conn.run_sync(lambda c: set(c.dialect.get_table_names(c)))
        assert not {"webhook_endpoints", "webhook_secrets"} & tables
        async with lg.engine.begin() as conn:
            await conn.run_sync(upgrade)
        async with lg.engine.connect() as conn:
            kinds = (
                await conn.execute(select(OutboxEvent.kind, func.count()).group_by(OutboxEvent.kind))
            ).all()
        assert dict(kinds) == {"usage": 4}
        assert await lg.webhook_endpoints("acme") == ()
    finally:
        await lg.aclose()


# -- endpoints ------------------------------------------------------------------------------


async def test_endpoints_are_listed_without_secrets_and_deleted_by_their_tenant_only(
    ledger: Ledger, deliverer: WebhookDeliverer, receiver: Receiver, clock: FakeClock
) -> None:
    new = await ledger.create_webhook_endpoint("acme", receiver.url + "/a", events=["call.completed"])
    assert new.secret.startswith("whsec_") and new.secret not in repr(new)
    assert new.events == ("call.completed",)
    (view,) = await ledger.webhook_endpoints("acme")
    assert (view.id, view.url, view.events, view.disabled_at) == (new.id, new.url, new.events, None)
    assert not hasattr(view, "secret")
    assert await ledger.webhook_endpoints("globex") == ()

    await ledger.write(next(a_call("c1", clock)))  # queued for it: call.initiating is filtered out
    assert await ledger.delete_webhook_endpoint(new.id, tenant="globex") is False
    assert await ledger.delete_webhook_endpoint(new.id, tenant="acme") is True
    assert await ledger.delete_webhook_endpoint(new.id, tenant="acme") is False
    assert await ledger.webhook_endpoints("acme") == ()
    await deliverer.deliver_due()
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "events"),
    [("ftp://example.com/x", None), ("not a url", None), ("https://example.com", ["call.exploded"])],
)
async def test_a_malformed_endpoint_is_refused(ledger: Ledger, url: str, events: list[str] | None) -> None:
    with pytest.raises(ValueError, match="webhook"):
        await ledger.create_webhook_endpoint("acme", url, events)
