"""Clocks for the metering tests: no test reads the wall clock where it meets a fixed date."""

from __future__ import annotations

import time
from datetime import datetime, timedelta


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


class RunningClock:
    """A wall clock that starts at a fixed instant and runs at real speed: for tests that wait
    on real timers (retry backoff, leases) but must not depend on today's date."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0)
