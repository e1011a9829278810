"""Per-key rate limits: seed 002's defaults, headers, 429, and one count across API processes
sharing Redis (two apps, each with its own limiter, here)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from control_api import (
    LiveKitCalls,
    LiveKitConfig,
    LocalCounter,
    RateLimiter,
    RedisCounter,
    create_app,
    parse_limits,
)
from metering import Ledger, load_catalog
from tests.control_api.test_calls import WORKFLOW
from workflows import WorkflowRegistry, load_workflow_text

REDIS_ENV = "VOICERUN_TEST_REDIS_URL"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0  # a window boundary: 60 divides it

    def __call__(self) -> float:
        return self.t


async def test_a_key_gets_its_limit_per_minute_then_429_with_the_reset() -> None:
    clock = Clock()
    limiter = RateLimiter(LocalCounter(clock), {"status": 3}, clock)
    verdicts = [await limiter.hit("key-a", "status") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0] and verdicts[0].limit == 3
    assert (await limiter.hit("key-b", "status")).allowed  # per key
    assert (await limiter.hit("key-a", "list")).allowed  # per route class
    clock.t += 45
    assert (await limiter.hit("key-a", "status")).reset_s == 15
    clock.t += 15  # the next window
    assert (await limiter.hit("key-a", "status")).allowed


def test_limits_are_configurable_and_a_typo_is_named() -> None:
    assert parse_limits("dial=5, create=100") == {"dial": 5, "create": 100}
    with pytest.raises(ValueError, match="'dail=5'"):
        parse_limits("dail=5")
    with pytest.raises(ValueError, match="N ≥ 1"):
        parse_limits("dial=0")


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[tuple[list[str], str]]:
    """Two API servers on one SQLite ledger and one Redis, as two processes behind a balancer."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"no Redis configured: set {REDIS_ENV}=redis://127.0.0.1:6379/0 (.ci/run does)")
    from metering import database_url

    ledger = await Ledger.open(database_url(None, tmp_path), catalog=load_catalog())
    workflow = load_workflow_text(WORKFLOW)
    registry = WorkflowRegistry({workflow.slug: (workflow, Path("r.yaml"))})
    livekit = LiveKitCalls(LiveKitConfig(url="ws://127.0.0.1:9", api_key="k", api_secret="s" * 32))
    limiters = [RateLimiter(RedisCounter(url), {"list": 5}) for _ in range(2)]
    servers = [
        TestServer(create_app(ledger, registry, livekit, limiter=lim), host="127.0.0.1") for lim in limiters
    ]
    for server in servers:
        await server.start_server()
    key = (await ledger.create_api_key(f"t{uuid.uuid4().hex[:8]}")).key  # a fresh key: a fresh count
    try:
        yield [f"http://127.0.0.1:{s.port}" for s in servers], key
    finally:
        for server in servers:
            await server.close()
        for lim in limiters:
            await lim.aclose()
        await ledger.aclose()


async def test_two_api_processes_share_one_count_through_redis(apps: tuple[list[str], str]) -> None:
    bases, key = apps
    statuses, remaining = [], []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        for i in range(7):
            async with http.get(bases[i % 2] + "/api/v1/calls") as r:
                statuses.append(r.status)
                remaining.append(r.headers.get("X-RateLimit-Remaining"))
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1 and "rate limit" in (await r.json())["error"]
    # five a minute for the key, whichever process answers
    assert statuses == [200] * 5 + [429] * 2
    assert remaining[:5] == ["4", "3", "2", "1", "0"]
