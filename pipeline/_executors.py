"""Bounded thread pools, one per CPU-bound engine (Whisper, Hibari).

Each engine's blocking work runs on threads of its own, never on the event loop's default
executor: a burst of decodes then waits for the engine's own threads instead of taking every
default thread that tool resolution, boto3 reads and the rest of the process need. The pools are
per process and shared by every call and every event loop; threads start on first use.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ._clock import count_as_busy

T = TypeVar("T")


class EngineExecutor:
    def __init__(self, name: str, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"{name} executor needs at least one thread, got {max_workers}")
        self.name = name
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.jobs = 0
        self.busy_s = 0.0
        """Thread time spent in jobs so far: against wall time x max_workers, how saturated the
        engine is (`voicerun load` reports it, to name the bottleneck)."""

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"voicerun-{self.name}")
            return self._pool

    def submit(self, fn: Callable[..., T], /, *args: object) -> asyncio.Future[T]:
        """Run fn(*args) on this engine's threads; the loop's future for its result. Under a
        VirtualClock the work counts as busy, so time does not jump past it."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), self._timed, fn, *args)
        count_as_busy(loop, future)
        return future

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        return await self.submit(fn, *args)

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.jobs += 1
                self.busy_s += time.perf_counter() - start


def _workers(default: int) -> int:
    import os

    return max(1, min(default, os.cpu_count() or 1))


WHISPER = EngineExecutor("whisper", _workers(2))
"""Decodes of every Whisper utterance in the process: CTranslate2 runs one at a time per model
(num_workers=1) on its own intra-op threads, so more threads here would only wait on its lock."""
HIBARI = EngineExecutor("hibari", _workers(2))
"""Sentences of every Hibari synthesis in the process."""
ENGINES = (WHISPER, HIBARI)
