"""`voicerun worker`: N worker processes (one per core by default), each registering with LiveKit;
one that dies is restarted, and LiveKit re-dispatches only the calls it had."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import structlog

from ._metering_cmd import _count
from ._supervisor import EXIT_FAILED, EXIT_OK, supervise

log = structlog.get_logger("voicerun.worker")


def add_worker_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = os.environ.get
    w = sub.add_parser(
        "worker",
        help="serve calls dispatched by a LiveKit server (the production transport)",
        description="Register with a LiveKit server (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET) "
        "and run the calls it dispatches to this agent name. SIGTERM drains. See docs/deploy.md.",
    )
    w.add_argument(
        "--url", default=env("LIVEKIT_URL"), help="LiveKit server, ws:// or wss:// (env LIVEKIT_URL)"
    )
    w.add_argument("--api-key", default=env("LIVEKIT_API_KEY"), help="(env LIVEKIT_API_KEY)")
    w.add_argument("--api-secret", default=env("LIVEKIT_API_SECRET"), help="(env LIVEKIT_API_SECRET)")
    w.add_argument(
        "--agent-name",
        default=env("VOICERUN_AGENT_NAME", "voicerun"),
        help="calls are dispatched explicitly to this name (env VOICERUN_AGENT_NAME; default %(default)s)",
    )
    w.add_argument(
        "--processes",
        type=_count,
        default=env("VOICERUN_WORKER_PROCESSES", str(os.cpu_count() or 1)),
        help="worker processes (env VOICERUN_WORKER_PROCESSES; default one per core: %(default)s)",
    )
    w.add_argument(
        "--max-calls",
        type=_count,
        default=env("VOICERUN_MAX_CALLS_PER_PROCESS", "20"),
        help="calls one process takes at once (env VOICERUN_MAX_CALLS_PER_PROCESS; default %(default)s)",
    )
    w.add_argument(
        "--port",
        type=_port,
        default=env("VOICERUN_WORKER_PORT", "8081"),
        help="health and /metrics: process i listens on PORT+i; 0: free ports, logged "
        "(env VOICERUN_WORKER_PORT; default %(default)s)",
    )
    w.add_argument(
        "--drain-timeout",
        type=float,
        default=env("VOICERUN_DRAIN_TIMEOUT_S", "600"),
        help="on SIGTERM, seconds running calls may take before they end with reason drain "
        "(env VOICERUN_DRAIN_TIMEOUT_S; default %(default)s)",
    )
    w.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)
    w.set_defaults(func=cmd_worker, default_log_level="info")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be 0-65535, got {value}")
    return value


def _check_url(url: str | None) -> str:
    from ._cli import UsageError

    if not url:
        raise UsageError("no LiveKit server: set LIVEKIT_URL (or --url), e.g. ws://127.0.0.1:7880")
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        raise UsageError(f"LIVEKIT_URL must start with ws://, wss://, http:// or https://, got {url!r}")
    return url


def cmd_worker(args: argparse.Namespace) -> int:
    import warnings

    from ._cli import UsageError

    # PyJWT warns on every token signed with a secret under 32 bytes (livekit-server --dev's is
    # "secret"); the operator hears it once, from us, instead of a warning per request.
    warnings.filterwarnings("ignore", message="The HMAC key is")

    url = _check_url(args.url)
    for option, value in (
        ("LIVEKIT_API_KEY (or --api-key)", args.api_key),
        ("LIVEKIT_API_SECRET (or --api-secret)", args.api_secret),
    ):
        if not value:
            raise UsageError(f"{option} is not set")
    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout must be 0 or more seconds, got {args.drain_timeout}")
    if args.process_index is None and args.processes > 1:
        _preflight(args, url)  # once, before N processes would each say the same
        return _supervise(args)
    return _serve_one(args, url, args.process_index or 0)


def _preflight(args: argparse.Namespace, url: str) -> None:
    from ._cli import CommandError
    from ._worker import LiveKitServices, WorkerConfig, WorkerStartError

    async def check() -> None:
        services = LiveKitServices(WorkerConfig(url=url, api_key=args.api_key, api_secret=args.api_secret))
        try:
            await services.check_credentials()
        finally:
            await services.aclose()

    try:
        asyncio.run(check())
    except WorkerStartError as exc:
        raise CommandError(str(exc)) from None


def _serve_one(args: argparse.Namespace, url: str, index: int) -> int:
    from ._cli import CommandError, UsageError
    from ._worker import WorkerConfig, WorkerStartError

    settings = args.settings
    if args.process_index is not None:
        settings = settings.model_copy(update={"worker_id": f"{settings.worker_id}-{index}"})
    config = WorkerConfig(
        url=url,
        api_key=args.api_key,
        api_secret=args.api_secret,
        agent_name=args.agent_name,
        max_calls=args.max_calls,
        port=args.port + index if args.port else 0,
        drain_timeout_s=args.drain_timeout,
    )
    try:
        return asyncio.run(_serve(settings, config))
    except WorkerStartError as exc:
        raise CommandError(str(exc)) from None
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


async def _serve(settings: Any, config: Any) -> int:
    from metering import KeyCipher, open_metering
    from workflows import WorkflowError, WorkflowRegistry

    from ._cli import UsageError
    from ._providers import ProviderPool
    from ._recording_store import recording_store
    from ._report import price_catalog
    from ._worker import LiveKitServices, Worker, install_drain_signals

    try:
        registry = WorkflowRegistry.load(settings.workflows)
    except WorkflowError as exc:
        raise UsageError(f"workflows in {settings.workflows}: {exc}".splitlines()[0]) from None
    if not registry.slugs:
        raise UsageError(f"no workflows in {settings.workflows} (VOICERUN_WORKFLOWS)")
    recordings = recording_store(settings.recordings) if settings.recordings else None
    providers = ProviderPool()
    cipher = KeyCipher.parse(settings.master_keys.get_secret_value()) if settings.master_keys else None
    async with open_metering(settings.metering(), catalog=price_catalog(), recover=True) as metering:
        ledger = metering.ledger

        async def credentials(tenant: str) -> dict[str, dict[str, str]]:
            assert cipher is not None
            return await ledger.tenant_credentials(tenant, cipher=cipher)

        worker = Worker(
            config,
            registry=registry,
            providers=providers,
            meter=metering.meter,
            recordings=recordings,
            services=LiveKitServices(config),
            credentials=credentials if cipher is not None else None,
        )
        install_drain_signals(worker)
        try:
            await worker.run()
        finally:
            await providers.aclose()
    return EXIT_OK if not metering.lost else EXIT_FAILED


def _supervise(args: argparse.Namespace) -> int:
    """Run --processes children (this command again, one process each)."""
    base = [sys.executable, "-m", "agent", "worker"]
    passthrough = [
        "--url", args.url, "--agent-name", args.agent_name, "--processes", "1",
        "--max-calls", str(args.max_calls), "--port", str(args.port),
        "--drain-timeout", str(args.drain_timeout),
    ]  # fmt: skip
    # The key and secret go by environment, not argv (which `ps` shows to every user).
    env = {**os.environ, "LIVEKIT_API_KEY": args.api_key, "LIVEKIT_API_SECRET": args.api_secret}
    argvs = [[*base, *passthrough, "--process-index", str(i)] for i in range(args.processes)]
    return supervise(argvs, env, name="worker")
