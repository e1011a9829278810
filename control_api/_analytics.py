"""/api/v1/analytics/{overview,detailed,timeline}: seed 001's figures for the key's tenant,
computed in SQL on the ledger (metering.Analytics); docs/api.md, "Analytics", has the shapes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from metering import (
    LATENCY_METRICS,
    TIMELINE_BUCKETS_MAX,
    Analytics,
    CallStats,
    Clock,
    Ledger,
    timeline_buckets,
)

from ._errors import TENANT, ApiError
from ._openapi import ApiRoute, Query

DEFAULT_PERIOD = timedelta(days=30)
BUCKETS = {"day": 86_400, "hour": 3_600}
_PERIOD_PARAMS = frozenset({"start_date", "end_date"})
_MINUTE = Decimal(60)


class AnalyticsRoutes:
    def __init__(self, ledger: Ledger, *, clock: Clock | None = None) -> None:
        self.analytics = Analytics(ledger.engine)
        self.clock = clock or ledger.clock
        """The "now" a period without end_date ends at."""

    def routes(self) -> list[ApiRoute]:
        date = {"type": "string", "description": "ISO 8601 date or date-time (UTC when no zone)"}
        period = [Query("start_date", date), Query("end_date", date)]
        tags = ("analytics",)
        return [
            ApiRoute("GET", "/api/v1/analytics/overview", self.overview, "Calls, minutes, cost, latency, outcomes",
                     dict[str, Any], query=period, errors=(400, 401, 429), tags=tags, limit="list"),
            ApiRoute("GET", "/api/v1/analytics/detailed", self.detailed, "The overview per workflow",
                     dict[str, Any], query=period, errors=(400, 401, 429), tags=tags, limit="list"),
            ApiRoute("GET", "/api/v1/analytics/timeline", self.timeline, "Calls, minutes and cost per day or hour",
                     dict[str, Any], errors=(400, 401, 429), tags=tags, limit="list",
                     query=[*period, Query("bucket", {"type": "string", "enum": ["day", "hour"]})]),
        ]  # fmt: skip

    async def overview(self, request: web.Request) -> web.Response:
        start, end = self._period(request.query, _PERIOD_PARAMS)
        stats = await self.analytics.overview(tenant=request[TENANT], start=start, end=end)
        return web.json_response({"period": _period_json(start, end), "metrics": metrics_json(stats)})

    async def detailed(self, request: web.Request) -> web.Response:
        start, end = self._period(request.query, _PERIOD_PARAMS)
        tenant = request[TENANT]
        stats = await self.analytics.overview(tenant=tenant, start=start, end=end)
        workflows = await self.analytics.by_workflow(tenant=tenant, start=start, end=end)
        return web.json_response(
            {
                "period": _period_json(start, end),
                "metrics": metrics_json(stats),
                "workflows": [{"workflow_slug": w.workflow_slug, **metrics_json(w.stats)} for w in workflows],
            }
        )

    async def timeline(self, request: web.Request) -> web.Response:
        q = request.query
        start, end = self._period(q, _PERIOD_PARAMS | {"bucket"})
        bucket = q.get("bucket", "day")
        if bucket not in BUCKETS:
            raise ApiError(400, f"bucket {bucket!r} is not a bucket: day or hour")
        _, count = timeline_buckets(start, end, BUCKETS[bucket])
        if count > TIMELINE_BUCKETS_MAX:
            raise ApiError(
                400,
                f"the period spans {count:,} {bucket} buckets, more than the {TIMELINE_BUCKETS_MAX:,} "
                "a timeline may have: shorten it or use a longer bucket",
            )
        buckets = await self.analytics.timeline(
            tenant=request[TENANT], start=start, end=end, bucket_s=BUCKETS[bucket]
        )
        currencies = sorted({c for b in buckets for c in b.stats.cost})
        return web.json_response(
            {
                "period": _period_json(start, end),
                "bucket": bucket,
                "timeline": [
                    {
                        "bucket": _iso(b.start),
                        "call_count": b.stats.calls,
                        "completed_calls": b.stats.outcomes.get("completed", 0),
                        "avg_duration_seconds": _seconds(b.stats.avg_duration_s),
                        "total_minutes": _minutes(b.stats.duration_s),
                        "total_cost": {c: str(b.stats.cost.get(c, Decimal("0.000000"))) for c in currencies},
                    }
                    for b in buckets
                ],
            }
        )

    def _period(self, q: Mapping[str, str], allowed: frozenset[str]) -> tuple[datetime, datetime]:
        """[start, end) from start_date / end_date; by default the DEFAULT_PERIOD ending now."""
        unknown = set(q) - allowed
        if unknown:
            raise ApiError(
                400,
                f"unknown query parameters: {', '.join(sorted(unknown))} (expected: {', '.join(sorted(allowed))})",
            )
        try:
            end = _when(q, "end_date") or self.clock()
            start = _when(q, "start_date") or end - DEFAULT_PERIOD
        except OverflowError:
            raise ApiError(400, "start_date / end_date: the period is out of range") from None
        if start >= end:
            raise ApiError(400, f"start_date {_iso(start)} must be before end_date {_iso(end)}")
        return start, end


def metrics_json(stats: CallStats) -> dict[str, Any]:
    completed = stats.outcomes.get("completed", 0)
    return {
        "total_calls": stats.calls,
        "completed_calls": completed,
        "incomplete_calls": stats.calls - completed,
        "outcomes": dict(stats.outcomes),
        "avg_duration_seconds": _seconds(stats.avg_duration_s),
        "total_duration_seconds": float(stats.duration_s),
        "total_minutes": _minutes(stats.duration_s),
        "total_cost": {currency: str(amount) for currency, amount in stats.cost.items()},
        "recording_availability_rate": round(stats.recorded_calls / stats.calls, 4) if stats.calls else None,
        "latency_ms": {
            m: {
                "samples": p.samples,
                "p50": p.p50_ms,
                "p95": p.p95_ms,
                "p99": p.p99_ms,
            }
            for m in LATENCY_METRICS
            if (p := stats.latency.get(m)) is not None
        },
    }


def _seconds(s: Decimal | None) -> float | None:
    return None if s is None else float(s)


def _minutes(s: Decimal) -> float:
    return float((s / _MINUTE).quantize(Decimal("0.001")))


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _period_json(start: datetime, end: datetime) -> dict[str, str]:
    return {"start_date": _iso(start), "end_date": _iso(end)}


def _when(q: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 date-time (UTC when it names no zone), or a date: midnight UTC starting that
    day for start_date, ending it for end_date (so end_date=2026-01-31 includes January 31)."""
    raw = q.get(name)
    if raw is None:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        pass
    else:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return midnight + timedelta(days=1) if name == "end_date" else midnight
    try:
        t = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(
            400,
            f"{name} {raw!r} is not an ISO 8601 date or date-time, e.g. 2026-01-17 or 2026-01-17T10:30:00Z",
        ) from None
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
