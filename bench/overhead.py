"""Pipeline overhead and calls per process, through the Call API with instant providers (run by hand).

Workload (the one the peers are measured with, bench/peers): each call feeds 20 ms frames at
real-time pace, 1.0 s of speech-like audio then 2 s of silence, five times; end-of-speech
silence 300 ms; the STT returns its final transcript the moment speech ends, the LLM streams
three chunks at once, the TTS returns 200 ms of audio per sentence at once.

overhead = (first reply frame reaches the sink) - (end of the caller's speech) - 300 ms

It runs `voicerun load`'s code (agent/_load.py: whole Calls, frames stamped on arrival), with
`--total` = the calls, so a figure is what `voicerun load --instant-providers` prints.
Calls start spread evenly over one 3 s cycle, as independent callers would.

    .venv/bin/python bench/overhead.py              # 1, 10, 50, 100, 150, 200 calls
    .venv/bin/python bench/overhead.py --calls 100 300 500
    .venv/bin/python bench/overhead.py --calls 1 100 --metered   # every call reported to a SQLite ledger
    .venv/bin/python bench/overhead.py --calls 10 --json          # one JSON object per line (bench/peers)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from agent import LoadReport, ProviderPool, run_load
from pipeline import SAMPLE_RATE
from pipeline.testing import instant_providers, speech_like
from workflows import load_workflow_text

END_SILENCE_MS = 300
CYCLES = 5
SPEECH_S, SILENCE_S = 1.0, 2.0

BENCH_WORKFLOW = f"""
version: 1
slug: bench
start: bench
defaults:
  stt: whisper
  llm: {{provider: openai, model: gpt-4o-mini}}
  tts: hibari
  turn: {{end_of_turn: silence, end_of_speech_ms: {END_SILENCE_MS}}}
agents:
  bench:
    instructions: Bench.
"""


def caller_audio(seed: int = 0) -> np.ndarray:
    silence = np.zeros(int(SILENCE_S * SAMPLE_RATE), np.int16)
    return np.concatenate(
        [part for k in range(CYCLES) for part in (speech_like(SPEECH_S, seed=seed + k), silence)]
    )


async def run(n: int, total: int, metered: bool) -> LoadReport:
    workflow = load_workflow_text(BENCH_WORKFLOW)
    async with contextlib.AsyncExitStack() as stack:
        pool = ProviderPool(instant_providers())
        stack.push_async_callback(pool.aclose)
        meter = None
        if metered:
            from metering import Ledger, Meter, database_url, load_catalog

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            ledger = await Ledger.open(database_url(None, Path(tmp)), catalog=load_catalog())
            stack.push_async_callback(ledger.aclose)
            meter = await stack.enter_async_context(Meter(ledger))
        return await run_load(
            workflow, caller_audio(), providers=pool, calls=n, total=total,
            ramp_s=SPEECH_S + SILENCE_S, meter=meter,
        )  # fmt: skip


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, nargs="*", default=[1, 10, 50, 100, 150, 200])
    ap.add_argument(
        "--min-turns",
        type=int,
        default=50,
        help="run more calls in small runs until they give this many turns",
    )
    ap.add_argument("--metered", action="store_true", help="report every call to a SQLite ledger")
    ap.add_argument("--json", action="store_true", help="print one JSON object per calls-count")
    args = ap.parse_args()
    out = sys.stdout
    if not args.json:
        print(
            f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; "
            f"max RSS before: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )
        print(f"{'calls':>5} {'turns':>5} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'reported p95':>12} "
              f"{'cpu s/call-s':>12} {'RSS MB':>7} {'MB/call':>8} {'failed':>6}")  # fmt: skip
    base: LoadReport | None = None
    for n in args.calls:
        total = max(n, -(-args.min_turns // CYCLES))
        r = asyncio.run(run(n, total, args.metered))
        base = base or r
        per_call = (
            (r.rss_peak_mb - base.rss_peak_mb) / (n - base.concurrency) if n > base.concurrency else None
        )

        # Measured as the peers are (bench/peers): heard at the sink from where the caller's
        # speech ends in the schedule, minus the 300 ms endpoint, nothing else subtracted.
        def less_endpoint(ms: float | None) -> float | None:
            return None if ms is None else round(ms - END_SILENCE_MS, 2)

        p50, p95, max_ms = (
            less_endpoint(r.e2e_p50_ms),
            less_endpoint(r.e2e_p95_ms),
            less_endpoint(r.e2e_max_ms),
        )
        if args.json:
            row: dict[str, Any] = {
                "framework": "voicerun",
                "calls": n,
                "turns": r.turns,
                "unanswered": r.unanswered_turns,
                "p50_ms": p50,
                "p95_ms": p95,
                "max_ms": max_ms,
                "cpu_s_per_call_s": r.cpu_s_per_call_s,
                "rss_mb": r.rss_peak_mb,
                "rss_growth_mb": r.rss_peak_mb - r.rss_start_mb,
                "mb_per_extra_call": per_call,
                "failed_calls": r.failed_calls,
            }
            print(json.dumps(row), file=out, flush=True)
            continue
        reported = less_endpoint(r.reported_e2e_p95_ms) or 0.0
        print(
            f"{n:>5} {r.turns:>5} {p50 or 0:>7.2f} {p95 or 0:>7.2f} {max_ms or 0:>7.2f} "
            f"{reported:>12.2f} {r.cpu_s_per_call_s:>12.5f} {r.rss_peak_mb:>7.1f} "
            f"{'—' if per_call is None else f'{per_call:.3f}':>8} {r.failed_calls:>6}",
            flush=True,
        )


if __name__ == "__main__":
    main()
