"""A process's metering: the ledger, the Meter that calls report to, and (when the usage API is
configured) the exporter delivering the outbox in the background. Any process opens it from a
MeteringConfig: a worker, a one-shot command, the control API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ._exporter import UsageExporter
from ._ledger import BillingIdentity, Ledger, OutboxStatus, database_url
from ._prices import PriceCatalog
from ._reporter import Meter, MeteringLoss

log = structlog.get_logger("voicerun.metering")


@dataclass(frozen=True, kw_only=True)
class MeteringConfig:
    """Where the ledger is, who this process is in it, and where usage is exported (the
    VOICERUN_* settings of docs/metering.md; the caller checks and reads them)."""

    database_url: str | None = None
    """postgresql://... for a pool of workers; None: a SQLite file in data_dir."""
    data_dir: Path = Path("data")
    worker_id: str = "voicerun"
    queue_size: int = 10_000
    usage_api_url: str | None = None
    usage_api_key: str | None = field(default=None, repr=False)
    usage_agent_id: str | None = None
    usage_customer_id: str | None = None
    usage_customer_name: str | None = None
    usage_plan: str = "default"
    usage_max_attempts: int = 20
    usage_api_idempotent: bool = False

    def __post_init__(self) -> None:
        if self.usage_api_url and not (self.usage_api_key and self.usage_agent_id and self.usage_customer_id):
            raise ValueError("a usage API URL needs its key, agent id and customer id")

    def billing_identity(self) -> BillingIdentity | None:
        if not self.usage_api_url:
            return None
        assert self.usage_agent_id and self.usage_customer_id  # checked above
        return BillingIdentity(
            agent_id=self.usage_agent_id,
            customer_id=self.usage_customer_id,
            customer_name=self.usage_customer_name,
            plan=self.usage_plan,
        )


async def open_ledger(
    config: MeteringConfig, *, catalog: PriceCatalog, migrate: bool = True, writable: bool = True
) -> Ledger:
    """The configured ledger (DATABASE_URL, else SQLite in the data dir), billing as configured.

    writable=True: migrated, and calls whose owner is provably gone are closed as abandoned
    (Ledger.recover_orphans). writable=False (commands that only read): nothing is created,
    migrated or closed, and a missing embedded ledger is a LedgerMissingError. Raises LedgerConfigError for a configuration that
    cannot work (a malformed URL, an unwritable data dir or ledger file)."""
    ledger = await Ledger.open(
        database_url(config.database_url, config.data_dir),
        catalog=catalog,
        worker_id=config.worker_id,
        billing=config.billing_identity(),
        migrate=migrate and writable,
        writable=writable,
    )
    if writable:
        # Calls left open by processes that provably died (SIGKILL, a crash) are closed and
        # billed now, by whoever opens the ledger next.
        try:
            await ledger.recover_orphans()
        except BaseException:
            await ledger.aclose()
            raise
    return ledger


def usage_exporter(config: MeteringConfig, ledger: Ledger, **options: Any) -> UsageExporter | None:
    """The exporter to the configured usage API (None without one); `options` tune it."""
    if not config.usage_api_url:
        return None
    assert config.usage_api_key is not None  # MeteringConfig checks it is set with the URL
    return UsageExporter(
        ledger,
        base_url=config.usage_api_url,
        api_key=config.usage_api_key,
        max_attempts=config.usage_max_attempts,
        api_idempotent=config.usage_api_idempotent,
        **options,
    )


@dataclass
class Metering:
    ledger: Ledger
    meter: Meter
    exporter: UsageExporter | None
    final: OutboxStatus | None = None
    """The outbox after the closing drain (None without an exporter)."""
    lost: list[MeteringLoss] = field(default_factory=list)
    """Set when the context exits: records that never reached the ledger (their calls' usage is
    neither priced nor billed). Non-empty means the command must fail."""


@asynccontextmanager
async def open_metering(
    config: MeteringConfig, *, catalog: PriceCatalog, recover: bool = False, drain_s: float = 0.0
) -> AsyncIterator[Metering]:
    """Open the ledger (migrating it), start the Meter and, with a usage API, the exporter.

    recover: close the calls this worker id left open (a worker's start; never for a one-shot
    command, which would close another process's live calls under the same id).
    drain_s: on exit, keep delivering for up to this long (a one-shot command's last chance;
    whatever is left is delivered by the next exporter to run).
    """
    ledger = await open_ledger(config, catalog=catalog)
    exporter = usage_exporter(config, ledger)
    stop = asyncio.Event()
    export_task: asyncio.Task[None] | None = None
    try:
        if recover:
            await ledger.recover()
        meter = Meter(ledger, queue_size=config.queue_size, on_commit=exporter.wake if exporter else None)
        meter.start()
        if exporter is not None:
            export_task = asyncio.create_task(exporter.run(stop), name="usage-export")
        metering = Metering(ledger, meter, exporter)
        try:
            yield metering
        finally:
            # Usage reaches the ledger even when the command is told to stop waiting (a second
            # Ctrl-C): only the export below may be cut short. aclose() is itself bounded.
            closing = asyncio.ensure_future(meter.aclose())
            try:
                await asyncio.shield(closing)
            except asyncio.CancelledError:
                await closing
                raise
            finally:
                metering.lost = list(meter.lost)
            if exporter is not None and export_task is not None:
                stop.set()
                await export_task
                metering.final = await exporter.drain(drain_s)
    finally:
        if export_task is not None and not export_task.done():  # the wait above was cut short
            export_task.cancel()
            await asyncio.wait([export_task])
        if exporter is not None:
            await exporter.aclose()
        await ledger.aclose()
