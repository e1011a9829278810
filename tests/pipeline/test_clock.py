"""The virtual clock skips idle time and charges real time while work runs."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline import VirtualClock


async def test_idle_waits_cost_nothing() -> None:
    clock = VirtualClock()
    clock.start()
    started = time.perf_counter()
    await clock.sleep_until(3600.0)
    assert clock.now() == pytest.approx(3600.0)
    assert time.perf_counter() - started < 1.0
    await clock.aclose()


async def test_sleepers_wake_in_deadline_order() -> None:
    clock = VirtualClock()
    clock.start()
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep_until(float(n))
        woke.append(n)

    await asyncio.gather(*(sleeper(n) for n in (5, 1, 3)))
    assert woke == [1, 3, 5]
    await clock.aclose()


async def test_thread_work_advances_time_at_the_real_rate() -> None:
    clock = VirtualClock()
    clock.start()
    t0 = clock.now()
    await asyncio.to_thread(time.sleep, 0.05)  # stands in for a decode
    elapsed = clock.now() - t0
    assert 0.05 <= elapsed < 0.5
    await clock.aclose()


async def test_a_deadline_inside_thread_work_is_not_jumped_over() -> None:
    clock = VirtualClock()
    clock.start()
    order: list[str] = []

    async def tick() -> None:
        await clock.sleep_until(clock.now() + 0.01)
        order.append("tick")

    async def work() -> None:
        await asyncio.to_thread(time.sleep, 0.1)
        order.append("work")

    await asyncio.gather(work(), tick())
    assert order == ["tick", "work"]
    await clock.aclose()


async def test_cancelled_sleepers_do_not_pile_up_until_their_deadline() -> None:
    # Each call's max-duration watchdog sleeps for an hour and is cancelled when the call ends:
    # thousands of calls on one clock must not keep thousands of them.
    clock = VirtualClock()
    clock.start()
    try:
        for _ in range(20):
            sleepers = [asyncio.create_task(clock.sleep_until(clock.now() + 3600)) for _ in range(100)]
            await asyncio.sleep(0)
            for task in sleepers:
                task.cancel()
            await asyncio.gather(*sleepers, return_exceptions=True)
        assert len(clock._sleepers) <= 200
        await clock.sleep_until(clock.now() + 1.0)  # the clock still keeps time
    finally:
        await clock.aclose()
