"""/api/v1/analytics on a real server on 127.0.0.1, on SQLite and PostgreSQL: every figure is
checked against the same figure computed in Python from the calls the test wrote."""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from control_api import LiveKitCalls, LiveKitConfig, create_app
from metering import (
    CALL_STATUSES,
    CallClosed,
    CallOpened,
    CallStatus,
    Ledger,
    RecordingStored,
    TurnReported,
    UsageLine,
    UsageReported,
    load_catalog,
    seconds,
)
from workflows import WorkflowRegistry

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
"""The API's clock: the default period is [2026-02-08T12:00Z, 2026-03-10T12:00Z)."""
ENDED: tuple[CallStatus, ...] = ("completed", "completed", "completed", "failed", "disconnected", "abandoned")


@dataclass
class Spec:
    """A call the test writes, and what the analytics should make of it."""

    id: str
    tenant: str
    workflow: str
    started_at: datetime
    status: str
    duration_s: float | None
    e2e: list[float | None] = field(default_factory=list)
    stt: list[float] = field(default_factory=list)
    llm: list[float | None] = field(default_factory=list)
    tts: list[float | None] = field(default_factory=list)
    cost: Decimal | None = None
    """As the ledger priced it (read back after the write)."""
    recorded: bool = False


def nearest_rank(values: Iterable[float | None], p: int) -> float | None:
    """The documented method: the value at 1-based rank ceil(p * n / 100), ascending."""
    got = sorted(v for v in values if v is not None)
    return got[math.ceil(p * len(got) / 100) - 1] if got else None


def make_specs() -> list[Spec]:
    rng = random.Random(7)
    specs = []
    for i in range(40):
        tenant = "acme" if i % 4 else "globex"
        # acme: March 3-9 (inside the default period), hours spread; globex on the same days
        start = datetime(2026, 3, 3 + rng.randrange(7), rng.randrange(24), rng.randrange(60), tzinfo=UTC)
        running = i % 9 == 0
        status = "active" if running else rng.choice(ENDED)
        turns = rng.randrange(0, 6)
        slow = 50.0 if tenant == "globex" else 1.0  # another tenant's figures would stand out
        specs.append(
            Spec(
                id=f"call-{i:02d}",
                tenant=tenant,
                workflow=rng.choice(("sales", "support")),
                started_at=start,
                status=status,
                duration_s=None if running else round(rng.uniform(3, 900), 3),
                e2e=[
                    None if rng.random() < 0.2 else round(rng.uniform(400, 2500) * slow, 1)
                    for _ in range(turns)
                ],
                stt=[round(rng.uniform(80, 400) * slow, 1) for _ in range(turns)],
                llm=[
                    None if rng.random() < 0.3 else round(rng.uniform(150, 900) * slow, 1)
                    for _ in range(turns)
                ],
                tts=[round(rng.uniform(50, 300) * slow, 1) for _ in range(turns)],
                recorded=rng.random() < 0.5,
            )
        )
    # acme, outside the default period (and of another workflow): counted only when asked for
    specs.append(Spec("old-1", "acme", "legacy", datetime(2026, 1, 5, 8, tzinfo=UTC), "completed", 61.5))
    return specs


def records_of(spec: Spec) -> list[Any]:
    records: list[Any] = [
        CallOpened(call_id=spec.id, workflow_slug=spec.workflow, started_at=spec.started_at, tenant=spec.tenant),
        UsageReported(
            call_id=spec.id, seq=0, agent="host", at=spec.started_at,
            line=UsageLine("stt", "deepgram", "nova-3", audio_seconds=Decimal(str(spec.duration_s or 1))),
        ),
        UsageReported(
            call_id=spec.id, seq=1, agent="host", at=spec.started_at,
            line=UsageLine("llm", "openai", "gpt-4o-mini", prompt_tokens=1200 * len(spec.e2e), completion_tokens=77),
        ),
    ]  # fmt: skip
    for n, (e2e, stt, llm, tts) in enumerate(zip(spec.e2e, spec.stt, spec.llm, spec.tts, strict=True)):
        records.append(
            TurnReported(
                call_id=spec.id, turn=n, agent="host", eou_delay_ms=300, stt_latency_ms=stt, llm_ttft_ms=llm,
                tts_ttfb_ms=tts, e2e_latency_ms=e2e, interrupted=e2e is None, at=spec.started_at,
            )
        )  # fmt: skip
    if spec.duration_s is not None:
        records.append(
            CallClosed(
                call_id=spec.id, status=spec.status,  # type: ignore[arg-type]
                reason="test", ended_at=spec.started_at + timedelta(seconds=spec.duration_s),
                duration_s=spec.duration_s,
            )
        )  # fmt: skip
    if spec.recorded:
        records.append(
            RecordingStored(
                call_id=spec.id, location="s3://x", format="flac", duration_s=1.0, at=spec.started_at
            )
        )
    return records


def money(total: Decimal) -> str:
    return str(total.quantize(Decimal("0.000001")))


def expected_metrics(specs: list[Spec]) -> dict[str, Any]:
    """The figures of `specs`, as the API documents them (docs/api.md, Analytics)."""
    ended = [s for s in specs if s.duration_s is not None]
    total_s = sum((seconds(s.duration_s) for s in ended if s.duration_s is not None), Decimal("0.000"))
    outcomes = dict.fromkeys(CALL_STATUSES, 0)
    for s in specs:
        outcomes[s.status] += 1
    costs = [s.cost for s in specs if s.cost is not None]
    latency = {}
    for name in ("e2e", "stt", "llm_ttft", "tts_ttfb"):
        attr = {"llm_ttft": "llm", "tts_ttfb": "tts"}.get(name, name)
        values = [v for s in specs for v in getattr(s, attr)]
        latency[name] = {
            "samples": sum(v is not None for v in values),
            **{f"p{p}": nearest_rank(values, p) for p in (50, 95, 99)},
        }
    return {
        "total_calls": len(specs),
        "completed_calls": outcomes["completed"],
        "incomplete_calls": len(specs) - outcomes["completed"],
        "outcomes": outcomes,
        "avg_duration_seconds": float((total_s / len(ended)).quantize(Decimal("0.001"))) if ended else None,
        "total_duration_seconds": float(total_s),
        "total_minutes": float((total_s / 60).quantize(Decimal("0.001"))),
        "total_cost": {"USD": money(sum(costs, Decimal(0)))} if costs else {},
        "recording_availability_rate": round(sum(s.recorded for s in specs) / len(specs), 4)
        if specs
        else None,
        "latency_ms": latency,
    }


class Api:
    def __init__(self, base: str, http: aiohttp.ClientSession, specs: list[Spec]) -> None:
        self.base, self.http, self.specs = base, http, specs
        self.keys: dict[str, str] = {}

    async def get(self, path: str, tenant: str = "acme") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        async with self.http.get(self.base + "/api/v1/analytics/" + path, headers=headers) as r:
            return r.status, json.loads(await r.text())

    def of(self, tenant: str, start: datetime | None = None, end: datetime | None = None) -> list[Spec]:
        start = start or NOW - timedelta(days=30)
        end = end or NOW
        return [s for s in self.specs if s.tenant == tenant and start <= s.started_at < end]


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    ledger = await Ledger.open(database_url, catalog=load_catalog(), clock=lambda: NOW)
    specs = make_specs()
    await ledger.write([r for spec in specs for r in records_of(spec)])
    for spec in specs:
        view = await ledger.call(spec.id)
        assert view is not None
        spec.cost = view.cost_total
    assert sum(s.cost is not None and s.cost > 0 for s in specs) > 20
    # The real app: its errors, auth and limits (its analytics take "now" from the ledger's clock)
    livekit = LiveKitCalls(LiveKitConfig(url="http://127.0.0.1:9", api_key="k", api_secret="s" * 32))
    app = create_app(ledger, WorkflowRegistry({}), livekit)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        a = Api(f"http://127.0.0.1:{server.port}", http, specs)
        for tenant in ("acme", "globex", "initech"):
            a.keys[tenant] = (await ledger.create_api_key(tenant)).key
        try:
            yield a
        finally:
            await server.close()
            await livekit.aclose()
            await ledger.aclose()


async def test_the_overview_of_the_last_30_days_counts_only_the_tenants_calls(api: Api) -> None:
    status, body = await api.get("overview")
    assert status == 200, body
    assert body["period"] == {"start_date": "2026-02-08T12:00:00Z", "end_date": "2026-03-10T12:00:00Z"}
    mine = api.of("acme")
    assert len(mine) > 20 and {s.status for s in mine} >= {"completed", "failed", "active"}
    assert body["metrics"] == expected_metrics(mine)
    assert body["metrics"]["latency_ms"]["e2e"]["p50"] is not None
    # globex sees its own calls only, never acme's (its latencies are 50 times acme's)
    status, theirs = await api.get("overview", tenant="globex")
    assert theirs["metrics"] == expected_metrics(api.of("globex"))
    assert (
        theirs["metrics"]["latency_ms"]["stt"]["p50"] > 80 * 50 > body["metrics"]["latency_ms"]["stt"]["p99"]
    )


async def test_dates_bound_the_period_and_a_date_only_end_includes_that_day(api: Api) -> None:
    status, body = await api.get("overview?start_date=2026-01-01&end_date=2026-03-05")
    assert status == 200, body
    assert body["period"] == {"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-03-06T00:00:00Z"}
    expected = api.of("acme", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC))
    assert any(s.id == "old-1" for s in expected)
    assert body["metrics"] == expected_metrics(expected)
    # date-times: UTC when they name no zone, converted when they do
    start, end = datetime(2026, 3, 4, 6, tzinfo=UTC), datetime(2026, 3, 7, 18, 30, tzinfo=UTC)
    status, body = await api.get(
        "overview?start_date=2026-03-04T06:00:00&end_date=2026-03-07T20:30:00%2B02:00"
    )
    assert body["period"] == {"start_date": "2026-03-04T06:00:00Z", "end_date": "2026-03-07T18:30:00Z"}
    assert body["metrics"] == expected_metrics(api.of("acme", start, end))


async def test_a_tenant_without_calls_gets_zeros_not_errors(api: Api) -> None:
    status, body = await api.get("overview", tenant="initech")
    assert status == 200
    assert body["metrics"] == expected_metrics([])
    assert body["metrics"]["latency_ms"]["e2e"] == {"samples": 0, "p50": None, "p95": None, "p99": None}
    status, body = await api.get("detailed", tenant="initech")
    assert body["workflows"] == []


async def test_detailed_splits_the_figures_by_workflow(api: Api) -> None:
    status, body = await api.get("detailed?start_date=2026-01-01")
    assert status == 200, body
    mine = api.of("acme", datetime(2026, 1, 1, tzinfo=UTC))
    assert body["metrics"] == expected_metrics(mine)
    slugs = sorted({s.workflow for s in mine}, key=lambda w: (-sum(s.workflow == w for s in mine), w))
    assert [w["workflow_slug"] for w in body["workflows"]] == slugs == [*slugs[:2], "legacy"]
    for w in body["workflows"]:
        expected = expected_metrics([s for s in mine if s.workflow == w["workflow_slug"]])
        assert w == {"workflow_slug": w["workflow_slug"], **expected}


def expected_timeline(
    specs: list[Spec], first: datetime, width: timedelta, count: int
) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        start = first + i * width
        inside = [s for s in specs if start <= s.started_at < start + width]
        m = expected_metrics(inside)
        out.append(
            {
                "bucket": start.isoformat().replace("+00:00", "Z"),
                "call_count": m["total_calls"],
                "completed_calls": m["completed_calls"],
                "avg_duration_seconds": m["avg_duration_seconds"],
                "total_minutes": m["total_minutes"],
                "total_cost": m["total_cost"] or {"USD": "0.000000"},
            }
        )
    return out


async def test_the_daily_timeline_has_every_day_including_empty_ones(api: Api) -> None:
    status, body = await api.get("timeline?start_date=2026-03-01&end_date=2026-03-10")
    assert status == 200, body
    assert body["bucket"] == "day"
    first = datetime(2026, 3, 1, tzinfo=UTC)
    mine = api.of("acme", first, first + timedelta(days=10))
    assert body["timeline"] == expected_timeline(mine, first, timedelta(days=1), 10)
    assert [b["call_count"] for b in body["timeline"]][:2] == [0, 0] and body["timeline"][-1][
        "call_count"
    ] == 0
    # the default period: 31 days (its first and last partial), the last one today's
    status, body = await api.get("timeline")
    assert len(body["timeline"]) == 31 and body["timeline"][-1]["bucket"] == "2026-03-10T00:00:00Z"
    assert sum(b["call_count"] for b in body["timeline"]) == len(api.of("acme"))


async def test_the_hourly_timeline_has_every_hour(api: Api) -> None:
    day = datetime(2026, 3, 5, tzinfo=UTC)
    status, body = await api.get("timeline?bucket=hour&start_date=2026-03-05&end_date=2026-03-05")
    assert status == 200, body
    mine = api.of("acme", day, day + timedelta(days=1))
    assert body["timeline"] == expected_timeline(mine, day, timedelta(hours=1), 24)
    assert 0 < sum(b["call_count"] for b in body["timeline"]) < 24
    # a period starting mid-hour: its first bucket is that hour, counting from the start only
    status, body = await api.get(
        "timeline?bucket=hour&start_date=2026-03-05T10:30:00Z&end_date=2026-03-05T13:00Z"
    )
    assert [b["bucket"] for b in body["timeline"]] == [
        "2026-03-05T10:00:00Z", "2026-03-05T11:00:00Z", "2026-03-05T12:00:00Z"
    ]  # fmt: skip
    start = datetime(2026, 3, 5, 10, 30, tzinfo=UTC)
    assert [b["call_count"] for b in body["timeline"]] == [
        len(
            [
                s
                for s in mine
                if max(start, day + timedelta(hours=h)) <= s.started_at < day + timedelta(hours=h + 1)
            ]
        )
        for h in (10, 11, 12)
    ]


BAD_PARAMETERS = [
    ("overview?start_date=yesterday", ["start_date", "'yesterday'", "ISO 8601"]),
    ("overview?end_date=2026-13-01", ["end_date", "ISO 8601"]),
    ("overview?start_date=2026-03-05&end_date=2026-03-01", ["start_date", "before end_date"]),
    ("overview?start_date=2026-03-05T10:00Z&end_date=2026-03-05T10:00Z", ["before end_date"]),
    ("overview?bucket=day", ["unknown query parameters: bucket"]),
    ("detailed?workflow=sales", ["unknown query parameters: workflow"]),
    ("timeline?bucket=week", ["bucket 'week'", "day or hour"]),
    ("timeline?bucket=hour&start_date=2025-01-01", ["hour buckets", "2,000"]),
    ("overview?end_date=9999-12-31", ["out of range"]),
]


async def test_bad_parameters_are_a_400_that_names_the_problem(api: Api) -> None:
    for path, words in BAD_PARAMETERS:
        status, body = await api.get(path)
        assert status == 400, (path, body)
        assert all(w in body["error"] for w in words), (path, body)


async def test_analytics_need_a_key(api: Api) -> None:
    async with api.http.get(api.base + "/api/v1/analytics/overview") as r:
        assert r.status == 401
