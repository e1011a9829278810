"""`voicerun metering ...`: the usage ledger's billing outbox, seen and driven from a shell.

The commands read the same Settings as the worker (VOICERUN_DATABASE_URL or DATABASE_URL,
VOICERUN_DATA_DIR, VOICERUN_USAGE_*). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ._cli import EXIT_FAILED, EXIT_OK, CommandError, UsageError

if TYPE_CHECKING:
    from aiohttp import web

    from metering import Ledger

    from ._settings import Settings

T = TypeVar("T")

DEFAULT_LEASE_S = 30.0
CALL_STATUSES = ("active", "completed", "failed", "abandoned")
REQUEST_TIMEOUT_S = 10.0


def add_metering_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    metering = sub.add_parser(
        "metering",
        help="the ledger and its billing outbox: calls, status, dead letters, doubt, retry, export, migrate",
        description="Inspect and drive the usage ledger's outbox of requests to the usage-tracking "
        "API. See docs/metering.md.",
    )
    msub = metering.add_subparsers(dest="metering_command", required=True, metavar="COMMAND")

    calls = msub.add_parser(
        "calls",
        help="list recent calls: id, workflow, start, status, reason, duration, cost",
        description="The calls recorded in the ledger, latest first. `active` calls are running, "
        "or were left by a process that died and will be closed as abandoned by the next process "
        "that opens the ledger to write (see docs/metering.md).",
    )
    calls.add_argument(
        "--limit", type=_count, default=20, metavar="N", help="at most N calls (default: %(default)s)"
    )
    calls.add_argument("--status", choices=CALL_STATUSES, help="only calls with this status")
    calls.add_argument("--json", action="store_true", help="print a JSON array")
    calls.set_defaults(func=cmd_calls)

    status = msub.add_parser(
        "status",
        help="count pending, blocked, dead and delivered events",
        description="Count the outbox's events: pending (blocked ones included), blocked behind a "
        "dead letter, dead, delivered; and how long the oldest pending one has waited.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)

    dead = msub.add_parser("dead", help="list the dead letters: id, call, step, attempts, last error")
    dead.add_argument("--json", action="store_true", help="print a JSON array")
    dead.set_defaults(func=cmd_dead)

    doubt = msub.add_parser(
        "doubt",
        help="list events in doubt; resolve them with --sent or --resend",
        description="Events whose request went out without an answer (a timeout, a crash "
        "mid-request) to a usage API that does not honour Idempotency-Key: they may or may not "
        "have been applied, so they are neither resent nor counted delivered, and their call's "
        "later steps wait. Check the usage API, then mark each --sent (it has it) or --resend.",
    )
    doubt.add_argument("--json", action="store_true", help="print a JSON array")
    resolve = doubt.add_mutually_exclusive_group()
    resolve.add_argument(
        "--sent", type=int, nargs="+", metavar="ID", help="the API has these: mark them delivered"
    )
    resolve.add_argument(
        "--resend", type=int, nargs="+", metavar="ID", help="the API lacks these: send them again"
    )
    doubt.set_defaults(func=cmd_doubt)

    retry = msub.add_parser(
        "retry",
        help="re-queue every dead letter with a fresh attempt count",
        description="Put every dead letter back in the outbox with a fresh attempt count; a running "
        "exporter sends them within seconds. Prints how many.",
    )
    retry.set_defaults(func=cmd_retry)

    export = msub.add_parser(
        "export",
        help="send the outbox to the usage-tracking API",
        description="Send the outbox to $VOICERUN_USAGE_API_URL until SIGTERM or SIGINT (a first "
        "signal lets requests in flight finish, a second abandons them), or with --until-empty "
        "until no event can be sent any more. Several exporters may share a database.",
    )
    export.add_argument(
        "--until-empty",
        action="store_true",
        help="stop when every event is delivered, dead, in doubt, or blocked; exit 1 if any is left "
        "pending, dead or in doubt",
    )
    export.add_argument(
        "--timeout", type=_seconds, metavar="S", help="stop after S seconds (default: no limit)"
    )
    export.add_argument(
        "--lease",
        type=_seconds,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help="how long a claimed event is this exporter's before another may send it (default: %(default)s); "
        f"requests time out after min({REQUEST_TIMEOUT_S:g}, S/2) seconds",
    )
    # A long-running service: it logs what it does at info unless VOICERUN_LOG_LEVEL says otherwise.
    export.set_defaults(func=cmd_export, default_log_level="info")

    migrate = msub.add_parser("migrate", help="upgrade the ledger's schema; print its revision")
    migrate.set_defaults(func=cmd_migrate)

    prune = msub.add_parser(
        "prune",
        help="delete delivered outbox events older than N days",
        description="Delete outbox events delivered more than --days days ago (they only record a "
        "request that succeeded; the calls, their usage and their cost stay). Prints how many.",
    )
    prune.add_argument("--days", type=_days, default=30, metavar="N", help="default: %(default)s")
    prune.set_defaults(func=cmd_prune)


def _count(raw: str) -> int:
    try:
        n = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _days(raw: str) -> int:
    try:
        days = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {raw!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError(f"days must not be negative, got {days}")
    return days


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{raw!r} must be a positive number of seconds")
    return value


# -- commands --------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    status = _run(_with_ledger(args.settings, lambda ledger: ledger.outbox_status(), write=False))
    age_s = _age_s(status.oldest_pending_at)
    if args.json:
        print(
            json.dumps(
                {
                    "pending": status.pending,
                    "blocked": status.blocked,
                    "dead": status.dead,
                    "in_doubt": status.in_doubt,
                    "delivered": status.delivered,
                    "oldest_pending_at": _iso(status.oldest_pending_at),
                    "oldest_pending_age_s": None if age_s is None else round(age_s, 3),
                }
            )
        )
        return EXIT_OK
    print(f"pending    {status.pending}  ({status.blocked} blocked behind dead letters or events in doubt)")
    print(f"failed     {status.dead}  (dead letters: `voicerun metering dead` lists, `retry` re-sends)")
    print(f"in doubt   {status.in_doubt}  (sent, answer lost: `voicerun metering doubt` lists and resolves)")
    print(f"delivered  {status.delivered}")
    print(f"oldest pending: {'-' if age_s is None else _duration(age_s) + ' ago'}")
    return EXIT_OK


def cmd_calls(args: argparse.Namespace) -> int:
    rows = _run(
        _with_ledger(
            args.settings,
            lambda ledger: ledger.recent_calls(limit=args.limit, status=args.status),
            write=False,
        )
    )
    calls = [
        {
            "id": c.id,
            "workflow": c.workflow_slug,
            "started_at": _iso(c.started_at),
            "status": c.status,
            "reason": c.ended_reason,
            "duration_s": None if c.duration_seconds is None else float(c.duration_seconds),
            "cost": None if c.cost_total is None else str(c.cost_total),
            "currency": c.currency,
        }
        for c in rows
    ]

    def line(c: dict[str, Any]) -> list[object]:
        duration = "-" if c["duration_s"] is None else f"{c['duration_s']:.1f} s"
        cost = "-" if c["cost"] is None else f"{c['cost']} {c['currency'] or ''}".strip()
        return [c["id"], c["workflow"], c["started_at"], c["status"], c["reason"] or "-", duration, cost]

    return _listing(
        calls,
        as_json=args.json,
        empty="no calls" + (f" with status {args.status}" if args.status else ""),
        header="CALL WORKFLOW STARTED STATUS REASON DURATION COST",
        line=line,
    )


def cmd_dead(args: argparse.Namespace) -> int:
    rows = _run(_with_ledger(args.settings, lambda ledger: ledger.dead_letters(), write=False))
    letters = [
        {
            "id": event.id,
            "call_id": event.call_id,
            "step": event.step,
            "attempts": letter.attempts,
            "failed_at": _iso(letter.failed_at),
            "last_error": letter.last_error,
        }
        for event, letter in rows
    ]
    return _listing(
        letters,
        as_json=args.json,
        empty="no dead letters",
        header="ID CALL STEP ATTEMPTS FAILED_AT LAST_ERROR",
        line=lambda d: [d["id"], d["call_id"], d["step"], d["attempts"], d["failed_at"], d["last_error"]],
    )


def cmd_doubt(args: argparse.Namespace) -> int:
    ids: list[int] | None = args.sent or args.resend
    if ids is not None:
        sent = args.sent is not None
        changed = _run(
            _with_ledger(args.settings, lambda ledger: ledger.resolve_doubt(ids, sent=sent), write=True)
        )
        print(
            f"{'marked delivered' if sent else 're-queued'}: {len(changed)} event{'' if len(changed) == 1 else 's'}"
        )
        unknown = sorted(set(ids) - set(changed))
        if unknown:
            raise CommandError(
                f"not in doubt (no such event, or already resolved): {' '.join(map(str, unknown))}"
            )
        return EXIT_OK
    events = _run(_with_ledger(args.settings, lambda ledger: ledger.in_doubt(), write=False))
    rows = [
        {
            "id": e.id,
            "call_id": e.call_id,
            "step": e.step,
            "idempotency_key": e.idempotency_key,
            "sent_at": _iso(e.sending_since),
            "attempts": e.attempts,
            "last_error": e.last_error,
            "payload": e.payload,
        }
        for e in events
    ]
    return _listing(
        rows,
        as_json=args.json,
        empty="no events in doubt",
        header="ID CALL STEP SENT_AT LAST_ERROR",
        line=lambda d: [d["id"], d["call_id"], d["step"], d["sent_at"] or "-", d["last_error"]],
    )


def _listing(
    rows: list[dict[str, Any]],
    *,
    as_json: bool,
    empty: str,
    header: str,
    line: Callable[[dict[str, Any]], list[object]],
) -> int:
    """What the listing commands print: a JSON array, or a tab-separated table for the eye and
    for `cut` (a value's own whitespace, e.g. an error message's newlines, folded to spaces)."""
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(empty)
    else:
        print(header.replace(" ", "\t").replace("_", " "))
        for row in rows:
            print("\t".join(" ".join(str(v).split()) for v in line(row)))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    n = _run(_with_ledger(args.settings, lambda ledger: ledger.retry_dead(), write=True))
    print(f"re-queued {n} dead letter{'' if n == 1 else 's'}")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    before = datetime.now(UTC) - timedelta(days=args.days)
    n = _run(_with_ledger(args.settings, lambda ledger: ledger.prune_delivered(before), write=True))
    print(f"deleted {n} delivered outbox event{'' if n == 1 else 's'} older than {args.days} days")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    rev = _run(_with_ledger(args.settings, lambda ledger: ledger.schema_revision(), write=True))
    print(f"ledger schema at revision {rev}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    if not settings.usage_api_url:
        raise UsageError("VOICERUN_USAGE_API_URL is not set: there is no usage-tracking API to export to")
    code: int = _run(
        _export(settings, until_empty=args.until_empty, timeout_s=args.timeout, lease_s=args.lease)
    )
    return code


async def _export(settings: Settings, *, until_empty: bool, timeout_s: float | None, lease_s: float) -> int:
    from metering import usage_exporter

    ledger = await _open_ledger(settings, write=True)
    exporter = usage_exporter(
        settings.metering(), ledger, lease_s=lease_s, request_timeout_s=min(REQUEST_TIMEOUT_S, lease_s / 2)
    )
    assert exporter is not None  # cmd_export checked the URL
    metrics = await _serve_metrics(settings)
    stop = asyncio.Event()
    if until_empty:
        work: asyncio.Task[object] = asyncio.create_task(
            exporter.drain(math.inf if timeout_s is None else timeout_s, stop=stop), name="usage-export"
        )
    else:
        work = asyncio.create_task(exporter.run(stop), name="usage-export")
    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout_s, stop.set) if timeout_s is not None and not until_empty else None
    signals: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        # The first signal stops new requests and lets those in flight finish (each is bounded
        # by the request timeout); a second abandons them: their claims expire after the lease.
        if stop.is_set():
            signals.append(sig)
            work.cancel()
        else:
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        result = await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not signals or (current is not None and current.cancelling()):
            raise
        return 128 + signals[-1]
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if timer is not None:
            timer.cancel()
        await exporter.aclose()
        await ledger.aclose()
        if metrics is not None:
            await metrics.cleanup()
    if not until_empty:
        return EXIT_OK
    from metering import OutboxStatus

    assert isinstance(result, OutboxStatus)
    print(
        f"outbox: {result.pending} pending ({result.blocked} blocked), {result.dead} dead, "
        f"{result.in_doubt} in doubt, {result.delivered} delivered"
    )
    return EXIT_OK if result.pending == 0 and result.dead == 0 and result.in_doubt == 0 else EXIT_FAILED


# -- helpers ---------------------------------------------------------------------------------


async def _serve_metrics(settings: Settings) -> web.AppRunner | None:
    """Prometheus metrics on VOICERUN_METRICS_PORT, if set; the port bound is logged."""
    if settings.metrics_port is None:
        return None
    import structlog

    from metering import bound_port, serve_metrics

    runner = await serve_metrics(settings.metrics_host, settings.metrics_port)
    structlog.get_logger("voicerun.metering").info(
        "metrics_serving", host=settings.metrics_host, port=bound_port(runner)
    )
    return runner


async def _open_ledger(settings: Settings, *, write: bool) -> Ledger:
    """The configured ledger. A command that only reads (write=False) never creates, migrates
    or writes one; a command that writes migrates it first."""
    from metering import load_catalog, open_ledger

    # The outbox commands price nothing: the bundled catalog satisfies the ledger.
    return await open_ledger(settings.metering(), catalog=load_catalog(), writable=write)


async def _with_ledger(settings: Settings, use: Callable[[Ledger], Awaitable[T]], *, write: bool) -> T:
    ledger = await _open_ledger(settings, write=write)
    try:
        return await use(ledger)
    finally:
        await ledger.aclose()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with the ledger's failures as one line: a configuration that cannot work
    (LedgerConfigError: a malformed DATABASE_URL, an unwritable data dir) exits 2; an
    unreachable database or a schema that needs migrating exits 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from metering import LedgerConfigError, MeteringError

    try:
        return asyncio.run(coro)
    except LedgerConfigError as exc:  # the operator's configuration: a usage error
        raise UsageError(_first_line(exc)) from None
    except (MeteringError, SQLAlchemyError, OSError) as exc:
        raise CommandError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _age_s(at: datetime | None) -> float | None:
    return None if at is None else max(0.0, (datetime.now(UTC) - at).total_seconds())


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"
