"""What the pipeline and the worker report to metering, as plain immutable records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from ._cost import UsageLine
from ._json import JSONValue

ScheduledStatus = Literal["scheduled"]
"""A call stored to be started later (a scheduled dial): nothing is in LiveKit yet, nothing is
billed; it becomes `pending` when it is dialled, or ends `cancelled` (or `failed`, missed)."""

RunningStatus = Literal["pending", "connecting", "active"]
"""A call not yet ended, in the order it goes through them: dispatched and waiting for a worker
or a line (pending), the worker joining the room or dialling (connecting), talking (active)."""

CallStatus = Literal[
    "completed", "failed", "disconnected", "timeout", "no_answer", "busy", "abandoned", "cancelled"
]
"""How a call ended: normally (completed); it could not run (failed); the line or the room
dropped (disconnected); it ran out of time (timeout); a dialled phone did not answer (no_answer)
or was busy (busy); its process died and another one closed it (abandoned); it was scheduled and
ended before it was dialled (cancelled)."""

AnyStatus = ScheduledStatus | RunningStatus | CallStatus
"""Any status a call has in the ledger."""

CALL_STATUSES: tuple[AnyStatus, ...] = (
    *get_args(ScheduledStatus), *get_args(RunningStatus), *get_args(CallStatus)
)  # fmt: skip
"""Every status a call has in the ledger, in the order a call goes through them: scheduled,
then running, then how it ended."""

CallDirection = Literal["inbound", "outbound", "web"]
"""Who started the call: the caller dialled in, the platform dialled out, or a browser joined."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOpened:
    call_id: str
    workflow_slug: str
    started_at: datetime
    status: RunningStatus = "active"
    """The status it opens with. A call that runs as soon as it is opened (a recording, a local
    run) is active; a LiveKit worker opens it connecting and reports CallProgressed(active)."""
    customer_id: str | None = None
    """The billing customer's external id; None: the exporter's default customer."""
    billing_agent_id: str | None = None
    """The usage API's agent id for this call; None: the configured one (VOICERUN_USAGE_AGENT_ID)."""
    user_id: str | None = None
    """The caller as the application knows them (the control API's `user_id`)."""
    tenant: str | None = None
    direction: CallDirection | None = None
    metadata: Mapping[str, JSONValue] | None = None
    """What the application stored with the call (the control API's `metadata`)."""
    webhook_url: str | None = None
    """Where the call's webhook events go, besides its tenant's endpoints (signed with the
    tenant's webhook secret, so a call without a tenant sends it nothing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallProgressed:
    """A running call moved on. The ledger only moves a call forward (pending, connecting,
    active), so a record that arrives late never puts a call back, and never reopens one."""

    call_id: str
    status: Literal["connecting", "active"]
    at: datetime
    agent_history: tuple[str, ...] = ()
    """The agents that have taken the call so far, in order: the last one has it now (a handoff
    is reported as progress to the status the call already has). Empty: not said. Kept on a
    running call only; the close's own history is the last word."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageReported:
    call_id: str
    seq: int
    """Per call, from 0: with the call id it is the usage event's idempotency key."""
    line: UsageLine
    agent: str | None
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnReported:
    call_id: str
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
class CallClosed:
    call_id: str
    status: CallStatus
    reason: str
    ended_at: datetime
    duration_s: float
    telephony: tuple[str, float] | None = None
    """(provider, seconds) of the phone line, for calls that had one."""
    transcript: tuple[Mapping[str, JSONValue], ...] = ()
    """The call's transcript entries: role, content, timestamp, agent_name, and tool_call,
    tool_result, handoff, interrupted or backchannel where they apply."""
    agent_history: tuple[str, ...] = ()
    """The agents that took the call, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingStored:
    """The call's recording was saved: it is encoded and uploaded after the call ends, so this
    usually arrives after CallClosed."""

    call_id: str
    location: str
    """Where the recording store put it (a URL or a path)."""
    format: str
    duration_s: float
    at: datetime


Record = CallOpened | CallProgressed | UsageReported | TurnReported | CallClosed | RecordingStored
