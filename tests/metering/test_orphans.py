"""Calls left open by a process that died: closed as abandoned by the next process to open the
ledger, priced and billed; calls of live processes are never touched. Real processes, real
SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clocks import FakeClock

from metering import BillingIdentity, CallOpened, Ledger, load_catalog

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
BILLING = BillingIdentity(agent_id="agent-7", customer_id="acme")

# A process that records a call (opened, 12.5 s of STT at T0 + 20 s), says so, and waits to die.
OWNER = """
import asyncio, sys
from datetime import datetime, timedelta
from decimal import Decimal
from metering import BillingIdentity, CallOpened, Ledger, UsageLine, UsageReported, load_catalog

async def main(url, call_id, t0):
    t0 = datetime.fromisoformat(t0)
    ledger = await Ledger.open(url, catalog=load_catalog(), billing=BillingIdentity("agent-7", "acme"))
    await ledger.write([
        CallOpened(call_id=call_id, workflow_slug="wf", started_at=t0),
        UsageReported(call_id=call_id, seq=0, agent=None, at=t0 + timedelta(seconds=20),
                      line=UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("12.5"))),
    ])
    print("recorded", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def spawn_owner(database_url: str, call_id: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, database_url, call_id, T0.isoformat(),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        assert await proc.stdout.readline() == b"recorded\n"
    return proc


@pytest.fixture
async def owners() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()


async def test_a_sigkilled_processs_call_is_abandoned_priced_and_billed_and_a_live_ones_is_not(
    database_url: str, owners: list[asyncio.subprocess.Process]
) -> None:
    owners.append(dead := await spawn_owner(database_url, "killed"))
    owners.append(await spawn_owner(database_url, "alive"))
    dead.kill()
    await dead.wait()
    assert dead.returncode == -signal.SIGKILL

    ledger = await Ledger.open(
        database_url, catalog=load_catalog(), billing=BILLING, clock=FakeClock(T0 + timedelta(days=2))
    )
    try:
        assert await ledger.recover_orphans() == ["killed"]
        call = await ledger.call("killed")
        assert call is not None
        # Until its last sign of life, not until it was found two days later.
        assert (call.status, call.ended_reason, call.duration_s) == ("abandoned", "process_lost", 20.0)
        assert call.cost_breakdown is not None and call.cost_breakdown["transcriber"]["seconds"] == 12.5
        alive = await ledger.call("alive")
        assert alive is not None and alive.status == "active"
        assert await ledger.recover_orphans() == []
        status = await ledger.outbox_status()
        assert (
            status.pending == 2 + 2 + 2
        )  # both calls' customer and session; the dead one's stt and indicator
    finally:
        await ledger.aclose()


async def test_a_reused_pid_is_not_taken_for_the_owner(database_url: str) -> None:
    # This very process owns the call, but the ledger says it started at another tick: a pid
    # that was reused. Its owner is gone.
    ledger = await Ledger.open(database_url, catalog=load_catalog(), clock=FakeClock(T0))
    try:
        await ledger.write([CallOpened(call_id="mine", workflow_slug="wf", started_at=T0)])
        assert await ledger.recover_orphans() == []  # this process is alive: its call stays open
        from sqlalchemy import update

        from metering._schema import Call

        assert ledger.process.started is not None
        async with ledger.engine.begin() as conn:
            await conn.execute(update(Call).values(owner_started=ledger.process.started - 1))
        assert await ledger.recover_orphans() == ["mine"]
    finally:
        await ledger.aclose()


async def test_calls_of_another_machine_are_left_to_their_workers_lease(database_url: str) -> None:
    clock = FakeClock(T0)
    ledger = await Ledger.open(database_url, catalog=load_catalog(), worker_id="w-elsewhere", clock=clock)
    try:
        await ledger.write([CallOpened(call_id="remote", workflow_slug="wf", started_at=T0)])
        from sqlalchemy import update

        from metering._schema import Call

        async with ledger.engine.begin() as conn:  # owned by a process on another host
            await conn.execute(update(Call).values(owner_machine="another-boot/pid:[1]", owner_pid=1))
        assert await ledger.recover_orphans() == []  # nothing proves that process gone
        await ledger.renew_lease(30)
        clock.advance(seconds=29)
        assert await ledger.recover_orphans() == []  # the worker's lease still holds
        clock.advance(seconds=2)
        assert await ledger.recover_orphans() == ["remote"]
        call = await ledger.call("remote")
        assert call is not None and (call.status, call.ended_reason) == ("abandoned", "worker_lost")
    finally:
        await ledger.aclose()


async def test_a_pending_call_outlives_the_api_process_that_started_it_until_it_waits_too_long(
    database_url: str,
) -> None:
    """The control API opens a call `pending` and a worker takes it over: the API process
    restarting must not close it. Only a call no worker took within PENDING_LIMIT fails."""
    from sqlalchemy import update

    from metering._ledger import PENDING_LIMIT
    from metering._schema import Call

    clock = FakeClock(T0)
    ledger = await Ledger.open(database_url, catalog=load_catalog(), worker_id="api", clock=clock)
    try:
        for call_id in ("waiting", "running"):
            await ledger.write(
                [CallOpened(call_id=call_id, workflow_slug="wf", started_at=T0, status="pending")]
            )
        await ledger.write(
            [CallOpened(call_id="running", workflow_slug="wf", started_at=T0, status="active")]
        )
        assert ledger.process.started is not None
        async with ledger.engine.begin() as conn:  # the process that opened both is gone
            await conn.execute(update(Call).values(owner_started=ledger.process.started - 1))
        assert await ledger.recover_orphans() == ["running"]  # a worker's call: process_lost
        clock.advance(seconds=PENDING_LIMIT.total_seconds() - 1)
        assert await ledger.recover_orphans() == []
        waiting = await ledger.call("waiting")
        assert waiting is not None and waiting.status == "pending"
        clock.advance(seconds=1)
        assert await ledger.recover_orphans() == ["waiting"]
        waiting = await ledger.call("waiting")
        assert waiting is not None and (waiting.status, waiting.ended_reason) == ("failed", "not_started")
    finally:
        await ledger.aclose()
