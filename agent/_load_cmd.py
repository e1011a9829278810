"""`voicerun load`'s run and its printout (the measuring is agent/_load.py's)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ._cli import EXIT_FAILED, EXIT_OK, CommandError, UsageError, calls_errors


def run_load_command(
    args: argparse.Namespace, workflow: Any, caller: Any, total: int, report_path: Path | None
) -> int:
    from metering import MeteringError

    try:
        with calls_errors(args.workflow):
            report = asyncio.run(_load(args, workflow, caller, total))
    except MeteringError as exc:  # the price catalog, for --metered
        raise UsageError(str(exc).splitlines()[0]) from None
    print(_summary(report, os.cpu_count()))
    if report_path is not None:
        try:
            report_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        except OSError as exc:
            raise CommandError(f"cannot write {report_path}: {exc.strerror or exc}") from None
        print(f"report: {report_path}")
    return EXIT_FAILED if report.failed_calls else EXIT_OK


async def _load(args: argparse.Namespace, workflow: Any, caller: Any, total: int) -> Any:
    from ._load import run_load
    from ._providers import ProviderPool

    async with AsyncExitStack() as stack:
        if args.instant_providers:
            from pipeline.testing import instant_providers

            pool = ProviderPool(instant_providers())
        else:
            pool = ProviderPool()
        stack.push_async_callback(pool.aclose)
        meter = None
        if args.metered:
            from metering import open_metering

            from ._report import price_catalog

            metering = await stack.enter_async_context(
                open_metering(args.settings.metering(), catalog=price_catalog())
            )
            meter = metering.meter
        progress = _Progress(total) if sys.stderr.isatty() else None
        return await run_load(
            workflow, caller, providers=pool, calls=args.calls, total=total, ramp_s=args.ramp,
            meter=meter, on_call_done=progress,
        )  # fmt: skip


class _Progress:
    """A one-line counter on a terminal's stderr."""

    def __init__(self, total: int) -> None:
        self._total = total

    def __call__(self, done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{done}/{total} calls", end=end, file=sys.stderr, flush=True)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def _summary(r: Any, cores: int | None) -> str:
    lines = [
        f"{r.calls} calls, {r.concurrency} at a time, in {r.wall_s:.1f} s ({cores or '?'} cores)",
        f"  failed calls          {r.failed_calls}"
        + (f"  ({', '.join(f'{k}: {v}' for k, v in r.failures.items())})" if r.failures else ""),
        f"  turns                 {r.turns} answered, {r.unanswered_turns} unanswered",
        f"  end of speech -> first agent audio   p50 {_ms(r.e2e_p50_ms)}  p95 {_ms(r.e2e_p95_ms)}"
        f"  max {_ms(r.e2e_max_ms)}",
        f"  as the metrics report it             p50 {_ms(r.reported_e2e_p50_ms)}  p95 {_ms(r.reported_e2e_p95_ms)}",
        f"  pipeline overhead                    p50 {_ms(r.overhead_p50_ms)}  p95 {_ms(r.overhead_p95_ms)}",
        f"  CPU s per call-second  {r.cpu_s_per_call_s:.5f}",
        f"  RSS                   {r.rss_start_mb:.0f} MB at start, {r.rss_peak_mb:.0f} MB peak, "
        f"{r.rss_per_call_mb:.3f} MB per call, drift {r.rss_drift_mb:+.1f} MB",
    ]
    if r.engines:
        busy = ", ".join(f"{name} {share:.0%}" for name, share in sorted(r.engines.items()))
        lines.append(f"  engine threads busy   {busy}")
    return "\n".join(lines)
