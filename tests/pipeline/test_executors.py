"""Engine work runs on bounded threads of its own, and a VirtualClock waits for it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline import VirtualClock
from pipeline._executors import HIBARI, WHISPER, EngineExecutor


async def test_a_burst_of_engine_work_neither_grows_past_its_bound_nor_starves_the_loops_executor() -> None:
    engine = EngineExecutor("burst", 2)
    release = threading.Event()
    running: list[str] = []

    def work(i: int) -> int:
        running.append(threading.current_thread().name)
        release.wait()
        return i

    jobs = [engine.submit(work, i) for i in range(6)]
    # The default executor still answers while all six wait on the engine's two threads.
    assert await asyncio.to_thread(lambda: "default executor is free") == "default executor is free"
    threads = [t.name for t in threading.enumerate() if t.name.startswith("voicerun-burst")]
    assert len(threads) == 2
    release.set()
    assert await asyncio.gather(*jobs) == list(range(6))
    assert set(running) <= set(threads)
    assert engine.jobs == 6 and engine.busy_s > 0  # what `voicerun load` reports as how busy it was


async def test_a_virtual_clock_does_not_jump_past_engine_work_in_flight() -> None:
    clock = VirtualClock()
    clock.start()
    engine = EngineExecutor("clocked", 1)
    release = threading.Event()
    try:
        job = engine.submit(release.wait)
        sleeper = asyncio.create_task(clock.sleep_until(clock.now() + 10.0))
        # The loop idles with only the engine's thread at work: the clock's driver would jump
        # to the sleeper's deadline at once if it did not know about that work. (The wait only
        # gives it the chance; the sleeper cannot finish however long it is.)
        done, _ = await asyncio.wait({sleeper}, timeout=0.2)
        assert not done, "time jumped while an engine was still working"
        release.set()
        await job
        await sleeper
    finally:
        await clock.aclose()


def test_engine_pools_are_bounded_by_the_machine() -> None:
    import os

    for engine in (WHISPER, HIBARI):
        assert 1 <= engine.max_workers <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="at least one thread"):
        EngineExecutor("none", 0)
