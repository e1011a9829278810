"""Call webhooks in the ledger: the events a status change queues, tenants' endpoints and
secrets, and the signature receivers check.

Events go through the ledger's outbox (kind `webhook`), written in the transaction that changes
the call's status, so an event is queued if and only if the change is recorded. Each target (an
endpoint, or the call's own webhook_url) is a lane of the outbox: its events are delivered in
the order they were queued, and a retried event keeps its id (receivers dedupe by it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, assert_never, get_args
from urllib.parse import urlsplit

from sqlalchemy import Insert, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ._json import JSONValue, plain
from ._keys import check_tenant
from ._records import AnyStatus
from ._schema import Base, Call, OutboxEvent, TurnMetric, WebhookEndpoint, WebhookSecret

WebhookEventType = Literal[
    "call.initiating",
    "call.ringing",
    "call.in_progress",
    "call.completed",
    "call.failed",
    "call.no_answer",
    "call.report",
]
"""What a webhook event reports: a status the call entered, or (call.report) the end-of-call
report that follows call.completed and call.failed."""

WEBHOOK_EVENT_TYPES: tuple[WebhookEventType, ...] = get_args(WebhookEventType)

WEBHOOK = "webhook"
"""The outbox kind of webhook events."""
CALL_TARGET = "call"
"""The outbox target of events for the call's own webhook_url."""
SECRET_PREFIX = "whsec_"
URL_MAX = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookEndpointView:
    """An endpoint as it is listed: never its secret."""

    id: str
    tenant: str
    url: str
    events: tuple[WebhookEventType, ...] | None
    """The event types it receives; None: all."""
    created_at: datetime
    disabled_at: datetime | None
    """Set when it answered 410 Gone: it receives nothing more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewWebhookEndpoint:
    """An endpoint just created. `secret` signs its events: shown here once, never listed."""

    id: str
    tenant: str
    url: str
    events: tuple[WebhookEventType, ...] | None
    secret: str = field(repr=False)
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDelivery:
    """A claimed webhook event, with where it goes and what signs it."""

    outbox_id: int
    event_id: str
    event_type: str
    call_id: str
    target: str
    """An endpoint's id, or `call` (the call's webhook_url)."""
    url: str = field(repr=False)  # a URL may carry a token
    secret: str = field(repr=False)
    body: bytes = field(repr=False)
    attempts: int


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The Webhook-Signature header: `v1=` and the hex HMAC-SHA256, keyed with the whole secret
    (prefix included, as UTF-8), of `{timestamp}.{body}`."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > URL_MAX:
        raise ValueError(
            f"webhook URL must be an http(s) URL of at most {URL_MAX} characters, not {url[:100]!r}"
        )
    return url


def check_events(events: Sequence[str] | None) -> tuple[WebhookEventType, ...] | None:
    if events is None:
        return None
    unknown = [e for e in events if e not in WEBHOOK_EVENT_TYPES]
    if unknown or not events:
        raise ValueError(
            f"webhook events {list(events)!r}: give one or more of {', '.join(WEBHOOK_EVENT_TYPES)}"
        )
    return tuple(e for e in WEBHOOK_EVENT_TYPES if e in events)


def events_for(status: AnyStatus) -> list[tuple[WebhookEventType, dict[str, JSONValue]]]:
    """The events a call entering `status` sends, in order, with what they add to `data`. A
    scheduled call sends nothing until it is dialled (then call.initiating, as any call), and
    one cancelled before that sends nothing at all: no receiver ever heard of it."""
    match status:
        case "scheduled" | "cancelled":
            return []
        case "pending":
            return [("call.initiating", {})]
        case "connecting":
            return [("call.ringing", {})]
        case "active":
            return [("call.in_progress", {})]
        case "completed" | "disconnected" | "timeout":
            return [("call.completed", {}), ("call.report", {})]
        case "failed" | "abandoned":
            return [("call.failed", {}), ("call.report", {})]
        case "no_answer":
            return [("call.no_answer", {"reason": "no_answer"})]
        case "busy":
            return [("call.no_answer", {"reason": "busy"})]
        case _:
            assert_never(status)


InsertFor = Callable[[type[Base]], Insert]


async def enqueue(
    s: AsyncSession,
    *,
    call_id: str,
    status: AnyStatus,
    at: datetime,
    now: datetime,
    insert: InsertFor,
) -> int:
    """Queue the events of the call entering `status` for every target that takes them (its
    tenant's enabled endpoints, its webhook_url); returns how many rows were queued. Run it in
    the transaction that changed the status, after the change."""
    # Who takes them, in one light query; the call itself is loaded only when someone does.
    rows = (
        await s.execute(
            select(Call.tenant, Call.webhook_url, WebhookEndpoint.id, WebhookEndpoint.events)
            .outerjoin(
                WebhookEndpoint,
                and_(WebhookEndpoint.tenant == Call.tenant, WebhookEndpoint.disabled_at.is_(None)),
            )
            .where(Call.id == call_id)
        )
    ).all()
    if not rows or rows[0].tenant is None:
        return 0  # events are signed with a tenant's secrets: a call of no tenant has none
    targets: list[tuple[str, list[str] | None]] = [(r.id, r.events) for r in rows if r.id is not None]
    if rows[0].webhook_url:
        targets.append((CALL_TARGET, None))
    if not targets:
        return 0
    call = await s.scalar(select(Call).where(Call.id == call_id).execution_options(populate_existing=True))
    assert call is not None  # it was there a statement ago, in this transaction
    events = [
        {
            "id": str(uuid.uuid4()),  # one id per event, whichever target: receivers dedupe by it
            "type": type_,
            "call_id": call_id,
            "created_at": at.isoformat(),
            "data": await _data(s, call, type_, extra, at),
        }
        for type_, extra in events_for(status)
    ]
    queued = 0
    for target, wanted in targets:
        chosen = [e for e in events if wanted is None or e["type"] in wanted]
        if not chosen:
            continue
        last: int | None = await s.scalar(
            select(func.coalesce(func.max(OutboxEvent.seq), -1)).where(
                OutboxEvent.call_id == call_id, OutboxEvent.kind == WEBHOOK, OutboxEvent.target == target
            )
        )
        await s.execute(
            insert(OutboxEvent),
            [
                {
                    "idempotency_key": f"{call_id}/{WEBHOOK}/{target}/{e['type']}",
                    "call_id": call_id,
                    "kind": WEBHOOK,
                    "target": target,
                    "seq": (-1 if last is None else last) + 1 + i,
                    "step": e["type"],
                    "payload": e,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for i, e in enumerate(chosen)
            ],
        )
        queued += len(chosen)
    return queued


async def _data(
    s: AsyncSession, call: Call, type_: WebhookEventType, extra: dict[str, JSONValue], at: datetime
) -> JSONValue:
    data: dict[str, Any] = {
        "status": call.status,
        "status_at": at.isoformat(),
        "workflow_slug": call.workflow_slug,
        "tenant": call.tenant,
        "direction": call.direction,
        "user_id": call.user_id,
        "metadata": call.call_metadata,
        "started_at": call.started_at.isoformat(),
    }
    if call.ended_at is not None:
        data |= {
            "ended_at": call.ended_at.isoformat(),
            "ended_reason": call.ended_reason,
            "duration_s": None if call.duration_seconds is None else float(call.duration_seconds),
        }
    if type_ == "call.report":
        data |= {
            "transcript": call.transcript or [],
            "agent_history": call.agent_history or [],
            "metrics": await _metrics(s, call.id),
            "cost": {
                "currency": call.currency,
                "total": None if call.cost_total is None else float(call.cost_total),
                "breakdown": call.cost_breakdown,
            },
        }
    return plain(data | extra)


async def _metrics(s: AsyncSession, call_id: str) -> dict[str, JSONValue]:
    """The per-turn latencies summed up: count, interruptions, and per latency its mean, median
    and 95th percentile in milliseconds (None for a call without such turns)."""
    turns = (await s.scalars(select(TurnMetric).where(TurnMetric.call_id == call_id))).all()
    summary: dict[str, JSONValue] = {
        "turns": len(turns),
        "interrupted_turns": sum(1 for t in turns if t.interrupted),
    }
    for name in ("e2e_latency_ms", "stt_latency_ms", "llm_ttft_ms", "tts_ttfb_ms", "eou_delay_ms"):
        values = sorted(v for t in turns if (v := getattr(t, name)) is not None)
        summary[name] = (
            {
                "mean": round(sum(values) / len(values), 1),
                "p50": round(_percentile(values, 50), 1),
                "p95": round(_percentile(values, 95), 1),
            }
            if values
            else None
        )
    return summary


def _percentile(ordered: Sequence[float], pct: int) -> float:
    # Nearest rank: a value that was measured, never one interpolated between two turns.
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# -- endpoints and secrets -----------------------------------------------------------------


async def create_endpoint(
    s: AsyncSession, tenant: str, url: str, events: Sequence[str] | None, *, now: datetime
) -> NewWebhookEndpoint:
    check_tenant(tenant)
    chosen = check_events(events)
    row = WebhookEndpoint(
        id=str(uuid.uuid4()),
        tenant=tenant,
        url=check_url(url),
        secret=new_secret(),
        events=None if chosen is None else list(chosen),
        created_at=now,
        disabled_at=None,
    )
    s.add(row)
    return NewWebhookEndpoint(
        id=row.id, tenant=tenant, url=url, events=chosen, secret=row.secret, created_at=now
    )


def endpoint_view(row: WebhookEndpoint) -> WebhookEndpointView:
    return WebhookEndpointView(
        id=row.id,
        tenant=row.tenant,
        url=row.url,
        events=None if row.events is None else check_events(row.events),
        created_at=row.created_at,
        disabled_at=row.disabled_at,
    )


async def delete_endpoint(s: AsyncSession, endpoint_id: str, tenant: str) -> bool:
    """Delete the tenant's endpoint and drop what it still had to receive."""
    deleted = await s.execute(
        delete(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant == check_tenant(tenant))
        .returning(WebhookEndpoint.id)
    )
    if deleted.first() is None:
        return False
    await _cancel_lanes(s, OutboxEvent.target == endpoint_id, "the endpoint was deleted")
    return True


async def tenant_secret(s: AsyncSession, tenant: str, *, now: datetime, insert: InsertFor) -> str:
    """The tenant's secret for its calls' webhook_url, created on first use."""
    check_tenant(tenant)
    await s.execute(insert(WebhookSecret).values(tenant=tenant, secret=new_secret(), created_at=now))
    secret = await s.scalar(select(WebhookSecret.secret).where(WebhookSecret.tenant == tenant))
    assert secret is not None
    return secret


async def _cancel_lanes(s: AsyncSession, where: Any, reason: str) -> list[int]:
    return list(
        (
            await s.scalars(
                update(OutboxEvent)
                .where(OutboxEvent.kind == WEBHOOK, OutboxEvent.state == "pending", where)
                .values(state="cancelled", last_error=reason, sending_since=None)
                .returning(OutboxEvent.id)
            )
        ).all()
    )


# -- delivery -------------------------------------------------------------------------------


async def deliveries(
    s: AsyncSession, outbox_ids: Sequence[int], *, now: datetime, insert: InsertFor
) -> list[WebhookDelivery]:
    """The claimed events `outbox_ids` with their URL and secret, in claim order. Events whose
    target is gone (an endpoint deleted or disabled, a call's URL dropped) are cancelled."""
    if not outbox_ids:
        return []
    rows = (
        await s.execute(
            select(OutboxEvent, Call.tenant, Call.webhook_url, WebhookEndpoint)
            .join(Call, Call.id == OutboxEvent.call_id)
            .outerjoin(
                WebhookEndpoint,
                and_(WebhookEndpoint.id == OutboxEvent.target, WebhookEndpoint.disabled_at.is_(None)),
            )
            .where(OutboxEvent.id.in_(list(outbox_ids)))
            .order_by(OutboxEvent.id)
        )
    ).all()
    out: list[WebhookDelivery] = []
    gone: list[int] = []
    for e, tenant, call_url, endpoint in rows:
        if e.target == CALL_TARGET and call_url and tenant:
            url, secret = call_url, await tenant_secret(s, tenant, now=now, insert=insert)
        elif endpoint is not None:
            url, secret = endpoint.url, endpoint.secret
        else:
            gone.append(e.id)
            continue
        out.append(
            WebhookDelivery(
                outbox_id=e.id,
                event_id=str(e.payload["id"]),
                event_type=e.step,
                call_id=e.call_id,
                target=e.target,
                url=url,
                secret=secret,
                body=body_of(dict(e.payload)),
                attempts=e.attempts,
            )
        )
    if gone:
        await _cancel_lanes(s, OutboxEvent.id.in_(gone), "the webhook target is gone")
    return out


async def disable_target(s: AsyncSession, outbox_id: int, *, now: datetime) -> str | None:
    """The target of `outbox_id` answered 410 Gone: an endpoint is disabled, a call's URL is
    dropped, and what they still had to receive is cancelled. Returns the target."""
    e = await s.get(OutboxEvent, outbox_id)
    if e is None or e.kind != WEBHOOK:
        return None
    if e.target == CALL_TARGET:
        await s.execute(update(Call).where(Call.id == e.call_id).values(webhook_url=None))
        await _cancel_lanes(
            s, and_(OutboxEvent.call_id == e.call_id, OutboxEvent.target == CALL_TARGET), "410 Gone"
        )
    else:
        await s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == e.target, WebhookEndpoint.disabled_at.is_(None))
            .values(disabled_at=now)
        )
        await _cancel_lanes(s, OutboxEvent.target == e.target, "410 Gone")
    return e.target
