"""Timeouts and retries shared by every cloud provider, so no provider writes its own loop.

A stream is retried only until its first item arrives: after that, retrying would repeat words
the caller may already have heard, so a failure propagates (and a fallback provider, if
configured, takes over).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from .._errors import ProviderError

T = TypeVar("T")
log = structlog.get_logger("voicerun.providers")


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    """Opening the connection (socket, TLS, HTTP request sent)."""
    first_byte_s: float = 5.0
    """Request sent -> first item of the stream."""
    total_s: float = 60.0
    """The whole stream."""

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_byte_s", "total_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeout {name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    """Tries in all, before the first byte."""
    backoff_s: float = 0.1
    backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")

    def delay_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter (attempt counts from 1)."""
        return random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ProviderError):
        return exc.retryable
    return isinstance(exc, TimeoutError | ConnectionError)


async def stream_with_retries(
    open_stream: Callable[[], AsyncIterator[T]],
    *,
    provider: str,
    timeouts: Timeouts,
    retry: RetryPolicy,
    empty: str | None = None,
) -> AsyncIterator[T]:
    """Yield open_stream()'s items; retry transient failures that happen before the first item.

    Errors come out as ProviderError naming the provider. A stream that ends without any item is
    simply empty, unless `empty` says what is missing then ("no audio for 12 characters"): a
    response with nothing in it where something was due is a retryable fault, not a silent gap.
    """
    loop = asyncio.get_running_loop()
    for attempt in range(1, retry.attempts + 1):
        stream = open_stream()
        started = loop.time()
        try:
            try:
                async with asyncio.timeout(timeouts.first_byte_s):
                    first = await anext(stream)
            except StopAsyncIteration:
                if empty is None:
                    return
                raise ProviderError(
                    f"{provider}: the response had {empty}", provider=provider, retryable=True
                ) from None
            except TimeoutError as exc:
                raise ProviderError(
                    f"{provider}: no response within {timeouts.first_byte_s:g} s",
                    provider=provider,
                    retryable=True,
                ) from exc
        except Exception as exc:
            await _close(stream)
            if not is_retryable(exc) or attempt == retry.attempts:
                raise _as_provider_error(exc, provider) from exc
            delay = retry.delay_s(attempt)
            log.warning(
                "provider_retry", provider=provider, attempt=attempt, error=str(exc), delay_s=round(delay, 3)
            )
            await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
            continue
        deadline = started + timeouts.total_s
        try:
            yield first
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise ProviderError(
                        f"{provider}: stream exceeded {timeouts.total_s:g} s", provider=provider
                    ) from exc
                yield item
        except ProviderError:
            raise
        except Exception as exc:
            raise _as_provider_error(exc, provider) from exc
        finally:
            await _close(stream)
        return


def _as_provider_error(exc: BaseException, provider: str) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError(
        f"{provider}: {type(exc).__name__}: {exc}", provider=provider, retryable=is_retryable(exc)
    )


async def _close(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
