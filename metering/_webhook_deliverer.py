"""Delivery of call webhooks from the ledger's outbox (kind `webhook`).

The ledger claims, leases, retries and dead-letters webhook events exactly as it does the usage
exporter's: this module only sends them. Delivery is at least once, and each event keeps its id
on every attempt, so a receiver dedupes by `Webhook-Id`. A call's events reach a target in the
order they happened: the ledger hands out an event only once the earlier ones of its call, to
that target, are delivered.

Answers:
- 2xx: delivered.
- 410 Gone: the receiver asks for nothing more: an endpoint is disabled (a call's webhook_url
  dropped), and what it still had to receive is cancelled.
- Anything else (other 4xx, 5xx, redirects, which are never followed), timeouts and connection
  errors: retried with exponential backoff; after `max_attempts` failed attempts the event is a
  dead letter, and the later events of its call to that target wait behind it until
  `voicerun metering retry` re-queues it.

Receivers' bodies are never read, nor are events' bodies logged: they hold transcripts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import structlog
from sqlalchemy.exc import SQLAlchemyError

from ._exporter import lanes, wait_woken
from ._ledger import Ledger
from ._webhooks import WEBHOOK, WebhookDelivery, sign_webhook

log = structlog.get_logger("voicerun.metering")

_DATABASE_ERRORS = (SQLAlchemyError, OSError)
_DATABASE_BACKOFF_MAX_S = 5.0
_IDLE_GUARD_S = 0.05

Outcome = Literal["delivered", "gone", "retry"]
_Deliver = Callable[[WebhookDelivery], Awaitable[bool]]


class WebhookDeliverer:
    """Sends the ledger's webhook events to their endpoints and calls' webhook_url.

    Run one `run()` per process that should deliver (any number may share a database: claims
    are leased), or drive `deliver_due()` directly. Every time it stamps (Webhook-Timestamp,
    retry due times) comes from the ledger's clock. `aclose()` closes the HTTP session if the
    deliverer created it.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        session: aiohttp.ClientSession | None = None,
        max_attempts: int = 15,
        backoff_base_s: float = 5.0,
        backoff_max_s: float = 3600.0,
        lease_s: float = 30.0,
        request_timeout_s: float = 10.0,
        batch: int = 50,
        concurrency: int = 8,
        idle_wait_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        """With the defaults, a receiver that stays down is retried for about a day (backoff
        doubling from 5 s up to an hour, 15 attempts) before its event becomes a dead letter."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        if request_timeout_s <= 0 or lease_s < request_timeout_s:
            # A request must end before its claim does, or another deliverer could send it too.
            raise ValueError(
                f"lease_s ({lease_s}) must be at least request_timeout_s ({request_timeout_s}), "
                "and both positive"
            )
        if batch < 1 or concurrency < 1 or backoff_base_s <= 0 or backoff_max_s < backoff_base_s:
            raise ValueError(
                f"batch ({batch}) and concurrency ({concurrency}) must be at least 1, and "
                f"0 < backoff_base_s ({backoff_base_s}) <= backoff_max_s ({backoff_max_s})"
            )
        self.ledger = ledger
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
        self._rng = rng or random.Random()
        self._woken = asyncio.Event()
        ledger.on_webhooks_queued(self.wake)

    def wake(self) -> None:
        """Events were committed: look for due ones now rather than at the next timer."""
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due events until `stop` is set. Between passes it waits until the next event
        is due, `wake()`, `stop`, or `idle_wait_s` (events other processes queue are noticed this
        soon). Database errors are logged and retried with backoff; they never end the loop."""
        log.info("webhook_deliverer_started")
        db_failures = 0
        try:
            while not stop.is_set():
                self._woken.clear()
                try:
                    await self.deliver_due(stop=stop)
                    due_at = await self.ledger.next_attempt_at(kind=WEBHOOK)
                    wait_s = (
                        self.idle_wait_s
                        if due_at is None
                        else min(self.idle_wait_s, (due_at - self.ledger.clock()).total_seconds())
                    )
                    # Due now yet not claimed: another deliverer holds it for a moment.
                    wait_s = max(wait_s, _IDLE_GUARD_S)
                    db_failures = 0
                except _DATABASE_ERRORS as exc:
                    db_failures += 1
                    wait_s = min(_DATABASE_BACKOFF_MAX_S, 0.1 * 2 ** (db_failures - 1))
                    log.error(
                        "webhook_database_error",
                        error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                        retry_in_s=round(wait_s, 3),
                    )
                await self._sleep(wait_s, stop)
        finally:
            log.info("webhook_deliverer_stopped")

    async def deliver_due(self, *, stop: asyncio.Event | None = None) -> int:
        """Send what is due, pass after pass, until nothing more is; returns the requests made.

        A pass claims the next event of every lane (a call's events to one target) that has
        one due, and sends up to `concurrency` at once; an event delivered makes the next of its
        lane claimable in the following pass.
        """
        attempted = 0
        limit = asyncio.Semaphore(self.concurrency)

        async def one(delivery: WebhookDelivery) -> bool:
            async with limit:
                return await self._deliver(delivery)

        while stop is None or not stop.is_set():
            claimed = await self.ledger.claim_webhooks(limit=self.batch, lease_s=self.lease_s)
            if not claimed:
                break
            async with asyncio.TaskGroup() as group:
                for lane in _lanes(claimed):
                    group.create_task(self._deliver_lane(lane, one))
            attempted += len(claimed)
        return attempted

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- one lane, one event ----------------------------------------------------------------

    async def _deliver_lane(self, lane: Sequence[WebhookDelivery], one: _Deliver) -> None:
        for i, delivery in enumerate(lane):
            if not await one(delivery):  # the rest waits its turn: give it back now
                await self.ledger.release([d.outbox_id for d in lane[i + 1 :]])
                return

    async def _deliver(self, d: WebhookDelivery) -> bool:
        """Send one event and record the outcome; True if it was delivered."""
        attempt = d.attempts + 1
        bound = log.bind(
            call_id=d.call_id, event_id=d.event_id, event_type=d.event_type, target=d.target, attempt=attempt
        )
        outcome, status, error = await self._send(d)
        if outcome == "delivered":
            await self.ledger.mark_delivered(d.outbox_id)
            bound.debug("webhook_delivered", status=status)
            return True
        if outcome == "gone":
            await self.ledger.disable_webhook_target(d.outbox_id)
            bound.warning("webhook_target_disabled", status=status)
            return False
        if attempt < self.max_attempts:
            cap_s = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
            # Equal jitter: never due at once (a failing receiver is not hammered in one pass),
            # and receivers that failed together are not retried together.
            delay_s = self._rng.uniform(cap_s / 2, cap_s)
            await self.ledger.mark_failed(
                d.outbox_id, error, retry_at=self.ledger.clock() + timedelta(seconds=delay_s)
            )
            bound.warning("webhook_retry", status=status, error=error, retry_in_s=round(delay_s, 3))
        else:
            await self.ledger.mark_failed(d.outbox_id, error, retry_at=None)
            bound.error("webhook_dead_letter", status=status, error=error)
        return False

    async def _send(self, d: WebhookDelivery) -> tuple[Outcome, int | None, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timestamp = int(self.ledger.clock().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "voicerun-webhooks/1",
            "Webhook-Id": d.event_id,
            "Webhook-Timestamp": str(timestamp),
            "Webhook-Signature": sign_webhook(d.secret, timestamp, d.body),
        }
        where = f"webhook {d.target} ({urlsplit(d.url).hostname})"  # never the path: it may hold a token
        try:
            async with self._session.post(
                d.url,
                data=d.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                # A redirect is not an answer: following it could send the call's data elsewhere.
                allow_redirects=False,
            ) as resp:
                status = resp.status
        except TimeoutError:
            return "retry", None, f"{where}: no answer within {self.request_timeout_s} s"
        except aiohttp.ClientError as exc:
            return "retry", None, f"{where}: {type(exc).__name__}"
        if 200 <= status < 300:
            return "delivered", status, ""
        if status == 410:
            return "gone", status, f"{where} returned 410"
        return "retry", status, f"{where} returned {status}"

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        await wait_woken(self._woken, seconds, stop)


def _lanes(claimed: Sequence[WebhookDelivery]) -> list[list[WebhookDelivery]]:
    return lanes(claimed, lambda d: (d.call_id, d.target))
