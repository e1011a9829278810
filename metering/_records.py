"""What the pipeline and the worker report to metering, as plain immutable records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ._cost import UsageLine

CallStatus = Literal["completed", "failed", "abandoned"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOpened:
    call_id: str
    workflow_slug: str
    started_at: datetime
    customer_id: str | None = None
    """The billing customer's external id; None: the exporter's default customer."""
    billing_agent_id: str | None = None
    """The usage API's agent id for this call; None: the configured one (VOICERUN_USAGE_AGENT_ID)."""


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


Record = CallOpened | UsageReported | TurnReported | CallClosed
