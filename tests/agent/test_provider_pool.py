"""The provider pool builds each provider once, even when calls ask for it at the same moment."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from agent._providers import ProviderConfigError, ProviderPool, UnknownProviderError
from pipeline import STT
from pipeline.providers import ProviderEntry, ProviderRegistry
from pipeline.testing import ScriptedSTT
from workflows import ProviderSpec


class _SlowSTT(ScriptedSTT):
    """Warms until the test lets it, so two callers are inside the pool at once."""

    def __init__(self, warming: asyncio.Event, go: asyncio.Event, fail: bool) -> None:
        super().__init__(["hi"])
        self._warming, self._go, self._fail = warming, go, fail
        self.closed = False

    async def warm(self) -> None:
        self._warming.set()
        await self._go.wait()
        if self._fail:
            raise RuntimeError("model download failed")

    async def aclose(self) -> None:
        self.closed = True


class _Builder:
    def __init__(self, fail_builds: int = 0, fail_warms: int = 0) -> None:
        self.built: list[_SlowSTT] = []
        self.warming, self.go = asyncio.Event(), asyncio.Event()
        self._fail_builds, self._fail_warms = fail_builds, fail_warms

    def __call__(self, model: str | None, options: Mapping[str, Any]) -> STT:
        if self._fail_builds:
            self._fail_builds -= 1
            raise ValueError("no such voice")
        fail = len(self.built) < self._fail_warms
        self.built.append(_SlowSTT(self.warming, self.go, fail))
        return self.built[-1]


def _pool(builder: _Builder) -> ProviderPool:
    entry = ProviderEntry[STT]("stt", "slow", None, lambda m, o: None, builder)
    return ProviderPool(ProviderRegistry(stt={"slow": entry}))


SPEC = ProviderSpec(provider="slow")


async def test_two_calls_asking_at_once_get_one_provider_built_once() -> None:
    builder = _Builder()
    pool = _pool(builder)
    first = asyncio.create_task(pool.stt(SPEC))
    await builder.warming.wait()  # the first caller is inside the build, awaiting the warm-up
    second = asyncio.create_task(pool.stt(SPEC))
    await asyncio.sleep(0)  # one scheduling step, not a timed wait: the second caller reaches the pool
    builder.go.set()
    a, b = await asyncio.gather(first, second)
    assert a is b
    assert len(builder.built) == 1
    assert await pool.stt(SPEC) is a
    await pool.aclose()


async def test_a_failed_build_is_not_cached() -> None:
    builder = _Builder(fail_builds=1)
    builder.go.set()
    pool = _pool(builder)
    with pytest.raises(ProviderConfigError, match="stt provider 'slow': no such voice"):
        await pool.stt(SPEC)
    assert await pool.stt(SPEC) is builder.built[0]


async def test_a_failed_warm_up_closes_the_provider_and_the_waiting_caller_builds_anew() -> None:
    builder = _Builder(fail_warms=1)
    pool = _pool(builder)
    first = asyncio.create_task(pool.stt(SPEC))
    await builder.warming.wait()
    second = asyncio.create_task(pool.stt(SPEC))
    await asyncio.sleep(0)
    builder.go.set()
    with pytest.raises(RuntimeError, match="model download failed"):
        await first
    provider = await second
    failed, rebuilt = builder.built
    assert provider is rebuilt
    assert failed.closed and not rebuilt.closed


async def test_an_unknown_provider_names_the_stage_and_the_choices() -> None:
    with pytest.raises(UnknownProviderError, match=r"unknown stt provider 'nope' \(available: slow\)"):
        await _pool(_Builder()).stt(ProviderSpec(provider="nope"))
