"""Metering cost on the audio path and ledger throughput (run by hand).

1. report(): what one Meter.report() call costs the event loop (the audio path's only contact
   with metering), per record, with the Prometheus observations it makes.
3. Export: the outbox those calls queued (six steps each), sent to a local stand-in of the
   usage-tracking API that answers 200 at once; events per second through the exporter.
2. Ledger throughput: CALLS calls of TURNS turns each (per turn: 1 STT, 1 LLM and 2 TTS usage
   records and 1 turn record; plus open and close), reported as fast as possible; how long until
   everything is committed, records per second, and how big the batches got.

    .venv/bin/python bench/metering_load.py                       # SQLite in a temp dir
    .venv/bin/python bench/metering_load.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import structlog
from aiohttp import web

from metering import (
    BillingIdentity,
    CallClosed,
    CallOpened,
    Ledger,
    Meter,
    Record,
    TurnReported,
    UsageExporter,
    UsageLine,
    UsageReported,
    database_url,
    load_catalog,
)

T0 = datetime(2026, 11, 27, tzinfo=UTC)


def call_records(call_id: str, turns: int) -> list[Record]:
    out: list[Record] = [CallOpened(call_id=call_id, workflow_slug="bench", started_at=T0)]
    seq = 0
    for t in range(turns):
        for line in (
            UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal("1.840")),
            UsageLine(
                "llm", "openai", "gpt-4o-mini", prompt_tokens=900, completion_tokens=40, cached_tokens=512
            ),
            UsageLine("tts", "polly", "neural", characters=48),
            UsageLine("tts", "polly", "neural", characters=61),
        ):
            out.append(UsageReported(call_id=call_id, seq=seq, line=line, agent="front", at=T0))
            seq += 1
        out.append(
            TurnReported(
                call_id=call_id, turn=t, agent="front", eou_delay_ms=300.0, stt_latency_ms=120.0,
                llm_ttft_ms=250.0, tts_ttfb_ms=90.0, e2e_latency_ms=650.0, interrupted=False, at=T0,
            )
        )  # fmt: skip
    out.append(
        CallClosed(
            call_id=call_id,
            status="completed",
            reason="hangup",
            ended_at=T0 + timedelta(minutes=2),
            duration_s=120.0,
        )
    )
    return out


class CountingLedger(Ledger):
    batches: list[int]

    async def write(self, records):  # type: ignore[no-untyped-def]
        self.batches.append(len(records))
        await super().write(records)


async def main(url: str | None, calls: int, turns: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = database_url(url, Path(tmp))
        if url:
            # A database of its own, dropped afterwards.
            import asyncpg
            from sqlalchemy.engine import make_url

            admin = make_url(db).set(drivername="postgresql").render_as_string(hide_password=False)
            name = f"voicerun_bench_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            db = make_url(db).set(database=name).render_as_string(hide_password=False)
        ledger = await CountingLedger.open(
            db, catalog=load_catalog(), billing=BillingIdentity(agent_id="a", customer_id="c")
        )
        ledger.batches = []
        try:
            records = [r for i in range(calls) for r in call_records(f"call-{i}", turns)]
            meter = Meter(ledger, queue_size=10_000)

            # 1. report() alone (writer not started, queue big enough): the audio path's cost.
            probe = call_records("probe", 200)[:1000]
            t = time.perf_counter_ns()
            for r in probe:
                meter.report(r)
            per_record_us = (time.perf_counter_ns() - t) / len(probe) / 1000
            meter.start()
            await meter.flush()

            # 2. Throughput: everything reported at once, committed in batches.
            t0 = time.perf_counter()
            lags: list[float] = []
            for i in range(0, len(records), 500):
                for r in records[i : i + 500]:
                    meter.report(r)
                t_yield = time.perf_counter()
                await asyncio.sleep(0)  # let the writer run, as calls would between frames
                lags.append(time.perf_counter() - t_yield)
            await meter.flush()
            elapsed = time.perf_counter() - t0
            await meter.aclose()
            status = await ledger.outbox_status()
            print(f"database: {make_safe(db)}")
            print(f"report(): {per_record_us:.1f} us per record (event loop time, Prometheus included)")
            print(
                f"ledger: {calls} calls x {turns} turns = {len(records)} records committed in {elapsed:.2f} s "
                f"= {len(records) / elapsed:,.0f} records/s; {len(ledger.batches)} batches, "
                f"median {statistics.median(ledger.batches):.0f}, max {max(ledger.batches)} records; "
                f"dropped turns {meter.dropped_turns}"
            )
            print(f"outbox: {status.pending} events queued for billing ({calls + 1} calls x 6 steps)")
            api, base_url = await _stub_api()
            try:
                exporter = UsageExporter(ledger, base_url=base_url, api_key="bench")
                t0 = time.perf_counter()
                done = await exporter.drain(timeout_s=600)
                took = time.perf_counter() - t0
                await exporter.aclose()
            finally:
                await api.cleanup()
            print(
                f"export: {done.delivered} events delivered in {took:.2f} s = {done.delivered / took:,.0f} events/s "
                f"(4 calls at a time, each call's steps in order); {done.pending} pending"
            )
        finally:
            await ledger.aclose()
            if url:
                conn = await asyncpg.connect(admin)
                await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                await conn.close()


async def _stub_api() -> tuple[web.AppRunner, str]:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def make_safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--database-url")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--turns", type=int, default=20)
    a = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(a.database_url, a.calls, a.turns))
