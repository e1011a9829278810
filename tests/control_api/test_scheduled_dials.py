"""Scheduled dials (`POST /calls/dial` with `scheduled_at`) on SQLite and PostgreSQL: stored,
then dialled by whichever API process holds the schedule lease, through LiveKit's Twirp APIs
answered by the fake server (which records the protobuf requests).

Time is a FakeClock shared by the API and its scheduler (both read the ledger's clock): tests move
it and drive the scheduler's passes (`run_once`), or wait on the fake server's own events. Nothing
sleeps, and nothing depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select, text, update

from control_api import SCHEDULE_LEASE, DialScheduler, LiveKitCalls, LiveKitConfig, LocalCounter, RateLimiter
from control_api import create_app as create_api
from control_api._models import Status
from metering import CALL_STATUSES, Ledger, load_catalog
from metering._migrate import current_revision, downgrade, upgrade
from metering._schema import Call, OutboxEvent
from tests.fakes.livekit_server import FakeLiveKitServer
from tests.metering.clocks import FakeClock
from workflows import WorkflowRegistry, load_workflow_text

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE_S = 30.0
HANG_S = 60  # a safety net for a broken build, not a synchronisation
WORKFLOW = """
version: 1
slug: reminders
start: host
variables:
  name: {type: string, required: true}
agents:
  host:
    instructions: Remind {{user.name}}.
"""


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def dial_body(at: datetime | str | None, **more: Any) -> dict[str, Any]:
    body = {
        "workflow_slug": "reminders", "to_number": "+14155550123", "from_number": "+14155550100",
        "user_data": {"name": "Ada"}, "metadata": {"k": 1}, "max_duration": 120, "recording": True, **more,
    }  # fmt: skip
    if at is not None:
        body["scheduled_at"] = iso(at) if isinstance(at, datetime) else at
    return body


@dataclass
class Node:
    """One `voicerun api` process: its ledger, app and dial scheduler."""

    ledger: Ledger
    scheduler: DialScheduler
    base: str


@dataclass
class World:
    database_url: str
    lk: FakeLiveKitServer
    clock: FakeClock
    http: aiohttp.ClientSession
    key: str = ""
    nodes: list[Node] = field(default_factory=list)
    _closers: list[Any] = field(default_factory=list)

    async def node(self, name: str, *, clock: FakeClock | None = None, **options: Any) -> Node:
        ledger = await Ledger.open(self.database_url, catalog=load_catalog(), clock=clock or self.clock)
        livekit = LiveKitCalls(
            LiveKitConfig(
                url=self.lk.url, api_key=self.lk.api_key, api_secret=self.lk.api_secret, sip_trunk_id="ST_out"
            )
        )
        scheduler = DialScheduler(ledger, livekit, holder=name, lease_s=LEASE_S, idle_wait_s=5.0, **options)
        workflow = load_workflow_text(WORKFLOW)
        app = create_api(
            ledger,
            WorkflowRegistry({workflow.slug: (workflow, Path("r.yaml"))}),
            livekit,
            limiter=RateLimiter(
                LocalCounter(), dict.fromkeys(("dial", "create", "status", "list", "other"), 10**6)
            ),
            dial_scheduled=scheduler.wake,
        )
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        if not self.key:
            self.key = (await ledger.create_api_key("acme")).key
        self._closers += [server.close, livekit.aclose, ledger.aclose]
        node = Node(ledger, scheduler, f"http://127.0.0.1:{server.port}")
        self.nodes.append(node)
        return node

    async def req(self, node: Node, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with self.http.request(method, node.base + path, headers=headers, **kw) as r:
            body = await r.text()
            return r.status, (json.loads(body) if body else None)

    async def schedule(self, node: Node, at: datetime, **more: Any) -> str:
        status, body = await self.req(node, "POST", "/api/v1/calls/dial", json=dial_body(at, **more))
        assert status == 201, body
        assert (body["status"], body["scheduled_at"]) == ("scheduled", iso(at))
        call_id: str = body["call_id"]
        return call_id

    async def call(self, node: Node, call_id: str) -> dict[str, Any]:
        status, body = await self.req(node, "GET", f"/api/v1/calls/{call_id}")
        assert status == 200, body
        return dict(body)

    def dialled_rooms(self) -> list[str]:
        return [c.request.room_name for c in self.lk.calls_to("CreateSIPParticipant")]

    async def webhook_steps(self, node: Node, call_id: str) -> list[str]:
        async with node.ledger.engine.connect() as conn:
            rows = await conn.execute(
                select(OutboxEvent.step)
                .where(OutboxEvent.call_id == call_id, OutboxEvent.kind == "webhook")
                .order_by(OutboxEvent.seq)
            )
            return [step for (step,) in rows]

    async def aclose(self) -> None:
        for close in reversed(self._closers):
            await close()


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    lk = FakeLiveKitServer()
    await lk.start()
    async with aiohttp.ClientSession() as http:
        w = World(database_url, lk, FakeClock(T0), http)
        try:
            yield w
        finally:
            await w.aclose()
            await lk.aclose()


def test_the_apis_statuses_are_the_ledgers() -> None:
    assert get_args(Status) == CALL_STATUSES


async def test_a_scheduled_dial_is_stored_then_dialled_once_when_its_time_comes(world: World) -> None:
    api = await world.node("a")
    at = T0 + timedelta(minutes=10)
    call_id = await world.schedule(api, at)
    assert not world.lk.twirp_calls  # nothing goes to LiveKit before its time
    call = await world.call(api, call_id)
    assert {k: call[k] for k in ("status", "scheduled_at", "started_at", "created_at", "ended_at")} == {
        "status": "scheduled", "scheduled_at": iso(at), "started_at": iso(T0), "created_at": iso(T0),
        "ended_at": None,
    }  # fmt: skip
    assert call["direction"] == "outbound" and call["current_agent"] is None
    _, page = await world.req(api, "GET", "/api/v1/calls?status=scheduled")
    assert [(c["id"], c["scheduled_at"]) for c in page["items"]] == [(call_id, iso(at))]
    assert (await world.req(api, "GET", "/api/v1/calls/active"))[1] == []

    first = await api.scheduler.run_once()
    assert first.held and first.dialled == [] and first.wait_s == 5.0
    world.clock.advance(minutes=9, seconds=59)
    assert (await api.scheduler.run_once()).dialled == []
    assert not world.lk.twirp_calls

    world.clock.advance(seconds=1)
    assert (await api.scheduler.run_once()).dialled == [call_id]
    (sip,) = world.lk.calls_to("CreateSIPParticipant")
    req = sip.request
    assert (req.sip_trunk_id, req.sip_call_to, req.sip_number, req.room_name) == (
        "ST_out", "+14155550123", "+14155550100", f"call-{call_id}",
    )  # fmt: skip
    assert req.max_call_duration.seconds == 120
    call = await world.call(api, call_id)
    assert (call["status"], call["started_at"], call["scheduled_at"], call["created_at"]) == (
        "pending", iso(at), iso(at), iso(T0),
    )  # fmt: skip

    # The same job as an immediate dial's: one code path starts both.
    status, now = await world.req(api, "POST", "/api/v1/calls/dial", json=dial_body(None))
    assert status == 201 and (now["status"], now["scheduled_at"]) == ("pending", None)
    scheduled_job, immediate_job = (
        json.loads(c.request.metadata) for c in world.lk.calls_to("CreateDispatch")
    )
    assert scheduled_job.pop("call_id") == call_id and immediate_job.pop("call_id") == now["call_id"]
    assert scheduled_job == immediate_job

    world.clock.advance(hours=1)
    assert (await api.scheduler.run_once()).dialled == []
    assert world.dialled_rooms() == [f"call-{call_id}", f"call-{now['call_id']}"]


async def test_two_api_processes_dial_each_due_call_exactly_once(world: World) -> None:
    a, b = await world.node("a"), await world.node("b")
    ids = [await world.schedule(node, T0 + timedelta(minutes=1)) for node in (a, b, a, b, a)]
    world.clock.advance(minutes=1)
    passes = await asyncio.gather(a.scheduler.run_once(), b.scheduler.run_once())
    assert sorted(p.held for p in passes) == [False, True]  # one lease holder
    assert sorted(passes[0].dialled + passes[1].dialled) == sorted(ids)
    assert sorted(world.dialled_rooms()) == sorted(f"call-{i}" for i in ids)
    world.clock.advance(minutes=1)
    await asyncio.gather(a.scheduler.run_once(), b.scheduler.run_once())
    assert len(world.dialled_rooms()) == len(ids)


async def test_each_call_is_claimed_once_even_when_the_lease_is_misjudged(world: World) -> None:
    # b's clock runs a lease ahead of a's: it takes a's lease for expired while a still dials.
    a = await world.node("a")
    b = await world.node("b", clock=FakeClock(T0 + timedelta(seconds=2 * LEASE_S)))
    ids = [await world.schedule(a, T0 + timedelta(seconds=1)) for _ in range(12)]
    world.clock.advance(seconds=1)
    a.scheduler.batch = b.scheduler.batch = 1  # many small claims, interleaved
    passes = await asyncio.gather(a.scheduler.run_once(), b.scheduler.run_once())
    assert passes[1].held  # b believes it holds the lease, whatever a believed
    dialled = passes[0].dialled + passes[1].dialled
    assert sorted(dialled) == sorted(ids)
    # And the claim itself, raced directly: every call is handed out once.
    more = [await world.schedule(a, T0 + timedelta(seconds=2)) for _ in range(12)]
    world.clock.advance(seconds=1)
    claims = await asyncio.gather(*(node.ledger.claim_scheduled(limit=5) for node in (a, b, a, b, a, b)))
    claimed = [d.call_id for c in claims for d in c.due]
    assert sorted(claimed) == sorted(more)


async def test_a_crashed_holder_is_succeeded_once_its_lease_expires(world: World) -> None:
    a, b = await world.node("a"), await world.node("b")
    call_id = await world.schedule(b, T0 + timedelta(seconds=10))
    assert (await a.scheduler.run_once()).held
    # a crashes: it never looks again and never gives its lease back.
    world.clock.advance(seconds=10)
    assert not (await b.scheduler.run_once()).held
    assert not world.lk.twirp_calls
    world.clock.advance(seconds=LEASE_S - 10)  # a's lease ends now
    taken = await b.scheduler.run_once()
    assert taken.held and taken.dialled == [call_id]
    assert await b.ledger.lease_holder(SCHEDULE_LEASE) == ("b", world.clock() + timedelta(seconds=LEASE_S))
    assert world.dialled_rooms() == [f"call-{call_id}"]


async def test_a_restarted_api_dials_the_calls_stored_before_it_stopped(world: World) -> None:
    a = await world.node("a")
    soon = await world.schedule(a, T0 + timedelta(minutes=5))
    later = await world.schedule(a, T0 + timedelta(minutes=50))
    assert (await a.scheduler.run_once()).held
    await a.scheduler.release()  # a clean stop gives the lease back
    await a.ledger.aclose()

    world.clock.advance(minutes=5)
    b = await world.node("b")  # a new process on the same database
    first = await b.scheduler.run_once()
    assert first.held and first.dialled == [soon]  # no waiting out a's lease
    assert first.wait_s == 5.0
    world.clock.advance(minutes=45)
    assert (await b.scheduler.run_once()).dialled == [later]
    assert world.dialled_rooms() == [f"call-{soon}", f"call-{later}"]


async def test_calls_overdue_at_startup_ring_unless_they_are_too_late(world: World) -> None:
    a = await world.node("a")
    stale = await world.schedule(a, T0 + timedelta(minutes=1), webhook_url="https://example.test/hook")
    late = await world.schedule(a, T0 + timedelta(minutes=10))
    await a.ledger.aclose()  # the API is down ...
    world.clock.advance(hours=1, minutes=1, seconds=1)  # ... until stale is more than an hour late
    b = await world.node("b")
    done = await b.scheduler.run_once()
    assert (done.missed, done.dialled) == ([stale], [late])
    assert world.dialled_rooms() == [f"call-{late}"]
    call = await world.call(b, stale)
    assert (call["status"], call["ended_reason"], call["started_at"]) == ("failed", "missed", iso(T0))
    # Its receiver hears why it never rang, as for any call that failed.
    assert await world.webhook_steps(b, stale) == ["call.failed", "call.report"]


async def test_the_missed_limit_can_be_lifted(world: World) -> None:
    a = await world.node("a", missed_after=None)
    call_id = await world.schedule(a, T0 + timedelta(minutes=1))
    world.clock.advance(days=2)
    assert (await a.scheduler.run_once()).dialled == [call_id]


async def test_cancelling_a_scheduled_call_means_it_never_dials(world: World) -> None:
    a = await world.node("a")
    call_id = await world.schedule(a, T0 + timedelta(minutes=10), webhook_url="https://example.test/hook")
    world.clock.advance(minutes=3)
    status, ended = await world.req(a, "POST", f"/api/v1/calls/{call_id}/end")
    assert (status, ended) == (200, {"id": call_id, "status": "cancelled", "ended_reason": "api"})
    assert await world.req(a, "POST", f"/api/v1/calls/{call_id}/end") == (200, ended)  # idempotent
    assert not world.lk.twirp_calls  # there was nothing in LiveKit to end
    call = await world.call(a, call_id)
    assert (call["ended_at"], call["duration_seconds"], call["scheduled_at"]) == (
        iso(T0 + timedelta(minutes=3)), 0.0, iso(T0 + timedelta(minutes=10)),
    )  # fmt: skip
    _, page = await world.req(a, "GET", "/api/v1/calls?status=cancelled")
    assert [c["id"] for c in page["items"]] == [call_id]
    world.clock.advance(hours=1)
    assert (await a.scheduler.run_once()).dialled == []
    assert not world.lk.twirp_calls
    assert await world.webhook_steps(a, call_id) == []  # no receiver ever heard of it


async def test_a_call_ended_while_it_is_dialled_is_hung_up(world: World) -> None:
    a = await world.node("a")
    call_id = await world.schedule(a, T0 + timedelta(minutes=1))
    world.clock.advance(minutes=1)
    (due,) = (await a.ledger.claim_scheduled(limit=10)).due  # the scheduler's claim ...
    status, ended = await world.req(a, "POST", f"/api/v1/calls/{call_id}/end")  # ... then POST /end
    assert (status, ended["status"], ended["ended_reason"]) == (200, "completed", "api")
    assert await a.scheduler._dial(due) == "dialled"  # ... then LiveKit answers the dial
    room = f"call-{call_id}"
    assert world.dialled_rooms() == [room] and room not in world.lk.rooms  # hung up at once
    assert [r.name for r in world.lk.deleted_rooms] == [room]


@pytest.mark.parametrize(
    ("at", "message"),
    [
        (iso(T0 - timedelta(seconds=1)), "must be in the future"),
        (iso(T0), "must be in the future"),
        ("2026-03-02T09:10:00", "timezone"),  # naive
        (iso(T0 + timedelta(days=30, seconds=1)), "at most 30 days ahead"),
        ("in ten minutes", "datetime"),
        (1772442600, "ISO 8601"),  # a number is not a date-time
    ],
)
async def test_a_bad_schedule_is_refused_with_the_field_named(world: World, at: Any, message: str) -> None:
    a = await world.node("a")
    status, body = await world.req(a, "POST", "/api/v1/calls/dial", json=dial_body(at))
    assert status == 422 and body["error"] == "invalid request", body
    (detail,) = body["details"]
    assert detail["field"] == "scheduled_at" and message in detail["message"], detail
    assert (await world.req(a, "GET", "/api/v1/calls"))[1]["total"] == 0
    assert not world.lk.twirp_calls


async def test_a_schedule_at_the_horizon_and_in_any_zone_is_taken(world: World) -> None:
    a = await world.node("a")
    horizon = await world.schedule(a, T0 + timedelta(days=30))
    status, body = await world.req(
        a, "POST", "/api/v1/calls/dial", json=dial_body("2026-03-02T11:30:00+02:00")
    )  # 09:30 UTC
    assert status == 201 and body["scheduled_at"] == "2026-03-02T09:30:00Z"
    assert (await world.call(a, horizon))["scheduled_at"] == iso(T0 + timedelta(days=30))


async def test_a_livekit_failure_fails_the_scheduled_call_like_an_immediate_dial(world: World) -> None:
    a = await world.node("a")
    hook = "https://example.test/hook"
    call_id = await world.schedule(a, T0 + timedelta(minutes=1), webhook_url=hook)
    world.clock.advance(minutes=1)
    world.lk.fail_next("CreateSIPParticipant", "unavailable", "no SIP trunk answers")
    done = await a.scheduler.run_once()
    assert (done.dialled, done.failed) == ([], [call_id])
    call = await world.call(a, call_id)
    assert call["status"] == "failed" and call["ended_reason"].startswith("livekit: ")
    assert "no SIP trunk answers" in call["ended_reason"]
    world.lk.fail_next("CreateSIPParticipant", "unavailable", "no SIP trunk answers")
    status, _ = await world.req(a, "POST", "/api/v1/calls/dial", json=dial_body(None, webhook_url=hook))
    assert status == 502
    (immediate,) = [c for c in (await world.req(a, "GET", "/api/v1/calls"))[1]["items"] if c["id"] != call_id]
    steps = ["call.initiating", "call.failed", "call.report"]
    assert await world.webhook_steps(a, call_id) == await world.webhook_steps(a, immediate["id"]) == steps
    world.clock.advance(minutes=1)
    assert (await a.scheduler.run_once()).failed == []  # failed once, never retried


async def test_the_scheduler_runs_beside_the_api_and_gives_its_lease_back(world: World) -> None:
    a = await world.node("a")
    stop = asyncio.Event()
    running = asyncio.create_task(a.scheduler.run(stop))
    try:
        call_id = await world.schedule(a, T0 + timedelta(minutes=1))  # wakes the scheduler
        world.clock.advance(minutes=1)
        a.scheduler.wake()
        async with asyncio.timeout(HANG_S):
            await world.lk.wait_for(lambda: bool(world.lk.calls_to("CreateSIPParticipant")))
        assert world.dialled_rooms() == [f"call-{call_id}"]
    finally:
        stop.set()
        await running
    assert await a.ledger.lease_holder(SCHEDULE_LEASE) == ("a", world.clock())  # released: expires now
    b = await world.node("b")
    assert (await b.scheduler.run_once()).held


async def test_a_scheduled_call_is_no_orphan_when_its_process_dies(world: World) -> None:
    a = await world.node("a")
    call_id = await world.schedule(a, T0 + timedelta(hours=2))
    async with a.ledger.engine.begin() as conn:  # the process that scheduled it is gone
        await conn.execute(update(Call).where(Call.id == call_id).values(owner_started=1))
    assert await a.ledger.recover_orphans() == []
    assert (await world.call(a, call_id))["status"] == "scheduled"


async def test_the_0008_migration_goes_down_and_up(world: World) -> None:
    a = await world.node("a")
    waiting = await world.schedule(a, T0 + timedelta(hours=1))
    cancelled = await world.schedule(a, T0 + timedelta(hours=1))
    await world.req(a, "POST", f"/api/v1/calls/{cancelled}/end")
    async with a.ledger.engine.begin() as conn:
        await conn.run_sync(downgrade, "0007")
    async with a.ledger.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == "0007"
        rows = dict((await conn.execute(text("SELECT id, status FROM calls"))).all())
        tables = await conn.run_sync(lambda c: set(c.dialect.get_table_names(c)))
    assert rows == {waiting: "failed", cancelled: "completed"}  # statuses the older code knows
    assert not {"leases", "scheduled_dials"} & tables
    async with a.ledger.engine.begin() as conn:
        await conn.run_sync(upgrade)
    call = await world.call(a, waiting)
    assert (call["status"], call["ended_reason"], call["scheduled_at"]) == (
        "failed",
        "schedule_dropped",
        None,
    )
    assert (await a.scheduler.run_once()).held
