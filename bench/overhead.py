"""Pipeline overhead and calls per process, with instant scripted providers (run by hand).

Workload (the one other runtimes were measured with): each call feeds 20 ms frames at real-time
pace, 1.0 s of speech-like audio then 2 s of silence, five times; end-of-speech silence 300 ms;
the STT returns its final transcript the moment speech ends, the LLM streams three chunks at once,
the TTS returns 200 ms of audio per sentence at once.

overhead = (first reply frame reaches the sink) - (last speech frame delivered) - 300 ms

Calls start spread evenly over one 3 s cycle, as independent callers would.

    .venv/bin/python bench/overhead.py              # 1, 10, 50, 100, 150, 200 calls
    .venv/bin/python bench/overhead.py --calls 100
    .venv/bin/python bench/overhead.py --calls 1 100 --metered   # every call reported to a SQLite ledger
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from pipeline import FRAME_S, Dialogue, RealClock, SessionConfig, TurnConfig, VADConfig, VoiceSession, frames
from pipeline.testing import ScriptedLLM, ScriptedSTT, ToneTTS, speech_like

END_SILENCE_MS = 300
CYCLES = 5
SPEECH_S, SILENCE_S = 1.0, 2.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


BENCH_WORKFLOW = """
version: 1
slug: bench
start: bench
defaults: {stt: whisper, llm: rules, tts: hibari}
agents:
  bench:
    instructions: Bench.
"""


async def one_call(
    index: int, delay_s: float, overheads: list[float], clock: RealClock, meter: Any = None
) -> None:
    speech = [f for f in frames(speech_like(SPEECH_S, seed=index))]
    silence = [bytes(len(speech[0]))] * int(SILENCE_S / FRAME_S)
    last_speech_at: list[float] = []
    pending: list[float] = []

    async def caller() -> AsyncIterator[bytes]:
        await asyncio.sleep(delay_s)
        t0 = clock.now()
        k = 0
        for _ in range(CYCLES):
            for i, f in enumerate(speech + silence):
                k += 1
                await clock.sleep_until(t0 + k * FRAME_S)
                yield f
                if i == len(speech) - 1:
                    last_speech_at.append(clock.now())
                    pending.append(clock.now())

    class Sink:
        async def send(self, pcm: bytes, t: float) -> None:
            if pending:
                overheads.append(clock.now() - pending.pop() - END_SILENCE_MS / 1000)

    on_event = None
    metering = None
    if meter is not None:
        # The worker's own adapter: usage lines and turns reported to the Meter as a call runs.
        from agent._call import CallRecord, _Metering
        from workflows import load_workflow_text

        record = CallRecord(f"bench-{index}", "bench", datetime.now(UTC), ["bench"])
        metering = _Metering(record, load_workflow_text(BENCH_WORKFLOW), meter)
        metering.opened()
        on_event = metering.on_event
    session = VoiceSession(
        on_event=on_event,
        stt=await ScriptedSTT(["what time is it"]).connect(),
        tts=ToneTTS(0.2),
        dialogue=Dialogue(ScriptedLLM("It is noon. Anything else?", chunks=3), "bench"),
        sink=Sink(),
        clock=clock,
        config=SessionConfig(turn=TurnConfig(vad=VADConfig(end_silence_ms=END_SILENCE_MS))),
    )
    summary = await session.run(caller())
    if metering is not None:
        record.summary = summary
        metering.closed(summary.duration_s, summary.reason)


async def run(n: int, repeat: int = 1, metered: bool = False) -> dict[str, float]:
    """n concurrent calls, `repeat` times over; turns are pooled across the repeats."""
    clock = RealClock()
    overheads: list[float] = []
    gc.collect()
    rss0 = rss_mb()
    cpu0 = time.process_time()
    peak = rss0

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    cycle = SPEECH_S + SILENCE_S
    async with contextlib.AsyncExitStack() as stack:
        meter = None
        if metered:
            from metering import Ledger, database_url, load_catalog
            from metering._reporter import Meter

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            ledger = await Ledger.open(database_url(None, Path(tmp)), catalog=load_catalog())
            stack.push_async_callback(ledger.aclose)
            meter = await stack.enter_async_context(Meter(ledger))
        for r in range(repeat):
            await asyncio.gather(
                *(one_call(r * n + i, cycle * i / n, overheads, clock, meter) for i in range(n))
            )
    sampler.cancel()
    cpu = time.process_time() - cpu0
    call_seconds = repeat * n * CYCLES * cycle
    ms = sorted(x * 1000 for x in overheads)
    return {
        "calls": n,
        "turns": len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": ms[-1],
        "cpu_s_per_call_s": cpu / call_seconds,
        "rss_mb": peak,
        "rss_growth_mb": peak - rss0,
    }


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, nargs="*", default=[1, 10, 50, 100, 150, 200])
    ap.add_argument(
        "--min-turns", type=int, default=50, help="repeat small runs until they give this many turns"
    )
    ap.add_argument("--metered", action="store_true", help="report every call to a SQLite ledger")
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, python {os.sys.version.split()[0]}; "
        f"max RSS before: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print(
        f"{'calls':>5} {'turns':>5} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'cpu s/call-s':>12} {'RSS MB':>7} {'MB/call':>8}"
    )
    base: dict[str, float] | None = None
    for n in args.calls:
        r = asyncio.run(run(n, repeat=max(1, -(-args.min_turns // (n * CYCLES))), metered=args.metered))
        if base is None:
            base = r
        per_call = (r["rss_mb"] - base["rss_mb"]) / (n - 1) if n > 1 else float("nan")
        print(
            f"{n:>5} {r['turns']:>5.0f} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['max_ms']:>7.2f} "
            f"{r['cpu_s_per_call_s']:>12.5f} {r['rss_mb']:>7.1f} {per_call:>8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
