"""Reporting to metering: a whole call lands in the ledger exactly, and a full queue loses no usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from agent._providers import ProviderPool
from agent._recording import call_from_recording
from agent._report import report_dict
from metering import (
    BillingIdentity,
    CallClosed,
    CallOpened,
    Ledger,
    TurnReported,
    UsageLine,
    UsageReported,
    load_catalog,
    seconds,
)
from metering._reporter import Meter
from pipeline import SAMPLE_RATE, STT, TTS, ProviderError, STTSession, Transcript, Utterance
from pipeline.providers.fallback import FallbackSTT, FallbackTTS
from pipeline.testing import ScriptedSTT, ToneTTS, speech_like
from workflows import ProviderSpec, load_workflow_text

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

# The second agent speaks with Polly and listens with Deepgram: its usage must be priced so.
WORKFLOW = """
version: 1
slug: metered-call
start: host
defaults: {stt: whisper, llm: rules, tts: hibari}
agents:
  host:
    instructions: Host.
    greeting: Welcome to the metered line.
    handoffs:
      - to: payments
        say: Let me pass you to payments.
    rules:
      - keywords: [pay]
        say: Sure.
        handoff: payments
  payments:
    instructions: Payments.
    stt: {provider: deepgram, model: nova-3}
    tts: {provider: polly, options: {engine: neural}}
    greeting: Payments here.
    rules:
      - keywords: [card]
        say: Thanks, your card is charged.
"""


class ScriptedPool(ProviderPool):
    """Scripted engines stand in for every provider; the workflow's specs still price the usage."""

    def __init__(self, heard: dict[str, list[str]]) -> None:
        super().__init__()
        self._heard = heard

    async def stt(self, spec: ProviderSpec) -> STT:
        return ScriptedSTT(self._heard[spec.provider])

    async def tts(self, spec: ProviderSpec) -> TTS:
        return ToneTTS(0.3)


@pytest_asyncio.fixture
async def ledger(database_url: str) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(
        database_url, catalog=load_catalog(), billing=BillingIdentity(agent_id="ag", customer_id="cu")
    )
    try:
        yield lg
    finally:
        await lg.aclose()


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_whole_call_lands_in_the_ledger_with_exact_totals(ledger: Ledger) -> None:
    silence = np.zeros(2 * SAMPLE_RATE, np.int16)
    audio = np.concatenate(
        [silence, speech_like(1.0, seed=1), silence, silence, speech_like(1.2, seed=2), silence]
    )
    polly_before = sample("voicerun_tts_characters_total", {"provider": "polly", "model": "neural"})
    async with Meter(ledger) as meter:
        record, _ = await call_from_recording(
            load_workflow_text(WORKFLOW),
            audio,
            fast=True,
            providers=ScriptedPool({"whisper": ["I want to pay"], "deepgram": ["my card is ready"]}),
            call_id="metered-1",
            meter=meter,
        )
        await meter.flush()
    assert record.summary is not None
    usage = record.summary.usage

    call = await ledger.call("metered-1")
    assert call is not None and call.status == "completed" and call.ended_reason == record.summary.reason
    assert call.duration_s is not None and seconds(call.duration_s) == seconds(record.summary.duration_s)
    lines = {(ln.stage, ln.provider, ln.model): ln for ln in await ledger.usage_lines("metered-1")}
    # What each agent said was spoken and priced by that agent's voice.
    host_words = "Welcome to the metered line." + "Sure." + "Let me pass you to payments."
    payments_words = "Payments here." + "Thanks, your card is charged."
    assert lines["tts", "hibari", None].characters == len(host_words)
    assert lines["tts", "polly", "neural"].characters == len(payments_words)
    assert len(host_words) + len(payments_words) == usage.tts_characters
    # One utterance heard by each agent's STT; together, exactly what the session counted.
    stt = lines["stt", "whisper", None].audio_seconds + lines["stt", "deepgram", "nova-3"].audio_seconds
    assert abs(stt - Decimal(repr(usage.stt_audio_seconds))) <= Decimal("0.001")
    assert lines["stt", "deepgram", "nova-3"].audio_seconds > 0
    llm = lines["llm", "rules", None]  # named, though the rules use no tokens
    assert (llm.prompt_tokens, llm.completion_tokens) == (0, 0)
    turns = await ledger.call_turns("metered-1")
    assert len(turns) == len(record.summary.turns) == 2
    assert [t.agent for t in turns] == ["payments", "payments"] or [t.agent for t in turns] == [
        "host",
        "payments",
    ]
    assert [t.e2e_latency_ms for t in turns] == [t.e2e_latency_ms for t in record.summary.turns]
    # The report and the ledger price the call the same way.
    assert report_dict(record)["cost_breakdown"] == call.cost_breakdown
    assert sample(
        "voicerun_tts_characters_total", {"provider": "polly", "model": "neural"}
    ) - polly_before == len(payments_words)
    steps = [i.step for i in await ledger.claim_due(limit=10, lease_s=30)]
    assert steps == ["customer"]


def records_for_a_busy_call(
    call_id: str, n: int
) -> list[CallOpened | UsageReported | TurnReported | CallClosed]:
    out: list[CallOpened | UsageReported | TurnReported | CallClosed] = [
        CallOpened(call_id=call_id, workflow_slug="wf", started_at=T0)
    ]
    for i in range(n):
        out.append(
            UsageReported(
                call_id=call_id,
                seq=i,
                line=UsageLine("tts", "polly", "neural", characters=10),
                agent="a",
                at=T0,
            )
        )
        out.append(
            TurnReported(
                call_id=call_id, turn=i, agent="a", eou_delay_ms=300, stt_latency_ms=100,
                llm_ttft_ms=200, tts_ttfb_ms=90, e2e_latency_ms=600, interrupted=False, at=T0,
            )
        )  # fmt: skip
    out.append(
        CallClosed(
            call_id=call_id,
            status="completed",
            reason="hangup",
            ended_at=T0 + timedelta(seconds=60),
            duration_s=60,
        )
    )
    return out


async def test_a_full_queue_keeps_every_usage_and_lifecycle_record_and_drops_turns(tmp_path: Path) -> None:
    from metering import database_url

    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    dropped_before = sample("voicerun_metering_dropped_total", {"kind": "turn"})
    try:
        meter = Meter(ledger, queue_size=100)
        # The writer is not running yet: the database has fallen behind by a whole queue.
        for r in records_for_a_busy_call("busy-1", 300) + records_for_a_busy_call("busy-2", 10):
            meter.report(r)
        meter.start()
        await meter.flush()
        await meter.aclose()
        for call_id, n in (("busy-1", 300), ("busy-2", 10)):
            call = await ledger.call(call_id)
            assert call is not None and call.status == "completed"
            (line,) = await ledger.usage_lines(call_id)
            assert line.characters == 10 * n
            assert call.cost_breakdown is not None and call.cost_breakdown["voice"]["characters"] == 10 * n
        kept = len(await ledger.call_turns("busy-1")) + len(await ledger.call_turns("busy-2"))
        assert kept < 310 and meter.dropped_turns == 310 - kept
        assert sample("voicerun_metering_dropped_total", {"kind": "turn"}) - dropped_before == 310 - kept
    finally:
        await ledger.aclose()


async def test_closing_the_meter_commits_what_is_queued(tmp_path: Path) -> None:
    from metering import database_url

    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    try:
        meter = Meter(ledger)
        meter.start()
        for r in records_for_a_busy_call("late", 5):
            meter.report(r)
        await meter.aclose()
        call = await ledger.call("late")
        assert call is not None and call.status == "completed" and len(await ledger.call_turns("late")) == 5
    finally:
        await ledger.aclose()


async def test_a_database_outage_delays_the_ledger_and_loses_nothing(
    database_url: str, log_watch: Any
) -> None:
    """PostgreSQL refuses connections for a while (its connections are cut and new ones are
    refused); the writer retries the same batch until the database is back."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs a server to take down; SQLite is a file")
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    name = url.database
    admin_dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    ledger = await Ledger.open(database_url, catalog=load_catalog())
    failures_before = sample("voicerun_metering_write_failures_total", {})
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        meter = Meter(ledger)
        meter.start()
        for r in records_for_a_busy_call("outage", 20):
            meter.report(r)  # the call goes on: reporting never waits for the database
        async with asyncio.timeout(30):
            await log_watch.wait_for("metering_write_failed", count=2)  # it retried, and failed again
        assert sample("voicerun_metering_write_failures_total", {}) - failures_before >= 2
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        async with asyncio.timeout(30):
            await meter.flush()
        await meter.aclose()
        call = await ledger.call("outage")
        assert call is not None and call.status == "completed"
        (line,) = await ledger.usage_lines("outage")
        assert line.characters == 200 and len(await ledger.call_turns("outage")) == 20
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await ledger.aclose()


FALLBACK_WORKFLOW = """
version: 1
slug: failing-over
start: host
defaults:
  stt: [{provider: deepgram, model: nova-3}, whisper]
  llm: rules
  tts: [{provider: polly, options: {engine: neural}}, hibari]
agents:
  host:
    instructions: Host.
    greeting: Hello there, how can I help?
    rules:
      - keywords: [hours]
        say: We open at five.
"""


class FailingOverPool(ProviderPool):
    """Deepgram and Polly are down: every chain falls over to the embedded engine's stand-in."""

    class DownTTS(ToneTTS):
        async def synthesize(self, text: str) -> AsyncIterator[bytes]:
            raise ProviderError("polly: 503", provider="polly", retryable=True)
            yield b""

    class DownSTT(ScriptedSTT):
        async def connect(self) -> STTSession:
            inner = await super().connect()

            class Session(STTSession):
                def begin(self, on_interim: Any = None) -> Utterance:
                    class Down(Utterance):
                        def push(self, pcm: bytes, voiced: bool) -> None:
                            pass

                        async def finalize(self) -> Transcript:
                            raise ProviderError(
                                "deepgram: socket closed", provider="deepgram", retryable=True
                            )

                        def cancel(self) -> None:
                            pass

                    return Down()

                async def aclose(self) -> None:
                    await inner.aclose()

            return Session()

    async def stt(self, spec: ProviderSpec) -> STT:
        return FallbackSTT([self.DownSTT([""]), ScriptedSTT(["what are your hours"])])

    async def tts(self, spec: ProviderSpec) -> TTS:
        return FallbackTTS([self.DownTTS(0.3), ToneTTS(0.3)])


async def test_usage_after_a_fallback_is_priced_as_the_provider_that_served(tmp_path: Path) -> None:
    from metering import database_url

    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    silence = np.zeros(2 * SAMPLE_RATE, np.int16)
    try:
        async with Meter(ledger) as meter:
            record, _ = await call_from_recording(
                load_workflow_text(FALLBACK_WORKFLOW),
                np.concatenate([silence, speech_like(1.0, seed=3), silence]),
                fast=True,
                providers=FailingOverPool(),
                call_id="fallback-1",
                meter=meter,
            )
        assert record.summary is not None
        lines = {(ln.stage, ln.provider, ln.model): ln for ln in await ledger.usage_lines("fallback-1")}
        said = len("Hello there, how can I help?") + len("We open at five.")
        assert lines["tts", "hibari", None].characters == said == record.summary.usage.tts_characters
        assert lines["tts", "polly", "neural"].characters == 0  # named (the agent's first), never billed
        assert lines["stt", "whisper", None].audio_seconds > 0
        assert lines["stt", "deepgram", "nova-3"].audio_seconds == 0
        call = await ledger.call("fallback-1")
        assert call is not None and call.cost_breakdown is not None
        assert call.cost_breakdown["voice"]["provider"] == "hibari"  # both free: the one that spoke
        assert [p["provider"] for p in call.cost_breakdown["voice"]["providers"]] == ["polly", "hibari"]
    finally:
        await ledger.aclose()


async def test_the_writer_gathers_records_and_commits_a_full_batch_or_a_flush_at_once(tmp_path: Path) -> None:
    from metering import database_url
    from metering._reporter import BATCH

    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    committed = asyncio.Event()
    # An hour's linger: only a full batch or a flush can make it commit within the test.
    meter = Meter(ledger, linger_s=3600, on_commit=committed.set)
    meter.start()
    try:
        records = records_for_a_busy_call("batched", BATCH)
        for r in records:
            meter.report(r)  # the queue reaches a batch: commit now
        async with asyncio.timeout(10):
            await committed.wait()
        committed.clear()
        meter.report(TurnReported(
            call_id="batched", turn=BATCH, agent="a", eou_delay_ms=1, stt_latency_ms=1, llm_ttft_ms=None,
            tts_ttfb_ms=None, e2e_latency_ms=None, interrupted=False, at=T0,
        ))  # fmt: skip
        async with asyncio.timeout(10):
            await meter.flush()  # does not wait out the linger
        assert len(await ledger.call_turns("batched")) == BATCH + 1
    finally:
        await meter.aclose()
        await ledger.aclose()


async def test_records_the_database_refuses_are_set_aside_loudly_and_the_rest_lands(
    ledger: Ledger, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    # Usage for a call never opened (a foreign-key violation) and a naive timestamp would fail
    # the same batch forever; they must not take the good records down with them.
    good = records_for_a_busy_call("good", 3)
    ghost = UsageReported(
        call_id="ghost", seq=0, line=UsageLine("tts", "polly", "neural", characters=5), agent="a", at=T0
    )
    naive = TurnReported(
        call_id="good", turn=99, agent="a", eou_delay_ms=1, stt_latency_ms=1, llm_ttft_ms=None,
        tts_ttfb_ms=None, e2e_latency_ms=None, interrupted=False, at=T0.replace(tzinfo=None),
    )  # fmt: skip
    rejected_before = sample("voicerun_metering_dropped_total", {"kind": "rejected"})
    meter = Meter(ledger)
    for r in [*good[:-1], ghost, naive, good[-1]]:
        meter.report(r)
    meter.start()
    async with asyncio.timeout(10):
        await meter.flush()
    await meter.aclose()

    call = await ledger.call("good")
    assert call is not None and call.status == "completed"
    assert [ln.characters for ln in await ledger.usage_lines("good")] == [30]
    assert len(await ledger.call_turns("good")) == 3
    assert await ledger.call("ghost") is None
    assert sample("voicerun_metering_dropped_total", {"kind": "rejected"}) - rejected_before == 2
    rejected = [e for e in captured_logs if e["event"] == "metering_record_rejected"]
    assert len(rejected) == 2
    assert "call_id='ghost'" in rejected[0]["record"] and "turn=99" in rejected[1]["record"]
    # The ghost's usage is lost, and the meter says so for its owner to fail; a turn's
    # latencies are diagnostics, not usage.
    [loss] = meter.lost
    assert (loss.records, loss.call_ids) == (1, ("ghost",))
    assert loss.reason.startswith("the ledger refused it: ")


async def test_records_left_when_the_ledger_stays_locked_are_reported_lost(tmp_path: Path) -> None:
    import sqlite3

    from metering import database_url

    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    lock = sqlite3.connect(tmp_path / "voicerun.db", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the file's write lock throughout
        meter = Meter(ledger)
        meter.start()
        for r in records_for_a_busy_call("locked", 2):
            meter.report(r)
        await meter.aclose(timeout_s=0.5)  # a timeout meant to expire: the lock never goes
    finally:
        lock.rollback()
        lock.close()
        await ledger.aclose()
    [loss] = meter.lost
    assert (loss.records, loss.call_ids) == (len(records_for_a_busy_call("locked", 2)), ("locked",))
    assert loss.reason.startswith("ledger unreachable for 0.5 s at shutdown")
