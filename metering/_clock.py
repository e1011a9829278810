"""The wall clock metering reads: one per process, injected, so tests drive time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""


def utcnow() -> datetime:
    return datetime.now(UTC)
