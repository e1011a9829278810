"""The usage exporter against a fake of the usage-tracking API, on SQLite and PostgreSQL.

Nothing here sleeps to synchronise: tests wait on drain(), on the fake's requests, or on a
subprocess' exit. Backoff is shrunk to milliseconds so retries happen at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clocks import FakeClock
from fakes.usage_api import PATHS, FakeUsageAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering import (
    BillingIdentity,
    CallClosed,
    CallOpened,
    Clock,
    Ledger,
    OutboxStatus,
    Record,
    UsageLine,
    UsageReported,
    load_catalog,
    utcnow,
)
from metering._exporter import UsageExporter
from metering._schema import OutboxEvent

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "VOICERUN_TEST_DATABASE_URL"
API_KEY = "pk_test_5e3b9c0d41f7a2"
BILLING = BillingIdentity(
    agent_id="agent-7", customer_id="cust-42", customer_name="Acme Dental", plan="growth"
)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STEPS = ["customer", "session", "stt", "llm", "tts", "indicator"]


def a_call(call_id: str, *, customer_id: str | None = None) -> list[Record]:
    """A 90 s call: 75.5 s of Deepgram STT, an OpenAI LLM, Polly TTS."""
    usage = [
        UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("75.5")),
        UsageLine(
            "llm", "openai", "gpt-4o-mini", prompt_tokens=1200, completion_tokens=300, cached_tokens=200
        ),
        UsageLine("tts", "polly", "neural", characters=4321),
    ]
    return [
        CallOpened(call_id=call_id, workflow_slug="front-desk", started_at=T0, customer_id=customer_id),
        *(
            UsageReported(
                call_id=call_id, seq=i, line=line, agent="reception", at=T0 + timedelta(seconds=10 * i)
            )
            for i, line in enumerate(usage)
        ),
        CallClosed(
            call_id=call_id,
            status="completed",
            reason="agent_ended",
            ended_at=T0 + timedelta(seconds=90),
            duration_s=90.0,
        ),
    ]


@pytest.fixture
def clock() -> Clock:
    """The ledger's (and so the exporter's) wall clock. The real one by default: these tests
    share the database with `voicerun` subprocesses, which read the real clock. Tests that
    compare due times parametrize it with a FakeClock."""
    return utcnow


@pytest.fixture
async def ledger(database_url: str, clock: Clock) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(database_url, catalog=load_catalog(), billing=BILLING, clock=clock)
    yield ledger
    await ledger.aclose()


@pytest.fixture
async def api() -> AsyncIterator[FakeUsageAPI]:
    async with FakeUsageAPI(api_key=API_KEY) as api:
        yield api


@pytest.fixture
async def exporter(ledger: Ledger, api: FakeUsageAPI) -> AsyncIterator[Callable[..., UsageExporter]]:
    """Builds exporters with millisecond backoff; closes them after the test."""
    made: list[UsageExporter] = []

    def make(**options: Any) -> UsageExporter:
        defaults: dict[str, Any] = {
            "base_url": api.url,
            "api_key": API_KEY,
            "backoff_base_s": 0.001,
            "backoff_max_s": 0.005,
            "lease_s": 10.0,
            "request_timeout_s": 5.0,
            "api_idempotent": True,  # as the fake is; the policy for APIs that are not is tested below
        }
        made.append(UsageExporter(ledger, **(defaults | options)))
        return made[-1]

    yield make
    for e in made:
        await e.aclose()


async def outbox_row(ledger: Ledger, call_id: str, step: str) -> OutboxEvent:
    async with AsyncSession(ledger.engine) as s:
        row = await s.scalar(
            select(OutboxEvent).where(OutboxEvent.call_id == call_id, OutboxEvent.step == step)
        )
    assert row is not None
    return row


async def drain_until(e: UsageExporter, happened: Callable[[], Awaitable[None]]) -> OutboxStatus:
    """Drain until `happened()` returns (then stop), however slow the machine."""
    stop = asyncio.Event()
    draining = asyncio.create_task(e.drain(timeout_s=math.inf, stop=stop))
    try:
        async with asyncio.timeout(60):
            await happened()
    finally:
        stop.set()
    return await draining


def assert_applied_once(api: FakeUsageAPI, *call_ids: str) -> None:
    """Each call's six steps were applied once each, in order, and nothing else was applied."""
    keys = [a.key for a in api.applied]
    assert len(keys) == len(set(keys)), f"an event was applied twice: {keys}"
    for call_id in call_ids:
        assert api.applied_steps(call_id) == STEPS, call_id
    assert len(api.applied) == 6 * len(call_ids)


# -- what is sent ----------------------------------------------------------------------------


async def test_a_call_is_sent_as_six_requests_in_order_with_the_documented_fields(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter]
) -> None:
    await ledger.write(a_call("call-1"))

    status = await exporter().drain(timeout_s=10)

    assert (status.pending, status.dead, status.delivered) == (0, 0, 6)
    assert [r.path for r in api.requests] == [PATHS[s] for s in STEPS]
    assert [r.status for r in api.requests] == [201, 201, 200, 200, 200, 200]
    assert [r.json for r in api.requests] == [
        {"name": "Acme Dental", "externalId": "cust-42"},
        {"sessionId": "call-1", "agentId": "agent-7", "customerId": "cust-42"},
        {
            "sessionId": "call-1",
            "provider": "deepgram",
            "model": "nova-3",
            "plan": "growth",
            "audioMinutes": 1.258333,
        },
        {
            "sessionId": "call-1",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "plan": "growth",
            "promptTokens": 1200,
            "completionTokens": 300,
            "cachedTokens": 200,
        },
        {
            "sessionId": "call-1",
            "provider": "amazon-polly",
            "model": "neural",
            "plan": "growth",
            "characters": 4321,
        },
        {"sessionId": "call-1", "indicator": "per-minute-call", "totalDuration": 1.5},
    ]
    for r in api.requests:
        assert r.headers["paygent-api-key"] == API_KEY
        assert r.headers["Content-Type"] == "application/json"
    assert [r.idempotency_key for r in api.requests] == [
        "call-1/customer",
        "call-1/session",
        "call-1/stt/deepgram/nova-3",
        "call-1/llm/openai/gpt-4o-mini",
        "call-1/tts/polly/neural",
        "call-1/indicator",
    ]
    assert_applied_once(api, "call-1")


async def test_interleaved_calls_each_keep_their_order(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter]
) -> None:
    a, b = a_call("call-a", customer_id="cust-a"), a_call("call-b", customer_id="cust-b")
    await ledger.write([a[0], b[0]])  # both open...
    await ledger.write([*a[1:], *b[1:]])  # ...then both close

    status = await exporter(concurrency=4).drain(timeout_s=10)

    assert (status.pending, status.delivered) == (0, 12)
    assert all(r.status in (200, 201) for r in api.requests), [(r.path, r.status) for r in api.requests]
    # Both calls progressed side by side, and neither out of order.
    assert {r.json["externalId"] for r in api.requests[:2]} == {"cust-a", "cust-b"}
    assert_applied_once(api, "call-a", "call-b")


async def test_two_exporters_sharing_the_ledger_send_each_event_once(
    ledger: Ledger, api: FakeUsageAPI, database_url: str
) -> None:
    # Two workers' exporters (each its own connection pool) drain one database at once: the
    # claims keep them off each other's events, so nothing is even sent twice.
    calls = [f"call-{i}" for i in range(10)]
    await ledger.write([r for c in calls for r in a_call(c, customer_id=f"cust-{c}")])
    other = await Ledger.open(database_url, catalog=load_catalog())
    # Leases far longer than any scheduling delay, so none expires while its exporter works:
    # a drain that finds only the other's claims returns (they are not due before its
    # deadline), and the other, still running, sends what is left.
    options: dict[str, Any] = {
        "base_url": api.url,
        "api_key": API_KEY,
        "lease_s": 600.0,
        "request_timeout_s": 60.0,
    }
    first, second = UsageExporter(ledger, **options), UsageExporter(other, **options)
    try:
        await asyncio.gather(first.drain(timeout_s=300), second.drain(timeout_s=300))
    finally:
        await first.aclose()
        await second.aclose()
        await other.aclose()
    assert_applied_once(api, *calls)
    assert len(api.requests) == 60 and not any(r.replayed for r in api.requests)
    assert (await ledger.outbox_status()).delivered == 60


async def test_a_slow_request_holds_up_its_own_call_only(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter]
) -> None:
    await ledger.write([*a_call("call-a", customer_id="cust-a"), *a_call("call-b", customer_id="cust-b")])
    hang = api.hang("llm")
    drained = asyncio.create_task(exporter(concurrency=2).drain(timeout_s=10))
    async with asyncio.timeout(10):
        await hang.received.wait()
        assert hang.request is not None
        slow = hang.request.json["sessionId"]
        fast = "call-b" if slow == "call-a" else "call-a"
        await api.wait_for(lambda api: api.applied_steps(fast) == STEPS)
    assert api.applied_steps(slow) == STEPS[:4]
    hang.release()
    status = await drained
    assert status.delivered == 12
    assert_applied_once(api, "call-a", "call-b")


# -- faults ----------------------------------------------------------------------------------


async def test_api_answering_503_for_a_while_then_up_gets_every_event_once(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter]
) -> None:
    await ledger.write(a_call("call-1"))
    e = exporter(max_attempts=1000)
    api.down(503)

    down = await drain_until(e, lambda: api.wait_for(lambda api: len(api.requests) >= 2))

    assert down.pending == 6 and down.delivered == 0
    assert len(api.requests) >= 2 and {r.status for r in api.requests} == {503}
    api.up()
    status = await e.drain(timeout_s=10)
    assert (status.pending, status.dead, status.delivered) == (0, 0, 6)
    assert_applied_once(api, "call-1")
    # Every retry of the customer step carried the same key.
    assert {r.idempotency_key for r in api.requests_to("customer")} == {"call-1/customer"}


async def test_api_refusing_connections_then_back_on_the_same_port(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter], log_watch: Any
) -> None:
    await ledger.write(a_call("call-1"))
    e = exporter(max_attempts=1000)
    await e.drain(timeout_s=10)  # keep a pooled connection to the old server
    await ledger.write(a_call("call-2", customer_id="cust-2"))
    await api.stop()

    refused = await drain_until(e, lambda: log_watch.wait_for("usage_delivery_failed"))

    assert refused.pending == 6
    row = await outbox_row(ledger, "call-2", "customer")
    assert row.attempts >= 1 and row.last_error is not None
    await api.start()
    status = await e.drain(timeout_s=10)
    assert (status.pending, status.dead, status.delivered) == (0, 0, 12)
    assert_applied_once(api, "call-1", "call-2")


@pytest.mark.parametrize("clock", [FakeClock(T0)])
async def test_429_waits_for_retry_after_seconds(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter]
) -> None:
    await ledger.write(a_call("call-1"))
    api.fail(429, step="customer", retry_after=120)

    status = await exporter().drain(timeout_s=5)  # returns: nothing is due before the deadline

    row = await outbox_row(ledger, "call-1", "customer")
    assert (row.attempts, row.state) == (1, "pending")
    assert row.last_error is not None and "429" in row.last_error
    assert row.next_attempt_at == T0 + timedelta(seconds=120)
    assert status.pending == 6 and len(api.requests) == 1


@pytest.mark.parametrize("clock", [FakeClock(T0)])
async def test_503_with_retry_after_as_an_http_date(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter]
) -> None:
    await ledger.write(a_call("call-1"))
    at = T0 + timedelta(seconds=90)
    api.fail(503, step="customer", retry_after=format_datetime(at, usegmt=True))

    await exporter().drain(timeout_s=5)

    row = await outbox_row(ledger, "call-1", "customer")
    assert row.next_attempt_at == at


async def test_permanent_4xx_is_a_dead_letter_at_once_and_blocks_its_call(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter], cli: CLI
) -> None:
    await ledger.write([*a_call("call-1"), *a_call("call-2", customer_id="cust-2")])
    api.fail(400, step="stt", body='{"error": "audioMinutes out of range"}')
    e = exporter()

    status = await e.drain(timeout_s=10)

    assert (status.pending, status.blocked, status.dead, status.delivered) == (3, 3, 1, 8)
    assert len(api.requests_to("stt")) == 2  # one for each call: no retry of the 400
    [(event, letter)] = await ledger.dead_letters()
    assert (event.step, letter.attempts) == ("stt", 1)
    assert letter.last_error == '/api/v1/voice/stt returned 400: {"error": "audioMinutes out of range"}'
    dead_call = event.call_id
    assert api.applied_steps(dead_call) == ["customer", "session"]
    # What an operator's alert sees: a dead letter, and billing running late behind it.
    assert REGISTRY.get_sample_value("voicerun_usage_export_dead_letters") == 1
    assert status.oldest_pending_at is not None
    late_s = REGISTRY.get_sample_value("voicerun_usage_export_oldest_pending_seconds")
    assert late_s is not None and 0 < late_s <= (datetime.now(UTC) - status.oldest_pending_at).total_seconds()

    code, out, _ = await cli("metering", "retry")
    assert (code, out) == (0, "re-queued 1 dead letter\n")
    status = await e.drain(timeout_s=10)
    assert (status.pending, status.dead, status.delivered) == (0, 0, 12)
    assert_applied_once(api, "call-1", "call-2")
    assert REGISTRY.get_sample_value("voicerun_usage_export_oldest_pending_seconds") == 0
    assert REGISTRY.get_sample_value("voicerun_usage_export_dead_letters") == 0


async def test_repeated_5xx_is_a_dead_letter_after_max_attempts(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter], cli: CLI
) -> None:
    await ledger.write(a_call("call-1"))
    api.fail(500, step="llm", times=3, body="upstream <b>exploded</b>")
    e = exporter(max_attempts=3)

    status = await e.drain(timeout_s=10)

    assert (status.pending, status.blocked, status.dead, status.delivered) == (2, 2, 1, 3)
    assert [r.status for r in api.requests_to("llm")] == [500, 500, 500]
    [(event, letter)] = await ledger.dead_letters()
    assert (event.step, letter.attempts) == ("llm", 3)
    assert letter.last_error.startswith("/api/v1/voice/llm returned 500: upstream <b>exploded</b>")
    assert letter.last_error.endswith("(gave up after 3 attempts)")
    assert api.requests_to("tts") == []

    code, out, _ = await cli("metering", "retry")
    assert (code, out) == (0, "re-queued 1 dead letter\n")
    status = await e.drain(timeout_s=10)
    assert (status.pending, status.dead, status.delivered) == (0, 0, 6)
    assert_applied_once(api, "call-1")


async def test_409_counts_as_already_applied(
    ledger: Ledger,
    api: FakeUsageAPI,
    exporter: Callable[..., UsageExporter],
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    # The session exists already (as after a send whose answer was lost, to an API that ignores
    # Idempotency-Key): the API answers 409, and the call goes on.
    await ledger.write(a_call("call-1"))
    api.customers["cust-42"] = {"name": "Acme Dental", "externalId": "cust-42"}
    api.sessions["call-1"] = {"sessionId": "call-1", "customerId": "cust-42", "usage": [], "indicator": None}

    status = await exporter().drain(timeout_s=10)

    assert (status.pending, status.dead, status.delivered) == (0, 0, 6)
    assert [r.status for r in api.requests_to("session")] == [409]
    assert api.applied_steps("call-1") == ["customer", "stt", "llm", "tts", "indicator"]
    [warning] = [e for e in captured_logs if e["event"] == "usage_already_applied"]
    assert (warning["call_id"], warning["step"], warning["status"]) == ("call-1", "session", 409)


async def test_a_garbled_2xx_body_is_delivered_and_the_key_never_logged(
    ledger: Ledger,
    api: FakeUsageAPI,
    exporter: Callable[..., UsageExporter],
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    await ledger.write([*a_call("call-1"), *a_call("call-2", customer_id="cust-2")])
    api.garble("stt", times=2)
    api.fail(503, step="session", times=1)
    # An API that echoes the request's headers in an error body.
    api.fail(401, step="llm", body=f'{{"error": "bad key", "paygent-api-key": "{API_KEY}"}}')

    status = await exporter().drain(timeout_s=10)

    assert [r.status for r in api.requests_to("stt")] == [200, 200]  # garbled, not resent
    assert status.dead == 1
    [(_, letter)] = await ledger.dead_letters()
    assert API_KEY not in letter.last_error and "[redacted]" in letter.last_error
    events = {e["event"] for e in captured_logs}
    assert {"usage_delivered", "usage_delivery_failed", "usage_dead_letter"} <= events
    failed = next(e for e in captured_logs if e["event"] == "usage_delivery_failed")
    assert (failed["step"], failed["status"], failed["attempt"], failed["reason"]) == (
        "session",
        503,
        1,
        "http_503",
    )
    assert API_KEY not in repr(captured_logs)


# -- the loop --------------------------------------------------------------------------------


async def test_run_sends_new_events_when_woken_and_returns_when_stopped(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    idle = asyncio.Event()  # set when the exporter found nothing to claim, before it sleeps
    real_claim = ledger.claim_due

    async def claim(**kwargs: Any) -> Any:
        items = await real_claim(**kwargs)
        if not items:
            idle.set()
        return items

    monkeypatch.setattr(ledger, "claim_due", claim)
    e = exporter(idle_wait_s=600)
    stop = asyncio.Event()
    running = asyncio.create_task(e.run(stop))
    async with asyncio.timeout(30):
        await idle.wait()
    await ledger.write(a_call("call-1"))
    e.wake()
    # Only wake() explains an answer before the 600 s idle wait is over.
    async with asyncio.timeout(60):
        await api.wait_for(lambda api: len(api.applied) == 6)
    stop.set()
    async with asyncio.timeout(60):
        await running
    assert_applied_once(api, "call-1")


async def test_run_survives_a_database_error(
    ledger: Ledger,
    api: FakeUsageAPI,
    exporter: Callable[..., UsageExporter],
    captured_logs: list[MutableMapping[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    real_claim = ledger.claim_due
    failures = 2

    async def flaky_claim(**kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise OperationalError("SELECT ...", {}, ConnectionRefusedError("database is restarting"))
        return await real_claim(**kwargs)

    monkeypatch.setattr(ledger, "claim_due", flaky_claim)
    await ledger.write(a_call("call-1"))
    stop = asyncio.Event()
    running = asyncio.create_task(exporter().run(stop))
    async with asyncio.timeout(10):
        await api.wait_for(lambda api: len(api.applied) == 6)
    stop.set()
    await running
    assert [e["event"] for e in captured_logs].count("usage_export_database_error") == 2


# -- crash recovery in real processes ----------------------------------------------------------


def export_env(database_url: str, api: FakeUsageAPI, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICERUN_") and k != "DATABASE_URL"}
    return env | {
        "VOICERUN_DATABASE_URL": database_url,
        "VOICERUN_DATA_DIR": str(tmp_path),
        "VOICERUN_LOG_FORMAT": "json",
        "VOICERUN_USAGE_API_URL": api.url,
        "VOICERUN_USAGE_API_KEY": API_KEY,
        "VOICERUN_USAGE_AGENT_ID": BILLING.agent_id,
        "VOICERUN_USAGE_CUSTOMER_ID": BILLING.customer_id,
    }


async def voicerun(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sigkill_mid_request_then_another_exporter_sends_each_event_once(
    ledger: Ledger, api: FakeUsageAPI, database_url: str, tmp_path: Path
) -> None:
    await ledger.write(a_call("call-1"))
    env = export_env(database_url, api, tmp_path) | {"VOICERUN_USAGE_API_IDEMPOTENT": "true"}
    hang = api.hang("stt")  # applied, but the answer never reaches the first exporter
    # (a 3 s lease: requests time out after 1.5 s, far beyond a slow machine's answer here)
    first = await voicerun(env, "metering", "export", "--lease", "3")
    try:
        async with asyncio.timeout(30):
            await hang.received.wait()
    finally:
        first.kill()
        await first.communicate()
    assert first.returncode == -signal.SIGKILL

    # The second exporter finds the stt event claimed until the first one's lease runs out,
    # then sends it again.
    second = await voicerun(env, "metering", "export", "--lease", "3", "--until-empty", "--timeout", "60")
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()
    assert out.decode() == "outbox: 0 pending (0 blocked), 0 dead, 0 in doubt, 6 delivered\n"
    assert_applied_once(api, "call-1")
    stt = api.requests_to("stt")
    assert len(stt) >= 2 and {r.idempotency_key for r in stt} == {"call-1/stt/deepgram/nova-3"}
    assert stt[-1].replayed and stt[-1].status == 200
    assert API_KEY not in err.decode()


async def test_sigkill_mid_request_to_an_api_without_idempotency_holds_the_event_in_doubt(
    ledger: Ledger, api: FakeUsageAPI, database_url: str, tmp_path: Path, cli: CLI
) -> None:
    # The default policy: the API may ignore Idempotency-Key (the seed API has none), so an
    # event sent by an exporter that died before the answer is neither resent nor dropped.
    await ledger.write(a_call("call-1"))
    env = export_env(database_url, api, tmp_path)
    hang = api.hang("stt")  # applied, but the answer never reaches the first exporter
    first = await voicerun(env, "metering", "export", "--lease", "3")
    try:
        async with asyncio.timeout(30):
            await hang.received.wait()
    finally:
        first.kill()
        await first.communicate()

    second = await voicerun(env, "metering", "export", "--lease", "3", "--until-empty", "--timeout", "60")
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    assert second.returncode == 1, err.decode()
    assert out.decode() == "outbox: 3 pending (3 blocked), 0 dead, 1 in doubt, 2 delivered\n"
    assert len(api.requests_to("stt")) == 1  # not sent again
    assert api.requests_to("tts") == []  # the call's later steps wait behind it

    code, listed, _ = await cli("metering", "doubt", "--json")
    [held] = json.loads(listed)
    assert (code, held["call_id"], held["step"]) == (0, "call-1", "stt")
    assert held["idempotency_key"] == "call-1/stt/deepgram/nova-3" and held["sent_at"] is not None
    code, status, _ = await cli("metering", "status", "--json")
    assert (json.loads(status)["in_doubt"], json.loads(status)["blocked"]) == (1, 3)

    # The operator finds the usage at the API: it was applied.
    code, out_sent, _ = await cli("metering", "doubt", "--sent", str(held["id"]))
    assert (code, out_sent) == (0, "marked delivered: 1 event\n")
    third = await voicerun(env, "metering", "export", "--until-empty", "--timeout", "60")
    async with asyncio.timeout(90):
        out, err = await third.communicate()
    assert third.returncode == 0, err.decode()
    assert out.decode() == "outbox: 0 pending (0 blocked), 0 dead, 0 in doubt, 6 delivered\n"
    assert_applied_once(api, "call-1")


async def test_an_unanswered_request_is_in_doubt_until_the_operator_resends_it(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter], cli: CLI
) -> None:
    # A live exporter's request times out: to an API without idempotency keys it may have been
    # applied, so it is held, counted in Prometheus, and sent again only when told to.
    await ledger.write(a_call("call-1"))
    hang = api.hang("llm")
    e = exporter(api_idempotent=False, request_timeout_s=3.0)  # a timeout meant to expire

    status = await e.drain(timeout_s=60)

    hang.release()
    assert (status.pending, status.blocked, status.in_doubt, status.delivered) == (2, 2, 1, 3)
    assert REGISTRY.get_sample_value("voicerun_usage_export_in_doubt") == 1
    [held] = await ledger.in_doubt()
    assert held.step == "llm" and held.last_error is not None and "no answer within 3.0 s" in held.last_error
    code, out, err = await cli("metering", "doubt", "--resend", str(held.id), "999")
    assert (code, out) == (1, "re-queued: 1 event\n")
    assert err == "voicerun: error: not in doubt (no such event, or already resolved): 999\n"

    status = await exporter(api_idempotent=False).drain(timeout_s=60)

    assert (status.pending, status.in_doubt, status.delivered) == (0, 0, 6)
    assert [r.status for r in api.requests_to("llm")] == [200, 200]  # the operator chose to resend
    assert REGISTRY.get_sample_value("voicerun_usage_export_in_doubt") == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # signals, not SQL
async def test_sigterm_stops_the_exporter_cleanly(
    ledger: Ledger, api: FakeUsageAPI, database_url: str, tmp_path: Path
) -> None:
    await ledger.write(a_call("call-1"))
    env = export_env(database_url, api, tmp_path) | {
        "VOICERUN_METRICS_PORT": "0",
        "VOICERUN_METRICS_HOST": "127.0.0.1",
    }
    proc = await voicerun(env, "metering", "export")
    early: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            assert proc.stderr is not None
            while b'"metrics_serving"' not in (line := await proc.stderr.readline()):
                assert line, "the exporter exited before serving metrics"
                early.append(line)
            port = json.loads(line)["port"]
            await api.wait_for(lambda api: len(api.applied) == 6)
            # The long-running exporter is scraped like a worker: what it delivered, its backlog.
            # (the fake applies the last step a moment before the exporter counts it: scrape until then)
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                        scraped = await r.text()
                    if 'voicerun_usage_export_delivered_total{step="indicator"}' in scraped:
                        break
                    await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 0, err.decode()
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    delivered = {
        s.labels["step"]: s.value
        for s in families["voicerun_usage_export_delivered"].samples
        if s.name.endswith("_total")
    }
    assert delivered == {step: 1.0 for step in ("customer", "session", "stt", "llm", "tts", "indicator")}
    assert families["voicerun_usage_export_backlog"].samples[0].value == 0
    # (asyncio debug mode, as in `make test`, adds plain-text lines about slow callbacks)
    lines = b"".join(early).decode().splitlines() + err.decode().splitlines()
    logged = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert logged[0] == "usage_exporter_started" and logged[-1] == "usage_exporter_stopped"
    status = await ledger.outbox_status()
    assert (status.pending, status.delivered) == (0, 6)


# -- the CLI ---------------------------------------------------------------------------------

CLI = Callable[..., Any]


@pytest.fixture
def cli_without_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[CLI]:
    """Runs `voicerun ARGS...` in-process (in a thread: the command runs its own event loop)
    with a clean VOICERUN_* environment; returns (exit status, stdout, stderr)."""
    from agent import _cli

    for name in list(os.environ):
        if (name.startswith("VOICERUN_") and name != PG_ENV) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("VOICERUN_DATA_DIR", str(tmp_path))
    # main() configures structlog for a terminal; keep the test session's configuration.
    monkeypatch.setattr("agent._logging.configure_logging", lambda *a, **k: None)

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(_cli.main, list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run


@pytest.fixture
def cli(database_url: str, cli_without_database: CLI, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """`cli_without_database`, against the test's database."""
    monkeypatch.setenv("VOICERUN_DATABASE_URL", database_url)
    return cli_without_database


async def test_status_json_on_a_known_ledger(
    ledger: Ledger, api: FakeUsageAPI, exporter: Callable[..., UsageExporter], cli: CLI
) -> None:
    await ledger.write(a_call("call-1"))
    await exporter().drain(timeout_s=10)
    await ledger.write(a_call("call-2", customer_id="cust-2"))
    api.fail(404, step="session")
    await exporter().drain(timeout_s=10)

    code, out, err = await cli("metering", "status", "--json")

    assert (code, err) == (0, "")
    status = json.loads(out)
    age = status.pop("oldest_pending_age_s")
    oldest = datetime.fromisoformat(status.pop("oldest_pending_at"))
    assert status == {"pending": 4, "blocked": 4, "dead": 1, "in_doubt": 0, "delivered": 7}
    assert 0 <= age < 60 and oldest <= datetime.now(UTC)

    code, out, _ = await cli("metering", "status")
    assert code == 0
    assert out.splitlines()[:3] == [
        "pending    4  (4 blocked behind dead letters or events in doubt)",
        "failed     1  (dead letters: `voicerun metering dead` lists, `retry` re-sends)",
        "in doubt   0  (sent, answer lost: `voicerun metering doubt` lists and resolves)",
    ]

    code, out, _ = await cli("metering", "dead", "--json")
    [letter] = json.loads(out)
    assert (letter["call_id"], letter["step"], letter["attempts"]) == ("call-2", "session", 1)
    assert letter["last_error"].startswith("/api/v1/voice/session returned 404")


async def test_migrate_prints_the_revision(cli: CLI) -> None:
    code, out, err = await cli("metering", "migrate")
    assert (code, err) == (0, "")
    assert out.startswith("ledger schema at revision ") and "None" not in out


async def test_prune_deletes_delivered_events_past_the_cutoff(
    ledger: Ledger, exporter: Callable[..., UsageExporter], cli: CLI
) -> None:
    await ledger.write(a_call("call-1"))
    await exporter().drain(timeout_s=10)
    code, out, _ = await cli("metering", "prune", "--days", "1")
    assert (code, out) == (0, "deleted 0 delivered outbox events older than 1 days\n")
    code, out, _ = await cli("metering", "prune", "--days", "0")
    assert (code, out) == (0, "deleted 6 delivered outbox events older than 0 days\n")
    assert (await ledger.outbox_status()).delivered == 0
    from agent._metering_cmd import _days

    with pytest.raises(argparse.ArgumentTypeError, match="days must not be negative"):
        _days("-3")


async def test_export_without_an_api_url_is_one_line_and_exit_2(cli_without_database: CLI) -> None:
    code, out, err = await cli_without_database("metering", "export", "--until-empty")
    assert (code, out) == (2, "")
    assert (
        err
        == "voicerun: error: VOICERUN_USAGE_API_URL is not set: there is no usage-tracking API to export to\n"
    )


async def test_incomplete_usage_settings_are_one_line_each_and_exit_2(
    cli_without_database: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_without_database
    monkeypatch.setenv("VOICERUN_USAGE_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VOICERUN_USAGE_AGENT_ID", "agent-7")
    code, out, err = await cli("metering", "status")
    assert (code, out) == (2, "")
    assert err == (
        "voicerun: error: VOICERUN_USAGE_API_URL is set, so VOICERUN_USAGE_API_KEY, "
        "VOICERUN_USAGE_CUSTOMER_ID must be too\n"
    )

    monkeypatch.setenv("VOICERUN_USAGE_API_KEY", API_KEY)
    monkeypatch.setenv("VOICERUN_USAGE_CUSTOMER_ID", "cust-42")
    monkeypatch.setenv("VOICERUN_USAGE_MAX_ATTEMPTS", "0")
    code, _, err = await cli("metering", "status")
    assert code == 2
    assert err == "voicerun: error: VOICERUN_USAGE_MAX_ATTEMPTS: Input should be greater than or equal to 1\n"
