"""Delivery of the usage outbox to the usage-tracking API (Paygent's voice tracking REST API).

The ledger commits every request before it is sent; this module sends them. Delivery is at least
once: an event counts as delivered only after a 2xx (or 409) answer, so a crash between the
answer and the commit sends it again. Every request carries the event's `Idempotency-Key`, the
same on every attempt, so an API that honours the key applies each event exactly once.

A call's events go strictly in order (customer, session, stt/llm/tts lines, indicator): the
ledger hands out an event only once every earlier step of its call is delivered. Different calls
are sent concurrently, a few at a time.

Answers:
- 2xx: delivered; the body is not read for meaning (a garbled body still means "applied").
- 409 Conflict: the API already has what the event creates (e.g. the session, from an earlier
  send whose answer was lost), so it counts as delivered, logged as `usage_already_applied`.
- 408, 425, 429, 5xx, timeouts and connection errors: retried after exponential backoff with
  full jitter, or after the server's `Retry-After`; after `max_attempts` failed attempts the
  event becomes a dead letter.
- Any other status (400, 401, 403, 404, 422, redirects ...): permanent, a dead letter at once,
  with the status and the start of the body in its `last_error`.

A dead letter blocks the later steps of its call until `voicerun metering retry` re-queues it.

A request that went out without an answer (the exporter timed out, the connection dropped, or
the exporter died mid-request and its claim expired) may have been applied. When the API honours
`Idempotency-Key` (api_idempotent) it is simply sent again. Otherwise it is held "in doubt": not
resent, not counted delivered, blocking its call's later steps, until an operator says which
(`voicerun metering doubt --sent/--resend`). Nothing is lost and nothing silently billed twice.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal, TypeVar

import aiohttp
import structlog
from sqlalchemy.exc import SQLAlchemyError

from . import _metrics as m
from ._ledger import Ledger, OutboxItem, OutboxStatus

T = TypeVar("T")

log = structlog.get_logger("voicerun.metering")

ENDPOINTS = {
    "customer": "/api/v1/customers/create-or-get",
    "session": "/api/v1/voice/session",
    "stt": "/api/v1/voice/stt",
    "llm": "/api/v1/voice/llm",
    "tts": "/api/v1/voice/tts",
    "indicator": "/api/v1/voice/indicator",
}
"""The API path of each outbox step."""

_RETRYABLE_STATUS = frozenset({408, 425, 429})
_BODY_CHARS = 500
_BODY_BYTES = 4 * _BODY_CHARS  # enough bytes for 500 characters of UTF-8 (or close)
_DATABASE_BACKOFF_MAX_S = 5.0
_RETRY_AFTER_MAX_S = 3600.0
_IDLE_GUARD_S = 0.05
_DATABASE_ERRORS = (SQLAlchemyError, OSError)


@dataclass(frozen=True, slots=True)
class _Outcome:
    kind: Literal["delivered", "already_applied", "retry", "unanswered", "permanent"]
    """unanswered: the request went out and no answer came back (a timeout, a dropped
    connection), so the API may have applied it."""
    status: int | None = None
    reason: str = ""
    """The failure's metric label: http_503, timeout, connection."""
    error: str = ""
    retry_after_s: float | None = None


class UsageExporter:
    """Sends the ledger's outbox to the usage-tracking API at `base_url`.

    Run one `run()` per process that should export (workers, or a `voicerun metering export`
    sidecar); any number may share a database, since claims are leased. `aclose()` closes the HTTP
    session if the exporter created it. Wall time (retry due times, Retry-After dates, the age of
    the backlog) is read from the ledger's clock, so claims and retries agree on what "now" is.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        max_attempts: int = 20,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        lease_s: float = 30.0,
        request_timeout_s: float = 10.0,
        batch: int = 50,
        concurrency: int = 4,
        idle_wait_s: float = 5.0,
        api_idempotent: bool = False,
    ) -> None:
        """api_idempotent: the API applies a request at most once per Idempotency-Key, so a
        request whose answer was lost is simply sent again. Otherwise such a request is held
        "in doubt" for an operator (`voicerun metering doubt`): resending could bill it twice."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        if request_timeout_s <= 0 or lease_s < request_timeout_s:
            # A request starts only while its claim lasts longer than the request can, so no
            # other exporter can claim the event while this one is still waiting for an answer.
            raise ValueError(
                f"lease_s ({lease_s}) must be at least request_timeout_s ({request_timeout_s}), "
                "and both positive"
            )
        if batch < 1 or concurrency < 1:
            raise ValueError(f"batch ({batch}) and concurrency ({concurrency}) must be at least 1")
        self.ledger = ledger
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._owns_session = session is None
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.lease_s = lease_s
        self.request_timeout_s = request_timeout_s
        self.batch = batch
        self.concurrency = concurrency
        self.idle_wait_s = idle_wait_s
        self.api_idempotent = api_idempotent
        self._woken = asyncio.Event()

    def __repr__(self) -> str:  # the key stays out of every repr, traceback and log
        return f"UsageExporter(base_url={self.base_url!r})"

    # -- the public API ---------------------------------------------------------------------

    def wake(self) -> None:
        """New events are committed: look for due events now instead of at the next timer.

        Call it from the exporter's event loop (from another thread, through
        `loop.call_soon_threadsafe(exporter.wake)`)."""
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due events until `stop` is set, then return once in-flight requests finish.

        Between passes it sleeps until the next retry is due, `wake()` is called, `stop` is set,
        or `idle_wait_s` pass (events written by other processes are noticed this soon).
        Database errors are logged and retried with backoff; they never end the loop.
        """
        log.info("usage_exporter_started", url=self.base_url, lease_s=self.lease_s)
        db_failures = 0
        try:
            while not stop.is_set():
                self._woken.clear()  # before the pass: a wake() during it triggers the next one
                try:
                    attempted = await self._deliver_due(stop=stop, deadline=None)
                    await self._update_gauges()
                    wait_s = await self._seconds_until_due(cap_s=self.idle_wait_s)
                    db_failures = 0
                except _DATABASE_ERRORS as exc:
                    db_failures += 1
                    wait_s = self._database_backoff_s(db_failures)
                    self._log_database_error(exc, wait_s)
                    attempted = 1  # not idle: the wait below is the backoff
                if wait_s is None:
                    wait_s = self.idle_wait_s
                if wait_s == 0 and attempted == 0:
                    # Something is due but nothing was claimable (another exporter holds the
                    # row lock for a moment): don't spin.
                    wait_s = _IDLE_GUARD_S
                await self._sleep(wait_s, stop)
        finally:
            log.info("usage_exporter_stopped", url=self.base_url)

    async def drain(self, timeout_s: float, *, stop: asyncio.Event | None = None) -> OutboxStatus:
        """Deliver everything that is or becomes due within `timeout_s`, retries included, and
        return the outbox's status.

        Returns early when no pending event can be sent before the deadline: everything is
        delivered, dead, blocked behind a dead letter, or next due after the deadline. No request
        starts after the deadline or once `stop` is set; one already sent finishes (at most
        `request_timeout_s` later).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        db_failures = 0
        while (stop is None or not stop.is_set()) and loop.time() < deadline:
            self._woken.clear()
            try:
                await self._deliver_due(stop=stop, deadline=deadline)
                wait_s = await self._seconds_until_due(cap_s=None)
                db_failures = 0
            except _DATABASE_ERRORS as exc:
                db_failures += 1
                wait_s = self._database_backoff_s(db_failures)
                self._log_database_error(exc, wait_s)
            remaining_s = deadline - loop.time()
            if wait_s is None or wait_s >= remaining_s:
                break
            await self._sleep(max(wait_s, 0.0), stop)
        status = await self.ledger.outbox_status()
        self._set_gauges(status)
        return status

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- one pass ---------------------------------------------------------------------------

    async def _deliver_due(self, *, stop: asyncio.Event | None, deadline: float | None) -> int:
        """Send events as they become claimable until none is due; returns the requests made.

        Up to `concurrency` calls are served at once, one event each (the ledger hands out a
        call's next step only after the previous one is delivered). A free slot claims more at
        once, so a slow request holds up its own call and no other.
        """
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[int]] = set()
        database_errors: list[BaseException] = []
        attempted = 0
        try:
            while True:
                free = self.concurrency - len(running)
                if free > 0 and not database_errors and not _over(stop, deadline, loop):
                    try:
                        items = await self.ledger.claim_due(
                            limit=min(self.batch, free),
                            lease_s=self.lease_s,
                            resend_unanswered=self.api_idempotent,
                        )
                    except _DATABASE_ERRORS as exc:
                        database_errors.append(exc)
                        items = []
                    lease_ends = loop.time() + self.lease_s
                    for call_items in _by_call(items):
                        running.add(
                            asyncio.create_task(
                                self._deliver_call(call_items, lease_ends, stop, deadline, database_errors),
                                name=f"usage-export-{call_items[0].call_id}",
                            )
                        )
                if not running:
                    break
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                attempted += sum(task.result() for task in done)
        finally:
            # Only on cancellation or a bug: abandon requests in flight; their claims expire.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if database_errors:
            raise database_errors[0]
        return attempted

    async def _deliver_call(
        self,
        items: Sequence[OutboxItem],
        lease_ends: float,
        stop: asyncio.Event | None,
        deadline: float | None,
        database_errors: list[BaseException],
    ) -> int:
        """Send one call's claimed events in order; stop at the first that is not delivered."""
        loop = asyncio.get_running_loop()
        attempted = 0
        for i, item in enumerate(items):
            # A request starts only if it can finish within the claim, so no other exporter
            # sends the event meanwhile. Events not started go back to the outbox at once.
            if _over(stop, deadline, loop) or lease_ends - loop.time() < self.request_timeout_s:
                await self._release(items[i:], database_errors)
                break
            try:
                delivered = await self._deliver(item)
            except _DATABASE_ERRORS as exc:
                database_errors.append(exc)
                break
            attempted += 1
            if not delivered:
                await self._release(items[i + 1 :], database_errors)
                break
        return attempted

    async def _release(self, items: Sequence[OutboxItem], database_errors: list[BaseException]) -> None:
        """Give back claimed events that were not sent, so they need not wait out the lease."""
        if not items:
            return
        try:
            await self.ledger.release([i.id for i in items])
        except _DATABASE_ERRORS as exc:
            database_errors.append(exc)  # the lease expires on its own

    async def _deliver(self, item: OutboxItem) -> bool:
        """Send one event and record the outcome in the ledger; True if it is delivered."""
        attempt = item.attempts + 1
        bound = log.bind(call_id=item.call_id, step=item.step, attempt=attempt)
        outcome = await self._send(item)
        if outcome.kind in ("delivered", "already_applied"):
            await self.ledger.mark_delivered(item.id)
            m.EXPORT_DELIVERED.labels(step=item.step).inc()
            if outcome.kind == "already_applied":
                bound.warning("usage_already_applied", status=outcome.status, error=outcome.error)
            else:
                bound.debug("usage_delivered", status=outcome.status)
            return True
        m.EXPORT_FAILURES.labels(reason=outcome.reason).inc()
        if outcome.kind == "unanswered" and not self.api_idempotent:
            await self.ledger.mark_in_doubt(item.id, outcome.error)
            bound.error("usage_in_doubt", reason=outcome.reason, error=outcome.error, outbox_id=item.id)
            return False
        if outcome.kind in ("retry", "unanswered") and attempt < self.max_attempts:
            delay_s = self._retry_delay_s(attempt, outcome.retry_after_s)
            retry_at = self.ledger.clock() + timedelta(seconds=delay_s)
            await self.ledger.mark_failed(item.id, outcome.error, retry_at=retry_at)
            bound.warning(
                "usage_delivery_failed",
                status=outcome.status,
                reason=outcome.reason,
                error=outcome.error,
                retry_in_s=round(delay_s, 3),
            )
            return False
        error = outcome.error
        if outcome.kind in ("retry", "unanswered"):
            error = f"{error} (gave up after {attempt} attempts)"
        await self.ledger.mark_failed(item.id, error, retry_at=None)
        bound.error("usage_dead_letter", status=outcome.status, reason=outcome.reason, error=error)
        return False

    # -- HTTP -------------------------------------------------------------------------------

    async def _send(self, item: OutboxItem) -> _Outcome:
        path = ENDPOINTS.get(item.step)
        if path is None:
            return _Outcome("permanent", reason="unknown_step", error=f"unknown outbox step {item.step!r}")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {
            "paygent-api-key": self._api_key,
            "Content-Type": "application/json",
            "Idempotency-Key": item.idempotency_key,
        }
        try:
            async with self._session.post(
                self.base_url + path,
                data=json.dumps(item.payload, separators=(",", ":")),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                # A redirect means a wrong URL; following it would also send the key elsewhere.
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return _Outcome("delivered", status)
                body = await _body_start(resp)
                retry_after_s = _retry_after_s(resp.headers.get("Retry-After"), now=self.ledger.clock())
        except TimeoutError:
            return _Outcome(
                "unanswered", reason="timeout", error=f"{path}: no answer within {self.request_timeout_s} s"
            )
        except aiohttp.ServerConnectionError as exc:  # connected, then dropped: it may have landed
            return _Outcome("unanswered", reason="connection", error=f"{path}: {type(exc).__name__}: {exc}")
        except aiohttp.ClientConnectionError as exc:
            return _Outcome("retry", reason="connection", error=f"{path}: {type(exc).__name__}: {exc}")
        except aiohttp.ClientError as exc:
            return _Outcome("retry", reason="client_error", error=f"{path}: {type(exc).__name__}: {exc}")
        # An API that echoes request headers in its errors must not put the key in our logs.
        body = body.replace(self._api_key, "[redacted]")
        error = f"{path} returned {status}: {body}" if body else f"{path} returned {status}"
        if status == 409:
            return _Outcome("already_applied", status, error=error)
        reason = f"http_{status}"
        if status in _RETRYABLE_STATUS or 500 <= status < 600:
            return _Outcome(
                "retry",
                status,
                reason=reason,
                error=error,
                retry_after_s=retry_after_s if status in (429, 503) else None,
            )
        return _Outcome("permanent", status, reason=reason, error=error)

    # -- timing -----------------------------------------------------------------------------

    def _retry_delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return retry_after_s
        # Full jitter (uniform between 0 and the exponential cap) spreads out the retries of
        # many events that failed together, e.g. when the API comes back up.
        cap_s = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, cap_s)

    def _database_backoff_s(self, failures: int) -> float:
        cap_s = min(_DATABASE_BACKOFF_MAX_S, self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1))
        return random.uniform(cap_s / 2, cap_s)

    async def _seconds_until_due(self, *, cap_s: float | None) -> float | None:
        """Seconds until the next claimable event is due (0: due now; None: nothing pending)."""
        due_at = await self.ledger.next_attempt_at()
        if due_at is None:
            return cap_s
        wait_s = max(0.0, (due_at - self.ledger.clock()).total_seconds())
        return wait_s if cap_s is None else min(wait_s, cap_s)

    async def _sleep(self, seconds: float, stop: asyncio.Event | None) -> None:
        await wait_woken(self._woken, seconds, stop)

    # -- reporting --------------------------------------------------------------------------

    async def _update_gauges(self) -> None:
        self._set_gauges(await self.ledger.outbox_status())

    def _set_gauges(self, status: OutboxStatus) -> None:
        m.EXPORT_BACKLOG.set(status.pending)
        m.EXPORT_DEAD_LETTERS.set(status.dead)
        m.EXPORT_IN_DOUBT.set(status.in_doubt)
        oldest = status.oldest_pending_at
        m.EXPORT_OLDEST_PENDING.set(
            0 if oldest is None else max(0.0, (self.ledger.clock() - oldest).total_seconds())
        )

    def _log_database_error(self, exc: BaseException, retry_in_s: float) -> None:
        m.EXPORT_FAILURES.labels(reason="database").inc()
        log.error(
            "usage_export_database_error",
            error=f"{type(exc).__name__}: {exc}".splitlines()[0][:_BODY_CHARS],
            retry_in_s=round(retry_in_s, 3),
        )


async def wait_woken(woken: asyncio.Event, seconds: float, stop: asyncio.Event | None) -> None:
    """An outbox worker's pause between passes: `seconds`, or less if woken or stopped."""
    waiters = [asyncio.ensure_future(woken.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def lanes(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """Claimed outbox rows grouped by lane (in claim order): a lane's rows go out one after
    another, lanes side by side."""
    grouped: dict[Hashable, list[T]] = {}
    for item in items:
        grouped.setdefault(key(item), []).append(item)
    return list(grouped.values())


def _by_call(items: Sequence[OutboxItem]) -> list[list[OutboxItem]]:
    return lanes(items, lambda item: item.call_id)


def _over(stop: asyncio.Event | None, deadline: float | None, loop: asyncio.AbstractEventLoop) -> bool:
    return (stop is not None and stop.is_set()) or (deadline is not None and loop.time() >= deadline)


async def _body_start(resp: aiohttp.ClientResponse) -> str:
    """The first 500 characters of an error answer's body, on one line ('' if unreadable)."""
    try:
        raw = await resp.content.read(_BODY_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    text = raw.decode("utf-8", errors="replace")
    return " ".join(text.split())[:_BODY_CHARS]


def _retry_after_s(value: str | None, *, now: datetime) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_MAX_S)
