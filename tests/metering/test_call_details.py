"""What the ledger keeps of a call beyond its usage: its statuses as it runs and ends, who it is,
its transcript and its recording, on SQLite and PostgreSQL, whatever order records arrive in."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import get_args

import pytest_asyncio
from clocks import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from metering import (
    CALL_STATUSES,
    BillingIdentity,
    CallClosed,
    CallOpened,
    CallProgressed,
    CallRecording,
    CallStatus,
    CallView,
    Ledger,
    Meter,
    Record,
    RecordingStored,
    RunningStatus,
    TurnReported,
    UnknownCallError,
    UsageLine,
    UsageReported,
    load_catalog,
)
from metering._migrate import current_revision, downgrade, upgrade
from metering._schema import OutboxEvent, UsageEvent

T0 = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
BILLING = BillingIdentity(agent_id="agent-7", customer_id="acme")
METADATA = {"session_id": "abc123", "source": "mobile-app", "nested": {"ключ": ["värde", 1, 2.5, None]}}

TRANSCRIPT = (
    {"role": "system", "content": "Call started", "timestamp": "2026-12-08T09:00:00.000Z", "agent_name": "greeter"},
    {"role": "assistant", "content": "Grüß Gott! ¿Cómo está? 你好 👋🏽", "timestamp": "2026-12-08T09:00:01.200Z", "agent_name": "greeter"},
    {"role": "user", "content": "مرحبا — e\u0301 \"quoted\" \\ back\\slash\nnew line", "timestamp": "2026-12-08T09:00:04.000Z", "agent_name": "greeter", "backchannel": True},
    {"role": "assistant", "content": "", "timestamp": "2026-12-08T09:00:05.500Z", "agent_name": "greeter",
     "tool_call": {"name": "save_meal", "arguments": {
         "meal": {"type": "petit-déjeuner", "items": [{"name": "crêpe", "qty": 2, "kcal": 181.5}, {"name": "☕", "qty": 1, "sugar": None}]},
         "tags": [], "options": {}, "confirmed": False, "depth": [[1, [2, [3, {"four": "四"}]]]],
     }},
     "tool_result": {"ok": True, "id": 12345678901234}},
    {"role": "system", "content": "Handoff from greeter to meals", "timestamp": "2026-12-08T09:00:06.000Z", "agent_name": "meals",
     "handoff": {"from": "greeter", "to": "meals"}},
    {"role": "assistant", "content": "Merci !", "timestamp": "2026-12-08T09:00:07.000Z", "agent_name": "meals", "interrupted": True},
)  # fmt: skip


@pytest_asyncio.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(
        database_url, catalog=load_catalog(), worker_id="w1", billing=BILLING, clock=FakeClock(T0)
    )
    try:
        yield lg
    finally:
        await lg.aclose()


def opened(call_id: str, status: RunningStatus = "connecting") -> CallOpened:
    return CallOpened(
        call_id=call_id,
        workflow_slug="daily-call",
        started_at=T0,
        status=status,
        user_id="user-123",
        tenant="acme-health",
        direction="outbound",
        metadata=METADATA,
    )


def closed(call_id: str, status: CallStatus = "completed", **fields: object) -> CallClosed:
    record = CallClosed(
        call_id=call_id,
        status=status,
        reason="agent_ended",
        ended_at=T0 + timedelta(seconds=180),
        duration_s=180.0,
    )
    return replace(record, **fields)


def stored(call_id: str) -> RecordingStored:
    return RecordingStored(
        call_id=call_id,
        location=f"s3://recordings/2026/12/08/{call_id}.ogg",
        format="ogg",
        duration_s=179.52,
        at=T0 + timedelta(seconds=200),
    )


async def call(ledger: Ledger, call_id: str) -> CallView:
    view = await ledger.call(call_id)
    assert view is not None
    return view


async def test_a_call_round_trips_from_open_to_recording(ledger: Ledger) -> None:
    await ledger.write([opened("c1")])
    view = await call(ledger, "c1")
    assert (view.status, view.status_at, view.ended_at, view.transcript, view.recording) == (
        "connecting",
        T0,
        None,
        (),
        None,
    )

    await ledger.write([CallProgressed(call_id="c1", status="active", at=T0 + timedelta(seconds=4))])
    view = await call(ledger, "c1")
    assert (view.status, view.status_at) == ("active", T0 + timedelta(seconds=4))

    await ledger.write(
        [
            UsageReported(
                call_id="c1",
                seq=0,
                agent="greeter",
                at=T0,
                line=UsageLine("tts", "polly", "neural", characters=40),
            ),
            closed("c1", transcript=TRANSCRIPT, agent_history=("greeter", "meals")),
            stored("c1"),
        ]
    )
    view = await call(ledger, "c1")
    assert view.cost_total is not None and view.cost_breakdown is not None
    assert view.cost_total == Decimal(str(view.cost_breakdown["total"])) and view.currency == "USD"
    assert replace(view, cost_total=None, currency=None, cost_breakdown=None) == CallView(
        id="c1",
        workflow_slug="daily-call",
        status="completed",
        status_at=T0 + timedelta(seconds=180),
        ended_reason="agent_ended",
        user_id="user-123",
        tenant="acme-health",
        direction="outbound",
        metadata=METADATA,
        customer_id="acme",
        worker_id="w1",
        started_at=T0,
        created_at=T0,
        scheduled_at=None,
        ended_at=T0 + timedelta(seconds=180),
        duration_s=180.0,
        agent_history=("greeter", "meals"),
        transcript=TRANSCRIPT,
        recording=CallRecording(
            "s3://recordings/2026/12/08/c1.ogg", "ogg", 179.52, T0 + timedelta(seconds=200)
        ),
        cost_total=None,
        currency=None,
        cost_breakdown=None,
    )


async def test_every_status_is_held_by_a_call(ledger: Ledger) -> None:
    running: tuple[RunningStatus, ...] = get_args(RunningStatus)
    ended: tuple[CallStatus, ...] = get_args(CallStatus)
    assert CALL_STATUSES == ("scheduled", *running, *ended)
    seed_004 = {"pending", "connecting", "active", "completed", "failed", "disconnected", "timeout"}
    assert seed_004 | {"no_answer", "busy", "abandoned", "scheduled", "cancelled"} == set(CALL_STATUSES)
    await ledger.schedule_call(opened("later"), at=T0 + timedelta(hours=1), request={})
    assert (await call(ledger, "later")).status == "scheduled"
    await ledger.write([opened(f"open-{s}", s) for s in running])
    await ledger.write([opened(f"ended-{s}") for s in ended])
    await ledger.write([closed(f"ended-{s}", s) for s in ended])
    assert [(await call(ledger, f"open-{s}")).status for s in running] == list(running)
    assert [(await call(ledger, f"ended-{s}")).status for s in ended] == list(ended)


async def test_a_call_opened_with_nothing_more_is_active_and_names_no_one(ledger: Ledger) -> None:
    # What the embedded runtime reports: its call runs the moment it is opened.
    await ledger.write([CallOpened(call_id="bare", workflow_slug="wf", started_at=T0)])
    view = await call(ledger, "bare")
    assert (view.status, view.user_id, view.tenant, view.direction, view.metadata) == (
        "active",
        None,
        None,
        None,
        None,
    )
    async with ledger.engine.connect() as conn:  # SQL NULL, not JSON null: filters find it
        assert await conn.scalar(text("SELECT count(*) FROM calls WHERE metadata IS NULL")) == 1


async def test_progress_never_moves_a_call_back_nor_reopens_it(ledger: Ledger) -> None:
    await ledger.write([opened("c1", "pending")])
    await ledger.write([CallProgressed(call_id="c1", status="active", at=T0 + timedelta(seconds=5))])
    # Late: the connecting that came before active.
    await ledger.write([CallProgressed(call_id="c1", status="connecting", at=T0 + timedelta(seconds=2))])
    view = await call(ledger, "c1")
    assert (view.status, view.status_at) == ("active", T0 + timedelta(seconds=5))

    await ledger.write([closed("c1", "disconnected")])
    await ledger.write([CallProgressed(call_id="c1", status="active", at=T0 + timedelta(seconds=9))])
    await ledger.write([CallProgressed(call_id="c1", status="connecting", at=T0 + timedelta(seconds=9))])
    view = await call(ledger, "c1")
    assert (view.status, view.status_at, view.ended_at) == (
        "disconnected",
        T0 + timedelta(seconds=180),
        T0 + timedelta(seconds=180),
    )
    # Still closed, so nothing else re-closes or re-bills it.
    await ledger.write([closed("c1", "completed")])
    assert (await call(ledger, "c1")).status == "disconnected"


async def test_a_running_calls_agents_follow_its_progress_and_its_close_has_the_last_word(
    ledger: Ledger,
) -> None:
    # Regression: the ledger learnt a call's agents only from its close, so the control API's
    # current_agent (the last of them) was null for every call a worker was running.
    await ledger.write([opened("c1", "pending")])
    active_at = T0 + timedelta(seconds=5)
    await ledger.write(
        [CallProgressed(call_id="c1", status="active", at=active_at, agent_history=("greeter",))]
    )
    assert (await call(ledger, "c1")).agent_history == ("greeter",)
    # A handoff is progress to the status the call already has: its agents change, nothing else.
    handoff_at = T0 + timedelta(seconds=9)
    handoff = CallProgressed(call_id="c1", status="active", at=handoff_at, agent_history=("greeter", "meals"))
    await ledger.write([handoff])
    view = await call(ledger, "c1")
    assert (view.status, view.status_at, view.agent_history) == ("active", active_at, ("greeter", "meals"))

    await ledger.write([closed("c1", agent_history=("greeter", "meals", "greeter"))])
    await ledger.write([handoff])  # late: a closed call keeps the history its close wrote
    assert (await call(ledger, "c1")).agent_history == ("greeter", "meals", "greeter")


async def test_progress_of_a_call_the_ledger_lacks_changes_nothing(ledger: Ledger) -> None:
    await ledger.write([CallProgressed(call_id="ghost", status="active", at=T0)])
    assert await ledger.call("ghost") is None


_call_ids = itertools.count()


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(["connecting", "active", "closed", "recording"]),
    batch_ends=st.lists(st.booleans(), min_size=3, max_size=3),
)
async def test_whatever_order_records_arrive_in_after_the_open_the_call_ends_closed_with_its_recording(
    ledger: Ledger, order: list[str], batch_ends: list[bool]
) -> None:
    call_id = f"shuffled-{next(_call_ids)}"
    records: dict[str, Record] = {
        "connecting": CallProgressed(call_id=call_id, status="connecting", at=T0 + timedelta(seconds=1)),
        "active": CallProgressed(call_id=call_id, status="active", at=T0 + timedelta(seconds=2)),
        "closed": closed(call_id, "timeout", agent_history=("greeter",)),
        "recording": stored(call_id),
    }
    await ledger.write([opened(call_id, "pending")])
    # Split the records into consecutive batches where batch_ends says so (as a reporter does).
    batch: list[Record] = []
    for name, ends in zip(order, [*batch_ends, True], strict=True):
        batch.append(records[name])
        if ends:
            await ledger.write(batch)
            batch = []
    view = await call(ledger, call_id)
    assert (view.status, view.status_at, view.agent_history) == (
        "timeout",
        T0 + timedelta(seconds=180),
        ("greeter",),
    )
    assert view.recording == CallRecording(
        f"s3://recordings/2026/12/08/{call_id}.ogg", "ogg", 179.52, T0 + timedelta(seconds=200)
    )


async def test_a_recording_stored_after_the_close_lands_and_bills_nothing_more(ledger: Ledger) -> None:
    await ledger.write([opened("c1"), closed("c1", "completed")])
    before = await call(ledger, "c1")
    async with ledger.engine.connect() as conn:
        queued = await conn.scalar(select(func.count()).select_from(OutboxEvent))
    await ledger.write([stored("c1")])
    await ledger.write([stored("c1")])  # a retried batch changes nothing
    after = await call(ledger, "c1")
    assert after.recording == CallRecording(
        "s3://recordings/2026/12/08/c1.ogg", "ogg", 179.52, T0 + timedelta(seconds=200)
    )
    assert replace(after, recording=None) == before
    async with ledger.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(OutboxEvent)) == queued


async def test_a_recording_of_a_call_the_ledger_lacks_is_refused_and_reported_lost(ledger: Ledger) -> None:
    try:
        await ledger.write([stored("ghost")])
    except UnknownCallError as exc:
        assert "'ghost'" in str(exc)
    else:
        raise AssertionError("a recording of an unknown call was accepted")
    # Through the Meter, as usage of an unknown call: the rest lands, the loss is reported.
    meter = Meter(ledger)
    for r in [opened("c1"), stored("ghost"), closed("c1"), stored("c1")]:
        meter.report(r)
    meter.start()
    await meter.aclose()
    [loss] = meter.lost
    assert (loss.records, loss.call_ids) == (1, ("ghost",))
    view = await call(ledger, "c1")
    assert view.status == "completed" and view.recording is not None


async def test_a_full_meter_queue_keeps_progress_and_recordings(ledger: Ledger) -> None:
    meter = Meter(ledger, queue_size=2)
    turn = TurnReported(
        call_id="busy", turn=0, agent="a", eou_delay_ms=300, stt_latency_ms=100, llm_ttft_ms=None,
        tts_ttfb_ms=None, e2e_latency_ms=None, interrupted=False, at=T0,
    )  # fmt: skip
    # The writer is not running yet: everything after the first two records overflows.
    for r in [
        opened("busy", "pending"),
        turn,
        CallProgressed(call_id="busy", status="active", at=T0 + timedelta(seconds=3)),
        closed("busy", "busy"),
        stored("busy"),
    ]:
        meter.report(r)
    meter.start()
    await meter.aclose()
    assert meter.dropped_turns == 0 and meter.lost == []
    view = await call(ledger, "busy")
    assert view.status == "busy" and view.recording is not None


async def test_values_json_cannot_hold_are_kept_as_text_and_the_call_still_closes(ledger: Ledger) -> None:
    # A tool may return anything; the close carries the bill, so it must not be refused for it.
    odd = {
        "role": "assistant",
        "content": "",
        "tool_result": {"when": T0, "amount": Decimal("12.50"), "ratio": math.nan, "ids": (1, 2), 7: "seven"},
    }
    await ledger.write([opened("c1"), closed("c1", transcript=(odd,))])
    view = await call(ledger, "c1")
    assert view.status == "completed" and view.cost_total is not None
    assert view.transcript == (
        {
            "role": "assistant",
            "content": "",
            "tool_result": {"when": str(T0), "amount": "12.50", "ratio": "nan", "ids": [1, 2], "7": "seven"},
        },
    )


async def test_a_call_left_pending_or_connecting_by_a_dead_worker_is_abandoned(ledger: Ledger) -> None:
    await ledger.write(
        [opened("waiting", "pending"), opened("dialling", "connecting"), opened("talking", "active")]
    )
    assert sorted(await ledger.recover()) == ["dialling", "talking", "waiting"]
    assert {(await call(ledger, c)).status for c in ("waiting", "dialling", "talking")} == {"abandoned"}


async def test_the_0003_migration_goes_down_and_up_keeping_every_call(ledger: Ledger) -> None:
    usage = UsageReported(
        call_id="done",
        seq=0,
        agent=None,
        at=T0,
        line=UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal(3)),
    )
    await ledger.write([opened("done"), usage, closed("done"), opened("dialling", "connecting")])
    cost = (await call(ledger, "done")).cost_total
    async with ledger.engine.begin() as conn:
        await conn.run_sync(downgrade, "0002")
    async with ledger.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == "0002"
        # Nothing cascaded from the calls table (SQLite must not copy it to drop columns).
        assert await conn.scalar(select(func.count()).select_from(UsageEvent)) == 1
        statuses = dict((await conn.execute(text("SELECT id, status FROM calls"))).all())
    # Before 0003 an open call was active, so the old build can still close it.
    assert statuses == {"done": "completed", "dialling": "active"}
    async with ledger.engine.begin() as conn:
        await conn.run_sync(upgrade)
    done, dialling = await call(ledger, "done"), await call(ledger, "dialling")
    assert (done.status, done.status_at, done.cost_total, done.user_id) == (
        "completed",
        T0 + timedelta(seconds=180),
        cost,
        None,
    )
    assert (dialling.status, dialling.status_at) == ("active", T0)
