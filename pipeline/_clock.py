"""Time for the pipeline: every timestamp and every pacing wait goes through a Clock.

RealClock is the event loop's monotonic clock. VirtualClock runs a call "as fast as possible on
the recording's own timeline": while nothing is computing, time jumps straight to the next
deadline (silence and playback cost nothing); while work is in flight (a decode in a thread, a
provider request), time advances at the real rate, so latency figures still include compute.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic timeline."""
        ...

    async def sleep_until(self, deadline: float) -> None: ...

    def busy(self) -> Any:
        """Async context manager marking real work in flight (a no-op on a real clock)."""
        ...


class RealClock:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self._loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        yield


class _CountingExecutor(ThreadPoolExecutor):
    """Default executor that tells the clock while thread work is in flight."""

    def __init__(self, clock: VirtualClock, loop: asyncio.AbstractEventLoop, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="voicerun-work")
        self._clock = clock
        self._loop = loop

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._clock._enter_busy()
        fut = super().submit(fn, *args, **kwargs)
        # run_in_executor wraps `fut` right after submit() returns; registering on the next loop
        # turn puts our callback behind asyncio's, so the result reaches the loop before "busy"
        # ends and the clock can never jump while a finished result is still in flight.
        self._loop.call_soon(fut.add_done_callback, self._done)
        return fut

    def _done(self, _fut: Future[Any]) -> None:
        self._loop.call_soon_threadsafe(self._clock._exit_busy)


_ACTIVE: dict[asyncio.AbstractEventLoop, VirtualClock] = {}
"""The VirtualClock started on each loop (work on an engine's own threads reports to it)."""


def count_as_busy(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
    """Thread work outside the default executor: under a VirtualClock, time does not jump while
    it runs (the real clock needs nothing)."""
    clock = _ACTIVE.get(loop)
    if clock is None:
        return
    clock._enter_busy()
    # Registered first, this runs before the callbacks and awaiters added later, and it ends
    # "busy" one loop turn after that: the result reaches them before time can move.
    future.add_done_callback(lambda _: loop.call_soon(clock._exit_busy))


class VirtualClock:
    """Autojumping clock; start() installs it on the running loop, aclose() removes it."""

    def __init__(self, max_workers: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._now = 0.0
        self._busy = 0
        self._anchor = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._executor = _CountingExecutor(self, self._loop, max_workers)
        self._driver: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop.set_default_executor(self._executor)
        _ACTIVE[self._loop] = self
        self._driver = asyncio.create_task(self._drive(), name="virtual-clock")

    async def aclose(self) -> None:
        if _ACTIVE.get(self._loop) is self:
            del _ACTIVE[self._loop]
        if self._driver is not None:
            self._driver.cancel()
            try:
                await self._driver
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def now(self) -> float:
        if self._busy:
            return self._now + (self._loop.time() - self._anchor)
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.now():
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        self._changed.set()
        try:
            await fut
        except asyncio.CancelledError:
            # A cancelled sleeper (a call's max-duration watchdog) would stay in the heap until
            # its deadline, hours away: drop them once they are most of it.
            self._cancelled += 1
            if self._cancelled > 64 and 2 * self._cancelled > len(self._sleepers):
                self._sleepers = [s for s in self._sleepers if not s[2].done()]
                heapq.heapify(self._sleepers)
                self._cancelled = 0
            raise

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        self._enter_busy()
        try:
            yield
        finally:
            self._exit_busy()

    def _enter_busy(self) -> None:
        if self._busy == 0:
            self._anchor = self._loop.time()
        self._busy += 1

    def _exit_busy(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._now += self._loop.time() - self._anchor
            self._changed.set()

    def _wake_due(self) -> bool:
        now = self.now()
        woke = False
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
                woke = True
        return woke

    async def _settle(self) -> None:
        # Let every runnable callback run before deciding that the loop is idle. asyncio has no
        # public "is anything ready" query; _ready is the run queue BaseEventLoop has always had.
        ready = getattr(self._loop, "_ready", None)
        for _ in range(10_000):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return

    async def _drive(self) -> None:
        while True:
            await self._settle()
            if self._wake_due():
                # Whoever woke must run (and maybe sleep again, sooner) before time moves on.
                continue
            if self._busy:
                self._changed.clear()
                timeout = (self._sleepers[0][0] - self.now()) if self._sleepers else None
                try:
                    async with asyncio.timeout(max(timeout, 0.0) if timeout is not None else None):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            if self._sleepers:
                # Nothing is runnable and nothing computes: jump to the next deadline.
                self._now = max(self._now, self._sleepers[0][0])
                continue
            self._changed.clear()
            await self._changed.wait()
