"""The workload every framework runs, and how it is measured: the caller, the speech detector that
drives each fake VAD, the scripted replies, and the JSON a run prints.

Runs inside a peer's own virtual environment, so it imports the standard library and numpy only
(both peers depend on numpy) and nothing from voicerun. It mirrors bench/overhead.py: 20 ms frames
of 16 kHz mono int16 at real-time pace, 1.0 s of speech-like audio then 2 s of silence, five
times a call; speech ends after 300 ms of silence; calls start spread over one 3 s cycle.

overhead = (first reply frame reaches the sink) - (end of the caller's speech) - 300 ms

The end of speech is when the last speech frame was due on the real-time schedule, as
bench/overhead.py times it (agent/_load.py), so an event loop too busy to take the caller's
frames on time adds to the overhead instead of hiding it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
FRAME_S = 0.02
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_S)
SPEECH_S, SILENCE_S, CYCLES = 1.0, 2.0, 5
CYCLE_S = SPEECH_S + SILENCE_S
CALL_S = CYCLES * CYCLE_S
END_SILENCE_S = 0.3
START_VOICED_S = 0.06  # voicerun's VADConfig.start_voiced_ms
VOICED_DBFS = -50.0  # voicerun's VADConfig.min_level_dbfs

TRANSCRIPT = "what time is it"
REPLY = "It is noon. Anything else?"
TTS_SECONDS = 0.2


def reply_chunks(text: str = REPLY, chunks: int = 3) -> list[str]:
    """The reply split as voicerun's ScriptedLLM splits it: 'It is ', 'noon. Anything ', 'else?'."""
    words = text.split(" ")
    step = max(1, -(-len(words) // chunks))
    return [
        " ".join(words[i : i + step]) + (" " if i + step < len(words) else "")
        for i in range(0, len(words), step)
    ]


def tone(seconds: float = TTS_SECONDS, level: float = 0.3) -> bytes:
    """What the fake TTS says for every sentence: a 440 Hz tone, like voicerun's ToneTTS."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * 440 * t) * level * 32767).astype("<i2").tobytes()


def speech_like(seconds: float, seed: int, level: float = 0.3) -> bytes:
    """A voiced buzz with a syllable-rate envelope; the fake VADs only look at its level."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = buzz * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)))
    x = x / np.max(np.abs(x)) * level
    return (x * 32767).astype("<i2").tobytes()


def level_dbfs(pcm: bytes | memoryview) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
    return 20 * math.log10(rms / 32768) if rms > 0 else -120.0


def is_voiced(pcm: bytes | memoryview) -> bool:
    return level_dbfs(pcm) > VOICED_DBFS


class SpeechDetector:
    """voicerun's endpointing by level alone: speech starts after 60 ms of voiced frames and ends
    after 300 ms without one. The LiveKit fake VAD runs it; Pipecat's VADAnalyzer has its own
    state machine with the same thresholds."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.speaking = False
        self.voiced_run_s = 0.0
        self.silent_run_s = 0.0

    def push(self, pcm: bytes | memoryview, duration_s: float = FRAME_S) -> str | None:
        """Feed one frame; returns 'start', 'end' or None."""
        if is_voiced(pcm):
            self.voiced_run_s += duration_s
            self.silent_run_s = 0.0
        else:
            self.voiced_run_s = 0.0
            self.silent_run_s += duration_s
        # The float sums drift by a few ulps, so compare with half a frame of slack.
        if not self.speaking and self.voiced_run_s >= START_VOICED_S - FRAME_S / 2:
            self.speaking = True
            return "start"
        if self.speaking and self.silent_run_s >= END_SILENCE_S - FRAME_S / 2:
            self.speaking = False
            return "end"
        return None


@dataclass
class Caller:
    """One call's audio at real-time pace, and the overheads its replies showed."""

    index: int
    delay_s: float
    overheads_s: list[float] = field(default_factory=list)
    lag_max_s: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: float | None = None

    async def frames(self) -> AsyncIterator[bytes]:
        """The call's frames on an absolute 20 ms schedule, each yielded when it is due (it has
        fully arrived) or as soon after as the framework asks for it."""
        loop = asyncio.get_running_loop()
        speech = speech_like(SPEECH_S, seed=self.index)
        step = FRAME_SAMPLES * 2
        speech_frames = [speech[i : i + step] for i in range(0, len(speech), step)]
        silence_frames = [bytes(step)] * int(SILENCE_S / FRAME_S)
        await asyncio.sleep(self.delay_s)
        t0 = loop.time()
        k = 0
        try:
            for _ in range(CYCLES):
                for i, pcm in enumerate(speech_frames + silence_frames):
                    k += 1
                    due = t0 + k * FRAME_S
                    delay = due - loop.time()
                    await asyncio.sleep(delay if delay > 0 else 0)
                    self.lag_max_s = max(self.lag_max_s, loop.time() - due)
                    yield pcm
                    if i == len(speech_frames) - 1:
                        # A turn still waiting now goes unanswered (in expected_turns, not in
                        # turns): a reply that late would be timed against the wrong turn.
                        self._pending = due
        finally:
            self.done.set()

    def reply_audio(self) -> None:
        """The sink calls this for every reply frame; the first one after a turn counts."""
        if self._pending is not None:
            now = asyncio.get_running_loop().time()
            self.overheads_s.append(now - self._pending - END_SILENCE_S)
            self._pending = None


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def measure(
    calls: int, min_turns: int, run_call: Callable[[Caller], Awaitable[None]]
) -> dict[str, object]:
    """`calls` concurrent calls, repeated (as bench/overhead.py does) until `min_turns` turns;
    returns bench/overhead.py's JSON keys plus what tells a run that could not keep up."""
    rounds = max(1, -(-min_turns // (calls * CYCLES)))
    callers: list[Caller] = []
    errors: list[str] = []

    async def guarded(caller: Caller) -> None:
        try:
            await run_call(caller)
        except Exception as e:  # a failing call is reported, the others go on
            errors.append(f"call {caller.index}: {type(e).__name__}: {e}")

    gc.collect()
    rss0 = rss_mb()
    peak = rss0

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    cpu0 = time.process_time()
    for r in range(rounds):
        batch = [Caller(r * calls + i, CYCLE_S * i / calls) for i in range(calls)]
        callers += batch
        await asyncio.gather(*(guarded(c) for c in batch))
    cpu = time.process_time() - cpu0
    sampler.cancel()
    peak = max(peak, rss_mb())
    ms = sorted(x * 1000 for c in callers for x in c.overheads_s)
    return {
        "calls": calls,
        "turns": len(ms),
        "expected_turns": rounds * calls * CYCLES,
        "p50_ms": statistics.median(ms) if ms else None,
        "p95_ms": float(np.percentile(ms, 95)) if ms else None,
        "max_ms": ms[-1] if ms else None,
        "cpu_s_per_call_s": cpu / (rounds * calls * CALL_S),
        "rss_mb": peak,
        "rss_growth_mb": peak - rss0,
        "input_lag_max_ms": max(c.lag_max_s for c in callers) * 1000,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def main(framework: str, version: str, run_call: Callable[[Caller], Awaitable[None]]) -> None:
    """A runner's command line: `--calls N [--min-turns 50]`, one JSON object on stdout."""
    ap = argparse.ArgumentParser(description=f"{framework} on the overhead workload")
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--min-turns", type=int, default=50, help="as bench/overhead.py: repeat small runs")
    args = ap.parse_args()
    result = asyncio.run(measure(args.calls, args.min_turns, run_call))
    result = {"framework": framework, "version": version, **result}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
