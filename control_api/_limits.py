"""Rate limits per API key: fixed one-minute windows per route class (seed 002's defaults), shared
by every API process through Redis when REDIS_URL is set, else counted in this process."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

DEFAULT_LIMITS: Mapping[str, int] = {"dial": 10, "create": 30, "status": 60, "list": 30, "other": 60}
"""Requests per minute per key and route class (seed 002: dial 10, create 30, status 60, list 30)."""
WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    """Seconds until the window resets."""


class Counter(Protocol):
    async def incr(self, key: str, ttl_s: int) -> int:
        """Add one to `key` (created with `ttl_s` to live) and return the new count."""
        ...

    async def aclose(self) -> None: ...


class LocalCounter:
    """This process's counts: right for one API process; several behind a balancer need Redis."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}

    async def incr(self, key: str, ttl_s: int) -> int:
        now = self._clock()
        if len(self._counts) > 10_000:  # drop expired windows now and then: memory stays bounded
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        count, expires = self._counts.get(key, (0, now + ttl_s))
        if expires <= now:
            count, expires = 0, now + ttl_s
        self._counts[key] = (count + 1, expires)
        return count + 1

    async def aclose(self) -> None:
        return None


class RedisCounter:
    """Counts in Redis: INCR and EXPIRE in one transaction, so every API process sees one count."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)

    async def incr(self, key: str, ttl_s: int) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, ttl_s, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def aclose(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(
        self,
        counter: Counter,
        limits: Mapping[str, int] = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._counter = counter
        self._limits = {**DEFAULT_LIMITS, **limits}
        self._clock = clock

    async def hit(self, api_key: str, route_class: str) -> Verdict:
        limit = self._limits.get(route_class, self._limits["other"])
        now = self._clock()
        window = int(now // WINDOW_S)
        # the key's hash, never the key: Redis keys show up in monitoring and dumps
        who = hashlib.sha256(api_key.encode()).hexdigest()[:32]
        count = await self._counter.incr(f"voicerun:rl:{who}:{route_class}:{window}", WINDOW_S + 1)
        reset_s = max(1, int((window + 1) * WINDOW_S - now + 0.999))
        return Verdict(count <= limit, limit, max(0, limit - count), reset_s)

    async def aclose(self) -> None:
        await self._counter.aclose()


def parse_limits(text: str) -> dict[str, int]:
    """VOICERUN_API_RATE_LIMITS, e.g. "dial=10,create=30": per route class, requests per minute."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in DEFAULT_LIMITS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(
                f"rate limit {part!r}: expected CLASS=N with N ≥ 1 and CLASS one of {', '.join(DEFAULT_LIMITS)}"
            )
        out[name.strip()] = int(value)
    return out
