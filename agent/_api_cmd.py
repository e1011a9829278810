"""`voicerun api` (the control API server) and `voicerun keys` (its tenants' API keys)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import structlog

from ._metering_cmd import _count
from ._supervisor import supervise

log = structlog.get_logger("voicerun.api")
T = TypeVar("T")


def add_api_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = os.environ.get
    a = sub.add_parser(
        "api",
        help="serve the control API (start, watch and end calls over HTTP)",
        description="Serve /api/v1 on the ledger's database (DATABASE_URL; SQLite by default), "
        "creating calls in LiveKit (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET).",
    )
    a.add_argument("--host", default=env("VOICERUN_API_HOST", "127.0.0.1"), help="(env VOICERUN_API_HOST)")
    a.add_argument(
        "--port", type=int, default=int(env("VOICERUN_API_PORT", "8000")), help="(env VOICERUN_API_PORT)"
    )
    a.add_argument(
        "--agent-name", default=env("VOICERUN_AGENT_NAME", "voicerun"), help="the workers' agent name"
    )
    a.add_argument(
        "--processes",
        type=_count,
        default=env("VOICERUN_API_PROCESSES", "1"),
        help="server processes sharing the port (SO_REUSEPORT); above 1, set REDIS_URL so rate "
        "limits hold across them (env VOICERUN_API_PROCESSES; default %(default)s)",
    )
    a.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)
    a.add_argument(
        "--schedule-missed-after",
        type=_missed_after,
        default=env("VOICERUN_SCHEDULE_MISSED_AFTER", "3600"),
        metavar="SECONDS",
        help="a scheduled dial later than this (the API was down) fails as `missed` instead of "
        "ringing late; `off`: dial however late (env VOICERUN_SCHEDULE_MISSED_AFTER, default 3600)",
    )
    a.set_defaults(func=cmd_api, default_log_level="info")

    keys = sub.add_parser("keys", help="API keys of the control API's tenants")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = ksub.add_parser("create", help="create a key for a tenant and print it (shown once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(func=cmd_keys_create)


def _missed_after(raw: str) -> timedelta | None:
    from ._metering_cmd import _seconds

    return None if raw.strip().lower() == "off" else timedelta(seconds=_seconds(raw))


def cmd_keys_create(args: argparse.Namespace) -> int:
    from metering import open_ledger

    from ._cli import UsageError
    from ._report import price_catalog

    async def create() -> Any:
        ledger = await open_ledger(args.settings.metering(), catalog=price_catalog())
        try:
            return await ledger.create_api_key(args.tenant, args.name)
        finally:
            await ledger.aclose()

    try:
        key = asyncio.run(create())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(key.key)
    print(f"(tenant {key.tenant}, id {key.id}: store it now, it is not shown again)", flush=True)
    return 0


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run the API's loop on libuv where uvloop is installed (every platform but Windows):
    its socket handling takes about a third less CPU per request than asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def cmd_api(args: argparse.Namespace) -> int:
    from ._cli import UsageError

    missing = [v for v in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"{', '.join(missing)} not set: the API creates calls in LiveKit")
    if args.process_index is None and args.processes > 1:
        if not os.environ.get("REDIS_URL"):
            log.warning(
                "api_rate_limits_per_process",
                processes=args.processes,
                hint="without REDIS_URL each process counts its own requests",
            )
        base = [sys.executable, "-m", "agent", "api", "--host", args.host, "--port", str(args.port)]
        late = args.schedule_missed_after
        base += ["--agent-name", args.agent_name, "--processes", "1"]
        base += ["--schedule-missed-after", "off" if late is None else str(late.total_seconds())]
        argvs = [[*base, "--process-index", str(i)] for i in range(args.processes)]
        return supervise(argvs, dict(os.environ), name="api")
    try:
        return run_on_uvloop(_serve(args))
    except ValueError as exc:  # a setting: a bad master key, rate limit or recordings URL
        raise UsageError(str(exc).splitlines()[0]) from None


async def _serve(args: argparse.Namespace) -> int:
    import dataclasses

    from aiohttp import web

    from control_api import (
        DialScheduler,
        LiveKitCalls,
        LiveKitConfig,
        LocalCounter,
        RateLimiter,
        RedisCounter,
        create_app,
        parse_limits,
    )
    from metering import KeyCipher, WebhookDeliverer, open_ledger
    from workflows import WorkflowRegistry

    from ._recording_store import recording_store
    from ._report import price_catalog

    settings = args.settings
    registry = WorkflowRegistry.load(settings.workflows)
    # Its own id in the ledger: a worker sharing the API's id would close the API's pending
    # calls as abandoned when it starts (recover()).
    suffix = "-api" if args.process_index is None else f"-api-{args.process_index}"
    config = dataclasses.replace(settings.metering(), worker_id=f"{settings.worker_id}{suffix}")
    ledger = await open_ledger(config, catalog=price_catalog())
    livekit = LiveKitCalls(
        LiveKitConfig(
            url=os.environ["LIVEKIT_URL"],
            api_key=os.environ["LIVEKIT_API_KEY"],
            api_secret=os.environ["LIVEKIT_API_SECRET"],
            agent_name=args.agent_name,
            sip_trunk_id=os.environ.get("VOICERUN_SIP_TRUNK_ID") or None,
        )
    )
    counter = RedisCounter(redis_url) if (redis_url := os.environ.get("REDIS_URL")) else LocalCounter()
    limiter = RateLimiter(counter, parse_limits(os.environ.get("VOICERUN_API_RATE_LIMITS", "")))
    # Recordings are read where the workers store them (the same directory volume, or S3).
    store = recording_store(settings.recordings) if settings.recordings else None
    cipher = KeyCipher.parse(settings.master_keys.get_secret_value()) if settings.master_keys else None
    # Scheduled dials: every API process runs a scheduler; the one holding the ledger's schedule
    # lease dials (control_api/_scheduler.py).
    scheduler = DialScheduler(ledger, livekit, missed_after=args.schedule_missed_after)
    app = create_app(
        ledger,
        registry,
        livekit,
        limiter=limiter,
        recordings=store,
        provider_keys=cipher,
        dial_scheduled=scheduler.wake,
    )
    runner = web.AppRunner(app, shutdown_timeout=10.0)
    # Webhooks go out from the ledger's outbox; every API process delivers (claims keep it once).
    deliverer = WebhookDeliverer(ledger)
    # The background work of every API process: stopped together, after the server.
    stop_background = asyncio.Event()
    delivering = asyncio.create_task(deliverer.run(stop_background), name="webhooks")
    sweeping = asyncio.create_task(_sweep_orphans(ledger, stop_background), name="orphans")
    scheduling = asyncio.create_task(scheduler.run(stop_background), name="dial-scheduler")
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Under a supervisor, its processes share the port; the kernel spreads connections.
        shared = args.process_index is not None
        await web.TCPSite(runner, args.host, args.port, reuse_port=shared).start()
        log.info("api_listening", host=args.host, port=runner.addresses[0][1])
        await stop.wait()
        log.info("api_stopping")
    finally:
        await runner.cleanup()
        stop_background.set()
        await delivering
        await sweeping
        await scheduling  # gives the schedule lease back: another process takes over at once
        await deliverer.aclose()
        await limiter.aclose()
        await livekit.aclose()
        await ledger.aclose()
    return 0


ORPHAN_SWEEP_S = 60.0


async def _sweep_orphans(ledger: Any, stop: asyncio.Event) -> None:
    """Close the calls of workers that died and fail calls no worker took (recover_orphans),
    every minute, so their webhooks (call.failed) go out without waiting for a restart."""
    from sqlalchemy.exc import SQLAlchemyError

    while not stop.is_set():
        try:
            await ledger.recover_orphans()
        except (SQLAlchemyError, OSError) as exc:
            log.error("orphan_sweep_failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        try:
            await asyncio.wait_for(stop.wait(), ORPHAN_SWEEP_S)
        except TimeoutError:
            pass
