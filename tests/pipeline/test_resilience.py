"""Shared retry/timeout behaviour of cloud providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pipeline import ProviderError
from pipeline.providers._resilience import RetryPolicy, Timeouts, stream_with_retries

FAST = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [x async for x in stream]


async def test_transient_failures_before_the_first_item_are_retried() -> None:
    attempts = 0

    async def flaky() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionResetError("peer went away")
        yield "a"
        yield "b"

    out = await collect(stream_with_retries(flaky, provider="p", timeouts=Timeouts(), retry=FAST))
    assert out == ["a", "b"] and attempts == 3


async def test_a_permanent_error_is_not_retried() -> None:
    attempts = 0

    async def refused() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        raise ProviderError("p: 401 invalid key", provider="p", retryable=False)
        yield "never"

    with pytest.raises(ProviderError, match="401 invalid key"):
        await collect(stream_with_retries(refused, provider="p", timeouts=Timeouts(), retry=FAST))
    assert attempts == 1


async def test_a_slow_first_byte_times_out_then_retries() -> None:
    attempts = 0
    never = asyncio.Event()

    async def slow_then_fine() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await never.wait()
        yield "ok"

    timeouts = Timeouts(first_byte_s=0.05)
    out = await collect(stream_with_retries(slow_then_fine, provider="p", timeouts=timeouts, retry=FAST))
    assert out == ["ok"] and attempts == 2


async def test_a_failure_after_the_first_item_is_not_retried() -> None:
    attempts = 0

    async def breaks_midway() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        yield "first"
        raise ConnectionResetError("dropped")

    got: list[str] = []
    with pytest.raises(ProviderError, match="p: ConnectionResetError: dropped") as err:
        async for x in stream_with_retries(breaks_midway, provider="p", timeouts=Timeouts(), retry=FAST):
            got.append(x)
    assert got == ["first"] and attempts == 1  # nothing said twice
    assert err.value.provider == "p"


async def test_retries_give_up_with_the_last_error() -> None:
    async def always_down() -> AsyncIterator[str]:
        raise ConnectionRefusedError("connection refused")
        yield "never"

    with pytest.raises(ProviderError, match="connection refused"):
        await collect(stream_with_retries(always_down, provider="p", timeouts=Timeouts(), retry=FAST))


async def test_an_empty_response_where_something_was_due_is_retried_then_a_retryable_error() -> None:
    # A 200 with an empty body for words to speak: the caller would hear a silent gap, and no fault
    # would be reported or fall back.
    attempts = 0

    async def nothing() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        return
        yield "never"

    with pytest.raises(ProviderError, match=r"^p: the response had no audio for 6 characters$") as err:
        await collect(
            stream_with_retries(
                nothing, provider="p", timeouts=Timeouts(), retry=FAST, empty="no audio for 6 characters"
            )
        )
    assert err.value.retryable and attempts == 3


async def test_an_empty_response_then_a_full_one_is_the_full_one() -> None:
    attempts = 0

    async def empty_once() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            yield "a"

    out = await collect(
        stream_with_retries(empty_once, provider="p", timeouts=Timeouts(), retry=FAST, empty="x")
    )
    assert out == ["a"] and attempts == 2


async def test_an_empty_response_is_just_empty_when_nothing_was_due() -> None:
    async def nothing() -> AsyncIterator[str]:
        return
        yield "never"

    assert await collect(stream_with_retries(nothing, provider="p", timeouts=Timeouts(), retry=FAST)) == []
