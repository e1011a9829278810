"""`voicerun load`: many calls in one process from one caller recording, for sizing a worker.

N calls run at once, each a full Call (the workflow's providers, or instant ones, metering if
asked) fed the recording at real-time pace; a new call starts as one ends until the total has
run. Measured per turn, at the sink: end of the caller's speech (in the recording's schedule, so
a late event loop counts) to the first agent frame, which is the silence the caller hears.
The benchmarks run this same code.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import structlog

from metering import Meter
from pipeline import (
    ENGINES,
    FRAME_S,
    SAMPLE_RATE,
    Clock,
    Endpointer,
    Int16Array,
    RealClock,
    VADConfig,
    VirtualClock,
    frames,
    loaded_end_of_turn_model,
)
from workflows import Workflow

from ._call import Call
from ._providers import ProviderPool

log = structlog.get_logger("voicerun.load")


def speech_ends(caller: Int16Array, vad: VADConfig) -> list[float]:
    """Where each utterance of the recording ends (its last voiced frame's end, seconds from the
    start), by the same endpointer the session uses."""
    endpointer = Endpointer(vad)
    ends = []
    t = 0.0
    for frame in frames(caller):
        t += FRAME_S
        r = endpointer.process(frame, t - FRAME_S)
        if r.event == "end":
            ends.append(r.last_voiced_s)
    if endpointer.in_speech:
        ends.append(endpointer.end_now())
    return ends


class _LoadCaller:
    """One call's caller and ear: plays the recording, stamped with each frame's arrival, and
    times the first agent frame after each end of speech."""

    def __init__(self, caller: Sequence[bytes], ends: list[float], clock: Clock, turns: _Turns) -> None:
        self._frames = caller  # shared by every call: one copy of the recording per run
        self._ends = ends
        self._clock = clock
        self._turns = turns
        self._waiting: deque[float] = deque()
        self.heard_ms: list[float] = []

    async def frames(self) -> AsyncIterator[tuple[bytes, float]]:
        t0 = self._clock.now()
        ends = deque(t0 + e for e in self._ends)
        for k, frame in enumerate(self._frames):
            arrived = t0 + (k + 1) * FRAME_S
            await self._clock.sleep_until(arrived)
            while ends and ends[0] <= arrived:
                if self._waiting:  # the last turn got no answer before the caller spoke again
                    self._turns.unanswered += 1
                    self._waiting.clear()
                self._waiting.append(ends.popleft())
            yield frame, arrived

    async def send(self, pcm: bytes, t: float) -> None:
        if self._waiting and t >= self._waiting[0]:
            heard = (t - self._waiting.popleft()) * 1000
            self.heard_ms.append(heard)
            self._turns.heard_ms.append(heard)

    def hang_up(self) -> None:
        self._turns.unanswered += len(self._waiting)
        self._waiting.clear()


@dataclass
class _Turns:
    heard_ms: list[float] = field(default_factory=list)
    reported_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    unanswered: int = 0


@dataclass(frozen=True)
class Leaks:
    """What the process holds before the first call and after the last: equal after a clean run."""

    tasks: tuple[int, int]
    threads: tuple[int, int]
    open_files: tuple[int, int]


@dataclass(frozen=True)
class LoadReport:
    concurrency: int
    calls: int
    failed_calls: int
    failures: dict[str, int]
    """Why calls failed, by reason (an exception's type, or the call's end reason)."""
    turns: int
    unanswered_turns: int
    e2e_p50_ms: float | None
    e2e_p95_ms: float | None
    e2e_max_ms: float | None
    """End of the caller's speech -> first agent frame, at the sink (the silence heard)."""
    reported_e2e_p50_ms: float | None
    reported_e2e_p95_ms: float | None
    """The same, as the calls' turn metrics report it: close to the above when metrics are honest."""
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None
    """e2e heard minus the end-of-speech silence and the providers' own latency (first token,
    first audio), per turn: the pipeline's own cost. None with end_of_turn: model (no fixed
    endpoint), and for calls whose turns cannot be paired with what was heard (a barge-in)."""
    call_seconds: float
    cpu_s_per_call_s: float
    rss_start_mb: float
    rss_peak_mb: float
    rss_per_call_mb: float
    rss_drift_mb: float
    """RSS after the last call minus RSS once the process was warm (a fifth of the calls, and at
    least twice the concurrency, had ended; with fewer calls, once the first wave had)."""
    leaks: Leaks
    wall_s: float
    engines: dict[str, float]
    """How busy each engine's threads were over the run (0-1: thread time in jobs / wall time x
    threads): the one near 1 is what limits calls per process. Only engines the run used."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _engine_busy() -> dict[str, tuple[float, int]]:
    """Busy thread-seconds and thread count of each engine so far."""
    out = {e.name: (e.busy_s, e.max_workers) for e in ENGINES}
    model = loaded_end_of_turn_model()
    if model is not None:
        out["end-of-turn"] = (model.busy_s, 1)
    return out


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        return -1


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def run_load(
    workflow: Workflow,
    caller: Int16Array,
    *,
    providers: ProviderPool,
    calls: int,
    total: int | None = None,
    ramp_s: float | None = None,
    meter: Meter | None = None,
    virtual_clock: bool = False,
    on_call_done: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Run `calls` calls at once until `total` (default: `calls`) have run.

    ramp_s: the first calls start spread over this long (default: the recording's length, as
    independent callers would; 0 starts them together). virtual_clock: skip idle time (for
    tests: figures are then compute only). on_call_done(done, total) is told as each call ends.
    """
    if calls < 1:
        raise ValueError("calls must be at least 1")
    total = calls if total is None else total
    if total < calls:
        raise ValueError(f"total ({total}) must be at least calls ({calls})")
    length_s = len(caller) / SAMPLE_RATE
    ramp = length_s if ramp_s is None else ramp_s
    settings = workflow.turn_for(workflow.start)
    vad = VADConfig(mode=settings.vad_mode, start_voiced_ms=settings.start_of_speech_ms,
                    end_silence_ms=settings.end_of_speech_ms, preroll_ms=settings.preroll_ms)  # fmt: skip
    ends = speech_ends(caller, vad)
    caller_frames = tuple(frames(caller))
    endpoint_ms = settings.end_of_speech_ms if settings.end_of_turn == "silence" else None

    turns = _Turns()
    failures: dict[str, int] = {}
    failed = 0
    started = done = 0
    warm_rss: float | None = None
    # The heap grows for the first few hundred calls (allocator arenas, caches) and then holds:
    # drift is measured from there, after a fifth of the run and at least twice the concurrency.
    warm_after = max(2 * calls, total // 5) if total > 2 * calls else calls
    gc.collect()
    engines0 = _engine_busy()
    before = (len(asyncio.all_tasks()), threading.active_count(), _open_files())
    rss0 = peak = rss_mb()
    clock: Clock
    if virtual_clock:
        vclock = VirtualClock()
        vclock.start()
        clock = vclock
    else:
        clock = RealClock()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    slots = asyncio.Semaphore(calls)

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.5)

    async def one(index: int, delay_s: float) -> None:
        nonlocal failed, done, warm_rss, peak
        try:
            if delay_s:
                await clock.sleep_until(clock.now() + delay_s)
            ear = _LoadCaller(caller_frames, ends, clock, turns)
            call = Call(workflow=workflow, providers=providers, caller=ear.frames(), sink=ear,
                        clock=clock, call_id=f"load-{index}", meter=meter)  # fmt: skip
            try:
                record = await call.run()
            finally:
                ear.hang_up()
            summary = record.summary
            assert summary is not None
            if record.status == "failed":
                failed += 1
                failures[summary.reason] = failures.get(summary.reason, 0) + 1
            answered = [t for t in summary.turns if t.e2e_latency_ms is not None]
            turns.reported_ms.extend(t.e2e_latency_ms for t in answered if t.e2e_latency_ms is not None)
            if endpoint_ms is not None and len(answered) == len(ear.heard_ms):
                for t, heard in zip(answered, ear.heard_ms, strict=True):
                    provider_ms = (t.llm_ttft_ms or 0.0) + (t.tts_ttfb_ms or 0.0)
                    turns.overhead_ms.append(heard - endpoint_ms - provider_ms)
        except Exception as exc:
            failed += 1
            name = type(exc).__name__
            failures[name] = failures.get(name, 0) + 1
            log.warning("load_call_failed", call=index, error=str(exc))
        finally:
            done += 1
            peak = max(peak, rss_mb())
            if done == warm_after:
                gc.collect()
                warm_rss = rss_mb()
            if on_call_done is not None:
                on_call_done(done, total)
            slots.release()

    sampler = None if virtual_clock else asyncio.create_task(sample_rss(), name="load-rss")
    try:
        async with asyncio.TaskGroup() as tg:
            while started < total:
                await slots.acquire()
                delay = ramp * started / calls if started < calls else 0.0
                tg.create_task(one(started, delay), name=f"load-call-{started}")
                started += 1
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.wait([sampler])
        if isinstance(clock, VirtualClock):
            await clock.aclose()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    gc.collect()
    await asyncio.sleep(0)  # let finished tasks' callbacks run before they are counted
    rss_end = rss_mb()
    after = (len(asyncio.all_tasks()), threading.active_count(), _open_files())
    call_seconds = total * length_s
    heard = sorted(turns.heard_ms)
    return LoadReport(
        concurrency=calls,
        calls=total,
        failed_calls=failed,
        failures=failures,
        turns=len(heard),
        unanswered_turns=turns.unanswered,
        e2e_p50_ms=round(statistics.median(heard), 2) if heard else None,
        e2e_p95_ms=_pct(heard, 95),
        e2e_max_ms=round(heard[-1], 2) if heard else None,
        reported_e2e_p50_ms=round(statistics.median(turns.reported_ms), 2) if turns.reported_ms else None,
        reported_e2e_p95_ms=_pct(turns.reported_ms, 95),
        overhead_p50_ms=round(statistics.median(turns.overhead_ms), 2) if turns.overhead_ms else None,
        overhead_p95_ms=_pct(turns.overhead_ms, 95),
        call_seconds=round(call_seconds, 3),
        cpu_s_per_call_s=round(cpu / call_seconds, 6) if call_seconds else 0.0,
        rss_start_mb=round(rss0, 1),
        rss_peak_mb=round(peak, 1),
        rss_per_call_mb=round((peak - rss0) / calls, 4),
        rss_drift_mb=round(rss_end - (warm_rss if warm_rss is not None else rss0), 2),
        leaks=Leaks(
            tasks=(before[0], after[0]), threads=(before[1], after[1]), open_files=(before[2], after[2])
        ),
        wall_s=round(wall, 2),
        engines={
            name: round((busy - engines0.get(name, (0.0, 1))[0]) / (wall * threads), 3)
            for name, (busy, threads) in _engine_busy().items()
            if busy > engines0.get(name, (0.0, 1))[0]
        },
    )
