"""End of speech -> first agent audio on the embedded engines, through whole real-time calls.

A caller (Hibari's voice, slowed) asks the front-desk workflow ten questions with pauses between
them; the call runs on the real clock through the same path as `voicerun run` (webrtcvad, Whisper
with speculative decoding, rules, Hibari). Reports e2e per turn and the work after the endpoint
(e2e minus the 300 ms end-of-speech silence).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embedded_call.py [--calls 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
from pathlib import Path

import numpy as np
import structlog

from agent import ProviderPool, call_from_recording
from pipeline import SAMPLE_RATE, to_internal
from workflows import load_workflow

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "examples" / "front-desk.yaml"
QUESTIONS = (
    "What time do you open tonight?",
    "Where are you located?",
    "Can I book a table for four?",
    "When do you close on weekends?",
    "What is your address again?",
    "I would like to make a reservation.",
    "Are you open on Sunday?",
    "Is there parking near your location?",
    "Can I reserve a table by the window?",
    "How late are you open?",
)


def caller_audio() -> np.ndarray:
    from hibari import Hibari

    tts = Hibari()
    parts = [np.zeros(5 * SAMPLE_RATE, np.int16)]  # let the greeting play
    for q in QUESTIONS:
        parts.append(to_internal(tts(q, speed=0.9, seed=5), 24_000))
        parts.append(np.zeros(int(6.0 * SAMPLE_RATE), np.int16))
    return np.concatenate(parts)


async def one_call(audio: np.ndarray, providers: ProviderPool) -> list[float]:
    record, _ = await call_from_recording(load_workflow(WORKFLOW), audio, fast=False, providers=providers)
    assert record.summary is not None
    return [t.e2e_latency_ms for t in record.summary.turns if t.e2e_latency_ms is not None]


async def main(calls: int) -> None:
    audio = caller_audio()
    providers = ProviderPool()
    e2e: list[float] = []
    try:
        for _ in range(calls):
            e2e += await one_call(audio, providers)
    finally:
        await providers.aclose()
    e2e.sort()
    p95 = float(np.percentile(e2e, 95))
    print(f"machine: {os.cpu_count()} cores; {len(e2e)} turns over {calls} real-time calls")
    print(
        f"end of speech -> first agent audio: median {statistics.median(e2e):.0f} ms, p95 {p95:.0f} ms, "
        f"max {e2e[-1]:.0f} ms"
    )
    print(
        f"work after the 300 ms endpoint:     median {statistics.median(e2e) - 300:.0f} ms, p95 {p95 - 300:.0f} ms"
    )


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2)
    asyncio.run(main(ap.parse_args().calls))
