"""One call as readers (the control API) see it: a plain value, never an ORM row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Row

from ._cost import CostBreakdown
from ._json import JSONValue
from ._records import AnyStatus, CallDirection
from ._schema import Call


@dataclass(frozen=True, slots=True)
class CallRecording:
    """Where a call's recording is; stored_at: when it was saved (RecordingStored.at)."""

    location: str
    format: str
    duration_s: float
    stored_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CallView:
    id: str
    workflow_slug: str
    status: AnyStatus
    status_at: datetime
    """Since when it has had `status`: its start, its last progress, or its end."""
    ended_reason: str | None
    """Why it ended (None while it runs): user_ended, agent_ended, worker_lost, ..."""
    user_id: str | None
    tenant: str | None
    direction: CallDirection | None
    metadata: Mapping[str, JSONValue] | None
    customer_id: str | None
    """The billing customer; None: calls recorded without billing that named none."""
    worker_id: str
    started_at: datetime
    """When it opened; a scheduled call's is when it was scheduled until it is dialled, then
    when it was dialled."""
    created_at: datetime
    """When it was recorded: its request (calls recorded before migration 0008: started_at)."""
    scheduled_at: datetime | None
    """When a scheduled dial is (or was) due; None: started at once."""
    ended_at: datetime | None
    duration_s: float | None
    agent_history: tuple[str, ...]
    """Empty until the call closes, as is the transcript."""
    transcript: tuple[Mapping[str, JSONValue], ...]
    recording: CallRecording | None
    cost_total: Decimal | None
    """Set when the call closes, in `currency`, itemised in `cost_breakdown`."""
    currency: str | None
    cost_breakdown: CostBreakdown | None


def call_view(row: Call | Row[Any]) -> CallView:
    """From an ORM row or a Core row with Call's attribute names (the ledger's _CALL_COLUMNS)."""
    assert row.status_at is not None  # written with every status; migration 0003 filled in older calls
    recording = None
    if row.recording_location is not None:
        assert row.recording_format is not None and row.recording_seconds is not None
        assert row.recording_stored_at is not None  # the four are written together
        recording = CallRecording(
            row.recording_location, row.recording_format, row.recording_seconds, row.recording_stored_at
        )
    return CallView(
        id=row.id,
        workflow_slug=row.workflow_slug,
        # The ledger writes only these values (CallOpened, CallProgressed, CallClosed, scheduling).
        status=cast(AnyStatus, row.status),
        status_at=row.status_at,
        ended_reason=row.ended_reason,
        user_id=row.user_id,
        tenant=row.tenant,
        direction=cast(CallDirection | None, row.direction),
        metadata=row.call_metadata,
        customer_id=row.customer_id,
        worker_id=row.worker_id,
        started_at=row.started_at,
        created_at=row.created_at or row.started_at,
        scheduled_at=row.scheduled_at,
        ended_at=row.ended_at,
        duration_s=None if row.duration_seconds is None else float(row.duration_seconds),
        agent_history=tuple(row.agent_history or ()),
        transcript=tuple(row.transcript or ()),
        recording=recording,
        cost_total=row.cost_total,
        currency=row.currency,
        cost_breakdown=row.cost_breakdown,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CallPage:
    """One page of a tenant's calls, newest first, and how many there are in all."""

    items: tuple[CallView, ...]
    total: int
    """Calls matching the filters, on every page."""
    page: int
    """From 1; past the last page, `items` is empty."""
    page_size: int
    pages: int
    """ceil(total / page_size): 0 when nothing matches."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnView:
    """One caller turn's latencies (TurnReported, as stored), in milliseconds."""

    turn: int
    agent: str | None
    eou_delay_ms: float
    stt_latency_ms: float
    llm_ttft_ms: float | None
    tts_ttfb_ms: float | None
    e2e_latency_ms: float | None
    interrupted: bool
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageTotals:
    """A call's usage summed over its providers and agents; zeros for a call with none."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    """Part of prompt_tokens (served from the provider's cache)."""
    tts_characters: int
    stt_audio_seconds: Decimal
    """Exact, as billed (3 decimals)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFigures:
    """A call's turn latencies averaged over its turns (None: no turn had that stage) and its
    usage totals, as the control API shows them beside the call."""

    turns: int
    stt_latency_ms: float | None
    llm_ttft_ms: float | None
    tts_ttfb_ms: float | None
    e2e_latency_ms: float | None
    usage: UsageTotals


@dataclass(frozen=True, slots=True, kw_only=True)
class CallDetailView:
    call: CallView
    figures: CallFigures
