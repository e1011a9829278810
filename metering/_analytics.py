"""A tenant's call analytics over a period, computed in SQL on the ledger (SQLite and PostgreSQL).

The period is the calls *started* in [start, end). Every figure is aggregated by the database;
what comes back is one row per group (a workflow, a time bucket, a status, a currency), never
one per call or per turn, so a tenant with millions of turns costs a scan, not memory.

Sums are exact on both databases: durations are summed as integer milliseconds and costs as
integer micro-units (the precision they are stored with), because SQLite sums NUMERIC as floats.

Latency percentiles use the nearest-rank method, the same SQL on both databases: over the N
values of a metric (turns whose value is not NULL), ordered ascending, the p-th percentile is the
value at 1-based rank ceil(p * N / 100). It is always a latency that was measured (never an
interpolation), and PostgreSQL's percentile_cont is not used so that both databases agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Integer, case, cast, extract, func, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from ._keys import check_tenant
from ._records import CALL_STATUSES
from ._schema import Call, TurnMetric

LATENCY_PERCENTILES = (50, 95, 99)
TIMELINE_BUCKETS_MAX = 2000
"""A timeline longer than this is refused (a chart of more points is a mistake, and a slow one)."""

_LATENCY_COLUMNS: Mapping[str, Any] = {
    "e2e": TurnMetric.e2e_latency_ms,
    "stt": TurnMetric.stt_latency_ms,
    "llm_ttft": TurnMetric.llm_ttft_ms,
    "tts_ttfb": TurnMetric.tts_ttfb_ms,
}
LATENCY_METRICS = tuple(_LATENCY_COLUMNS)
"""The turn latencies summarised: end to end, STT, the LLM's first token, TTS's first byte."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = Decimal("0.001")
_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyPercentiles:
    """Nearest-rank percentiles of one turn latency, in milliseconds; None when no turn has it."""

    samples: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


_NO_LATENCY = LatencyPercentiles(samples=0, p50_ms=None, p95_ms=None, p99_ms=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStats:
    """Calls started in a period (or a part of it): counts, time, money and latency."""

    calls: int
    outcomes: Mapping[str, int]
    """Calls by status, every status of CALL_STATUSES present (zero when none)."""
    ended_calls: int
    """Calls with a duration (closed); the average duration is over these."""
    duration_s: Decimal
    """The sum of their durations, exact to the millisecond."""
    recorded_calls: int
    cost: Mapping[str, Decimal]
    """The sum of the calls' cost_total per currency (priced calls only, so closed ones)."""
    latency: Mapping[str, LatencyPercentiles]
    """Per LATENCY_METRICS name, over the turns of these calls (empty for timeline buckets)."""

    @property
    def avg_duration_s(self) -> Decimal | None:
        return None if not self.ended_calls else (self.duration_s / self.ended_calls).quantize(_MS)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStats:
    workflow_slug: str
    stats: CallStats


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineBucket:
    start: datetime
    """UTC; the bucket holds calls started in [start, start + bucket), within the period."""
    stats: CallStats


def timeline_buckets(start: datetime, end: datetime, bucket_s: int) -> tuple[datetime, int]:
    """The first bucket's start (the period's start rounded down to a multiple of `bucket_s`
    since the Unix epoch: midnight UTC for days, the hour for hours) and how many buckets
    cover [start, end)."""
    width = timedelta(seconds=bucket_s)
    first = _EPOCH + ((start - _EPOCH) // width) * width
    return first, -((first - end) // width)


class Analytics:
    """Read-only queries on the ledger's engine (Ledger.engine): it shares the ledger's pool."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name

    async def overview(self, *, tenant: str, start: datetime, end: datetime) -> CallStats:
        where = _period(tenant, start, end)
        group: Any = literal_column("''")
        async with self.engine.connect() as conn:
            stats = await _stats(conn, where, group, latency=True)
        return stats.get("", _empty(latency=True))

    async def by_workflow(self, *, tenant: str, start: datetime, end: datetime) -> tuple[WorkflowStats, ...]:
        """Each workflow with calls in the period: most calls first, then by slug."""
        where = _period(tenant, start, end)
        async with self.engine.connect() as conn:
            stats = await _stats(conn, where, Call.workflow_slug, latency=True)
        found = [WorkflowStats(workflow_slug=str(slug), stats=s) for slug, s in stats.items()]
        return tuple(sorted(found, key=lambda w: (-w.stats.calls, w.workflow_slug)))

    async def timeline(
        self, *, tenant: str, start: datetime, end: datetime, bucket_s: int
    ) -> tuple[TimelineBucket, ...]:
        """Every bucket of `bucket_s` seconds covering the period, those without calls included
        (zeros), oldest first. ValueError: more than TIMELINE_BUCKETS_MAX buckets."""
        where = _period(tenant, start, end)
        if bucket_s < 1:
            raise ValueError(f"bucket of {bucket_s} s: a bucket is at least a second")
        first, count = timeline_buckets(start, end, bucket_s)
        if count > TIMELINE_BUCKETS_MAX:
            raise ValueError(f"{count} buckets: a timeline has at most {TIMELINE_BUCKETS_MAX}")
        origin = int((first - _EPOCH).total_seconds())
        # Integer division of a non-negative offset (the period starts at or after `origin`):
        # the same floor on both databases. The literals are our own integers, inlined so the
        # GROUP BY matches the select list on PostgreSQL.
        index = (self._epoch_s(Call.started_at) - literal_column(str(origin), BigInteger)) // literal_column(
            str(bucket_s), Integer
        )
        async with self.engine.connect() as conn:
            stats = await _stats(conn, where, index, latency=False)
        width = timedelta(seconds=bucket_s)
        return tuple(
            TimelineBucket(start=first + i * width, stats=stats.get(i, _empty(latency=False)))
            for i in range(count)
        )

    def _epoch_s(self, column: Any) -> Any:
        """Whole seconds since the Unix epoch (floored) of a UTC datetime column."""
        if self._dialect == "postgresql":
            return cast(func.floor(extract("epoch", column)), BigInteger)
        # SQLite keeps the ledger's datetimes as UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'.
        return cast(func.strftime("%s", column), BigInteger)


def _period(tenant: str, start: datetime, end: datetime) -> list[Any]:
    check_tenant(tenant)
    for name, at in (("start", start), ("end", end)):
        if at.tzinfo is None:
            raise ValueError(f"{name} {at.isoformat()} has no time zone: the ledger compares aware times")
    if start >= end:
        raise ValueError(
            f"the period is empty: start {start.isoformat()} is not before end {end.isoformat()}"
        )
    return [Call.tenant == tenant, Call.started_at >= start, Call.started_at < end]


def _exact(column: Any, scale: int) -> Any:
    """The column in integer units of 1/scale, so sums are exact on SQLite too."""
    return cast(func.round(column * literal_column(str(scale), Integer)), BigInteger)


def _empty(*, latency: bool) -> CallStats:
    return CallStats(
        calls=0,
        outcomes=dict.fromkeys(CALL_STATUSES, 0),
        ended_calls=0,
        duration_s=Decimal("0.000"),
        recorded_calls=0,
        cost={},
        latency=dict.fromkeys(LATENCY_METRICS, _NO_LATENCY) if latency else {},
    )


async def _stats(conn: Any, where: Sequence[Any], group: Any, *, latency: bool) -> dict[Any, CallStats]:
    """CallStats per value of `group` (an expression on calls), for groups with calls."""
    calls = (
        select(
            group.label("grp"),
            Call.status.label("status"),
            Call.duration_seconds.label("duration"),
            _exact(Call.duration_seconds, 1000).label("duration_ms"),
            Call.recording_location.label("recording"),
            Call.currency.label("currency"),
            _exact(Call.cost_total, 1_000_000).label("cost_micros"),
        )
        .where(*where)
        .subquery()
    )
    by_status = (
        await conn.execute(
            select(
                calls.c.grp,
                calls.c.status,
                func.count(),
                func.count(calls.c.duration),
                func.coalesce(func.sum(calls.c.duration_ms), 0),
                func.count(calls.c.recording),
            ).group_by(calls.c.grp, calls.c.status)
        )
    ).all()
    by_currency = (
        await conn.execute(
            select(calls.c.grp, calls.c.currency, func.sum(calls.c.cost_micros))
            .where(calls.c.cost_micros.is_not(None), calls.c.currency.is_not(None))
            .group_by(calls.c.grp, calls.c.currency)
        )
    ).all()
    percentiles = await _percentiles(conn, where, group) if latency else {}

    totals: dict[Any, dict[str, Any]] = {}
    for grp, status, count, ended, duration_ms, recorded in by_status:
        t = totals.setdefault(
            grp, {"outcomes": dict.fromkeys(CALL_STATUSES, 0), "ended": 0, "ms": 0, "rec": 0}
        )
        t["outcomes"][status] = t["outcomes"].get(status, 0) + int(count)
        t["ended"] += int(ended)
        t["ms"] += int(duration_ms)
        t["rec"] += int(recorded)
    costs: dict[Any, dict[str, Decimal]] = {}
    for grp, currency, micros in by_currency:
        costs.setdefault(grp, {})[str(currency)] = (Decimal(int(micros)) / 1_000_000).quantize(_MICRO)
    out = {}
    for grp, t in totals.items():
        out[grp] = CallStats(
            calls=sum(t["outcomes"].values()),
            outcomes=t["outcomes"],
            ended_calls=t["ended"],
            duration_s=(Decimal(t["ms"]) / 1000).quantize(_MS),
            recorded_calls=t["rec"],
            cost=dict(sorted(costs.get(grp, {}).items())),
            latency={m: percentiles.get((m, grp), _NO_LATENCY) for m in LATENCY_METRICS} if latency else {},
        )
    return out


async def _percentiles(
    conn: Any, where: Sequence[Any], group: Any
) -> dict[tuple[str, Any], LatencyPercentiles]:
    """Nearest-rank LATENCY_PERCENTILES of every latency metric, per group, in one query:
    window functions (row_number, count) that SQLite and PostgreSQL both have, then the rows at
    rank ceil(p * n / 100), computed in integers as (p * n + 99) // 100."""
    values = union_all(
        *(
            select(
                literal_column(f"'{name}'").label("metric"),
                group.label("grp"),
                column.label("v"),
            )
            .select_from(TurnMetric)
            .join(Call, Call.id == TurnMetric.call_id)
            .where(*where, column.is_not(None))
            for name, column in _LATENCY_COLUMNS.items()
        )
    ).subquery()
    partition = (values.c.metric, values.c.grp)
    ranked = select(
        values.c.metric,
        values.c.grp,
        values.c.v,
        cast(func.row_number().over(partition_by=partition, order_by=values.c.v), Integer).label("rn"),
        cast(func.count().over(partition_by=partition), Integer).label("n"),
    ).subquery()
    at_rank = [
        func.max(case((ranked.c.rn == (ranked.c.n * p + 99) // 100, ranked.c.v))) for p in LATENCY_PERCENTILES
    ]
    rows = (
        await conn.execute(
            select(ranked.c.metric, ranked.c.grp, func.max(ranked.c.n), *at_rank).group_by(
                ranked.c.metric, ranked.c.grp
            )
        )
    ).all()
    return {
        (metric, grp): LatencyPercentiles(
            samples=int(n),
            p50_ms=None if p50 is None else float(p50),
            p95_ms=None if p95 is None else float(p95),
            p99_ms=None if p99 is None else float(p99),
        )
        for metric, grp, n, p50, p95, p99 in rows
    }
