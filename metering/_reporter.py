"""The one way calls report to metering: `Meter.report(record)`, which never blocks.

Records go through a bounded queue to a writer task that commits everything waiting in one
transaction, so a slow database costs the audio path nothing and a busy one gets big batches.

When the queue is full (the database has fallen behind by `queue_size` records):
- usage is never dropped: it is summed per call, stage, agent and model into one record that the
  next batch writes (memory grows with calls, not with audio);
- a call's open, progress, close and recording are never dropped (a few per call);
- per-turn latencies are dropped and counted in `voicerun_metering_dropped_total{kind="turn"}`;
  they are diagnostics, and the Prometheus histograms still saw every turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import assert_never

import structlog
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from . import _metrics as m
from ._ledger import Ledger, UnknownCallError
from ._records import (
    CallClosed,
    CallOpened,
    CallProgressed,
    Record,
    RecordingStored,
    TurnReported,
    UsageReported,
)

log = structlog.get_logger("voicerun.metering")

_RETRY_MAX_S = 5.0


def _rejected(exc: BaseException) -> bool:
    """An error about the records, not the database: retrying the same batch would fail forever.
    (A StatementError that is not a DBAPIError is a value that could not be bound.)"""
    if isinstance(exc, IntegrityError | DataError | ValueError | TypeError | UnknownCallError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


@dataclass(frozen=True, slots=True)
class MeteringLoss:
    """Records that never reached the ledger: usage that will not be billed or priced."""

    records: int
    call_ids: tuple[str, ...]
    reason: str


BATCH = 500
"""Records waiting that make the writer commit without lingering."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class Meter:
    def __init__(
        self,
        ledger: Ledger,
        *,
        queue_size: int = 10_000,
        linger_s: float = 0.25,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        """linger_s: how long the writer lets records gather before a commit (a transaction
        costs about a millisecond of CPU whatever its size, so one per record would cost more
        than the calls); a batch of BATCH records, flush() and aclose() commit at once.
        on_commit: called after each committed batch (the exporter's wake-up)."""
        self.ledger = ledger
        self._queue: asyncio.Queue[Record] = asyncio.Queue(queue_size)
        self._lifecycle: list[CallOpened | CallProgressed | CallClosed | RecordingStored] = []
        self._usage: dict[tuple[str, str, str | None, str, str | None], UsageReported] = {}
        self._on_commit = on_commit
        self._writer: asyncio.Task[None] | None = None
        self._inflight: list[Record] = []
        self._pending = asyncio.Event()
        self._hurry = asyncio.Event()
        self._linger_s = linger_s
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped_turns = 0
        self._last_error = ""
        self.lost: list[MeteringLoss] = []
        """What never reached the ledger (calls, usage; not per-turn latencies), for the command
        or worker to report: a non-empty list is a failure, not a log line."""

    async def __aenter__(self) -> Meter:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="metering-writer")

    # -- the audio path's side: constant time, never awaits ------------------------------------

    def report(self, record: Record) -> None:
        self._observe(record)
        self._idle.clear()
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._overflow(record)
        depth = self._queue.qsize()
        m.METERING_QUEUE_DEPTH.set(depth)
        if depth >= BATCH:
            self._hurry.set()
        self._pending.set()

    def _overflow(self, record: Record) -> None:
        match record:
            case UsageReported(line=line):
                key = (record.call_id, line.stage, record.agent, line.provider, line.model)
                held = self._usage.get(key)
                # The merged record keeps the first seq: its idempotency key stays unique and stable.
                self._usage[key] = replace(held, line=held.line + line) if held else record
            case CallOpened() | CallProgressed() | CallClosed() | RecordingStored():
                # A few per call, and what the call went through: never dropped.
                self._lifecycle.append(record)
            case TurnReported():
                self.dropped_turns += 1
                m.METERING_DROPPED.labels(kind="turn").inc()
                if self.dropped_turns == 1 or self.dropped_turns % 1000 == 0:
                    log.warning(
                        "metering_turns_dropped", dropped=self.dropped_turns, queue_size=self._queue.maxsize
                    )
            case _:
                assert_never(record)

    @staticmethod
    def _observe(record: Record) -> None:
        match record:
            case UsageReported(line=line):
                m.observe_usage(
                    line.stage,
                    line.provider,
                    line.model,
                    audio_seconds=float(line.audio_seconds),
                    prompt_tokens=line.prompt_tokens,
                    completion_tokens=line.completion_tokens,
                    cached_tokens=line.cached_tokens,
                    characters=line.characters,
                )
            case TurnReported():
                m.observe_turn(
                    record.eou_delay_ms,
                    record.stt_latency_ms,
                    record.llm_ttft_ms,
                    record.tts_ttfb_ms,
                    record.e2e_latency_ms,
                    record.interrupted,
                )
            case CallOpened():
                m.ACTIVE_CALLS.inc()
            case CallClosed():
                m.ACTIVE_CALLS.dec()
                m.CALLS.labels(status=record.status).inc()
                m.CALL_SECONDS.inc(record.duration_s)
            case CallProgressed() | RecordingStored():
                pass
            case _:
                assert_never(record)

    # -- the writer ----------------------------------------------------------------------------

    def _take_batch(self) -> list[Record]:
        # Everything waiting, so a call's close is always written with the usage before it.
        batch: list[Record] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        batch.extend(self._lifecycle)
        batch.extend(self._usage.values())
        self._lifecycle.clear()
        self._usage.clear()
        m.METERING_QUEUE_DEPTH.set(0)
        return batch

    async def _write_loop(self) -> None:
        while True:
            await self._pending.wait()
            if self._linger_s > 0 and not self._hurry.is_set():
                try:
                    await asyncio.wait_for(self._hurry.wait(), self._linger_s)
                except TimeoutError:
                    pass
            self._pending.clear()
            self._hurry.clear()
            batch = self._take_batch()
            if batch:
                self._inflight = batch
                await self._write(batch)
                self._inflight = []
            if self._queue.empty() and not self._lifecycle and not self._usage:
                self._idle.set()

    async def _write(self, batch: list[Record]) -> None:
        delay = 0.05
        while batch:
            t0 = time.perf_counter()
            try:
                await self.ledger.write(batch)
            except Exception as exc:
                if not _rejected(exc):
                    self._last_error = _first_line(exc)
                    m.METERING_WRITE_FAILURES.inc()
                    log.error(
                        "metering_write_failed", records=len(batch), error=_first_line(exc), retry_in_s=delay
                    )
                    # The batch is idempotent (stable keys, calls close once): retrying it is safe.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                # Some record the database will never take (a bug upstream, bad data): write the
                # batch one record at a time so the rest lands, and set the culprits aside loudly.
                log.error("metering_batch_rejected", records=len(batch), error=_first_line(exc))
                batch = await self._write_each(batch)
                continue
            m.METERING_WRITE_SECONDS.observe(time.perf_counter() - t0)
            if self._on_commit is not None:
                self._on_commit()
            return

    async def _write_each(self, batch: list[Record]) -> list[Record]:
        """Write records one by one (opens, then usage and turns, then closes); returns those
        left when the database failed for another reason, to be retried as a batch."""
        ordered = sorted(
            batch, key=lambda r: 0 if isinstance(r, CallOpened) else 2 if isinstance(r, CallClosed) else 1
        )
        for i, record in enumerate(ordered):
            try:
                await self.ledger.write([record])
            except Exception as exc:
                if not _rejected(exc):
                    return ordered[i:]
                m.METERING_DROPPED.labels(kind="rejected").inc()
                # Everything needed to replay it by hand is in this line.
                log.error("metering_record_rejected", record=repr(record), error=_first_line(exc))
                if not isinstance(record, TurnReported):
                    self.lost.append(
                        MeteringLoss(1, (record.call_id,), f"the ledger refused it: {_first_line(exc)}")
                    )
        if self._on_commit is not None:
            self._on_commit()
        return []

    async def flush(self) -> None:
        """Wait until everything reported so far is committed (without lingering)."""
        if not self._idle.is_set():
            self._hurry.set()
        await self._idle.wait()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Commit what is left, then stop. If the ledger stays unreachable past `timeout_s`, the
        records still waiting are logged (with their call ids) as lost, loudly."""
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            left = self._inflight + self._take_batch()
            reason = f"ledger unreachable for {timeout_s} s at shutdown"
            calls = sorted({r.call_id for r in left})
            log.error("metering_records_lost", records=len(left), calls=calls, reason=reason)
            if self._last_error:
                reason = f"{reason}: {self._last_error}"
            self.lost.append(MeteringLoss(len(left), tuple(calls), reason))
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass
        self._writer = None
