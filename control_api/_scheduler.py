"""The dial scheduler: starts scheduled dials (`POST /calls/dial` with `scheduled_at`) when they
are due, in LiveKit, the way an immediate dial starts (control_api/_calls.py: start_or_fail).

Every `voicerun api` process runs one; only the holder of the ledger's schedule lease (a row
with the holder's id and an expiry, renewed every pass) dials. A holder that stops cleanly gives
the lease back; one that crashes leaves it to expire, and the next process to look takes it over
(within `lease_s` + `idle_wait_s`) and dials what became due meanwhile. Each due call is also
claimed atomically in the ledger (scheduled → pending) before LiveKit is asked, so two processes
never dial the same call even if both believe they hold the lease (clocks that disagree).

A call is dialled at most once: a process that dies between the claim and LiveKit's answer
leaves the call pending; if no worker takes it, orphan recovery fails it as not_started (it is
not dialled again: a phone ringing twice is worse than once not at all). A call more than `missed_after` late (the
API was down) is closed as failed with the reason `missed` instead of ringing hours late.

Time (what is due, lateness, the lease's expiry) is the ledger's clock, so tests drive it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import structlog
from sqlalchemy.exc import SQLAlchemyError

from metering import CallClosed, DueDial, Ledger, wait_woken

from ._calls import ENDED_BY_API, RUNNING, dialler, room_of, start_or_fail
from ._livekit import LiveKitCalls

log = structlog.get_logger("voicerun.api")

SCHEDULE_LEASE = "dial-scheduler"
"""The ledger lease whose holder dials scheduled calls."""
DEFAULT_MISSED_AFTER = timedelta(hours=1)
_DATABASE_ERRORS = (SQLAlchemyError, OSError)
_BACKOFF_MAX_S = 5.0
_IDLE_GUARD_S = 0.05

Outcome = Literal["dialled", "failed"]


@dataclass(frozen=True)
class SchedulePass:
    """What one pass did."""

    held: bool
    """This scheduler holds the lease (only then does it dial)."""
    dialled: list[str] = field(default_factory=list)
    """Started in LiveKit."""
    failed: list[str] = field(default_factory=list)
    """LiveKit refused: closed as failed with its error."""
    missed: list[str] = field(default_factory=list)
    """Too late to dial: closed as failed, reason `missed`."""
    wait_s: float = 0.0
    """Until the next pass: the next call's due time, at most `idle_wait_s`."""


class DialScheduler:
    """Dials the ledger's scheduled calls when they are due, while it holds the schedule lease.

    Run `run(stop)` in every API process, or drive `run_once()` directly. `wake()`: a dial was
    scheduled (look now rather than at the next timer)."""

    def __init__(
        self,
        ledger: Ledger,
        livekit: LiveKitCalls,
        *,
        holder: str | None = None,
        lease_s: float = 30.0,
        idle_wait_s: float = 5.0,
        missed_after: timedelta | None = DEFAULT_MISSED_AFTER,
        batch: int = 20,
        concurrency: int = 8,
    ) -> None:
        """holder: this scheduler's id in the lease (default: host, pid and a random suffix).
        missed_after: a call later than this is failed as `missed`, not dialled (None: always
        dialled, however late). idle_wait_s: the longest pause between passes, so calls another
        process scheduled are seen this soon and the lease is renewed well before it ends."""
        if lease_s <= 0 or not 0 < idle_wait_s <= lease_s / 3:
            raise ValueError(
                f"idle_wait_s ({idle_wait_s}) must be positive and at most a third of lease_s ({lease_s}): "
                "the holder renews its lease every pass"
            )
        if batch < 1 or concurrency < 1:
            raise ValueError(f"batch ({batch}) and concurrency ({concurrency}) must be at least 1")
        if missed_after is not None and missed_after <= timedelta(0):
            raise ValueError(f"missed_after ({missed_after}) must be positive, or None")
        self.ledger = ledger
        self.livekit = livekit
        self.holder = holder or f"{ledger.process.host}/{ledger.process.pid}/{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.idle_wait_s = idle_wait_s
        self.missed_after = missed_after
        self.batch = batch
        self.concurrency = concurrency
        self.held = False
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set, then give the lease back. Errors (the database's,
        or a bug) are logged and the pass retried with backoff; they never end the loop, which
        would leave this process's calls undialled."""
        log.info("dial_scheduler_started", holder=self.holder)
        failures = 0
        try:
            while not stop.is_set():
                self._woken.clear()  # before the pass: a wake() during it triggers the next one
                try:
                    wait_s = (await self.run_once()).wait_s
                    failures = 0
                except Exception as exc:
                    failures += 1
                    wait_s = min(_BACKOFF_MAX_S, 0.1 * 2 ** (failures - 1))
                    database = isinstance(exc, _DATABASE_ERRORS)
                    log.error(
                        "dial_scheduler_database_error" if database else "dial_scheduler_error",
                        error=_one_line(exc),
                        retry_in_s=round(wait_s, 3),
                        exc_info=not database,
                    )
                await wait_woken(self._woken, wait_s, stop)
        finally:
            await self.release()
            log.info("dial_scheduler_stopped", holder=self.holder)

    async def run_once(self) -> SchedulePass:
        """Take or renew the lease; holding it, dial every call that is due (each claimed in
        the ledger first), a batch at a time, renewing the lease between batches."""
        if not await self._hold():
            return SchedulePass(held=False, wait_s=self.idle_wait_s)
        done = SchedulePass(held=True)
        limit = asyncio.Semaphore(self.concurrency)

        async def one(due: DueDial) -> None:
            async with limit:
                try:
                    outcome = await self._dial(due)
                except Exception as exc:  # recording a failure failed: the call stays pending
                    log.error("scheduled_dial_error", call_id=due.call_id, error=_one_line(exc))
                    outcome = "failed"
            (done.dialled if outcome == "dialled" else done.failed).append(due.call_id)

        while True:
            claimed = await self.ledger.claim_scheduled(limit=self.batch, missed_after=self.missed_after)
            done.missed.extend(claimed.missed)

            async with asyncio.TaskGroup() as group:
                for due in claimed.due:
                    group.create_task(one(due))
            if len(claimed.due) + len(claimed.missed) < self.batch or not await self._hold():
                break
        next_at = await self.ledger.next_scheduled_at()
        wait_s = self.idle_wait_s
        if next_at is not None:
            # Due now yet not claimed: another process has its row for a moment.
            wait_s = max(_IDLE_GUARD_S, min(wait_s, (next_at - self.ledger.clock()).total_seconds()))
        return SchedulePass(True, done.dialled, done.failed, done.missed, wait_s)

    async def release(self) -> None:
        """Give the lease back if this scheduler holds it (a clean stop: no one waits it out)."""
        if not self.held:
            return
        self.held = False
        try:
            await self.ledger.release_lease(SCHEDULE_LEASE, self.holder)
        except _DATABASE_ERRORS as exc:  # it expires on its own
            log.warning("dial_scheduler_release_failed", error=_one_line(exc))
        log.info("dial_scheduler_lease_released", holder=self.holder)

    async def _hold(self) -> bool:
        held = await self.ledger.hold_lease(SCHEDULE_LEASE, self.holder, self.lease_s)
        if held != self.held:
            log.info(
                "dial_scheduler_lease_taken" if held else "dial_scheduler_lease_lost", holder=self.holder
            )
        self.held = held
        return held

    async def _dial(self, due: DueDial) -> Outcome:
        """Start one claimed call as an immediate dial starts; a LiveKit failure closes it as
        failed. A call ended (POST /end) while it was being dialled is hung up at once."""
        bound = log.bind(call_id=due.call_id, scheduled_at=due.scheduled_at.isoformat())
        try:
            job: dict[str, Any] = dict(due.request["job"])
            dial = due.request["dial"]
            start = dialler(
                self.livekit,
                to=str(dial["to_number"]),
                from_=str(dial["from_number"]),
                max_duration_s=int(dial["max_duration"]),
            )
        except (KeyError, TypeError, ValueError):  # not what schedule_call stored: never dialled
            reason = "scheduled dial unreadable"
            now = self.ledger.clock()
            await self.ledger.write(
                [
                    CallClosed(
                        call_id=due.call_id, status="failed", reason=reason, ended_at=now, duration_s=0.0
                    )
                ]
            )
            bound.error("scheduled_dial_failed", error=reason)
            return "failed"
        failure = await start_or_fail(self.ledger, due.call_id, job, start)
        if failure is not None:
            bound.warning("scheduled_dial_failed", error=_one_line(failure))
            return "failed"
        late_s = (self.ledger.clock() - due.scheduled_at).total_seconds()
        bound.info("scheduled_dial_started", late_s=round(late_s, 3))
        try:
            view = await self.ledger.call(due.call_id)
            if view is not None and view.status not in RUNNING:
                await self.livekit.end(room_of(due.call_id), view.ended_reason or ENDED_BY_API)
                bound.info("scheduled_dial_hung_up", status=view.status)
        except Exception as exc:  # the worker or the room's empty timeout ends it instead
            bound.warning("scheduled_dial_hangup_failed", error=_one_line(exc))
        return "dialled"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
