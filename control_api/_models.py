"""The API's request and response bodies: the same models validate requests, shape responses
and generate the OpenAPI document (control_api/_openapi.py), so the three cannot drift."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

Status = Literal[
    "scheduled", "pending", "connecting", "active", "completed", "failed", "disconnected", "timeout",
    "no_answer", "busy", "abandoned", "cancelled",
]  # fmt: skip
"""metering.CALL_STATUSES, in the same order (tests/control_api/test_scheduled_dials.py checks)."""
Direction = Literal["inbound", "outbound", "web"]
E164 = r"^\+[1-9][0-9]{6,14}$"


def _date_time_text(value: Any) -> Any:
    # JSON has no date-time: only its ISO 8601 text is one (pydantic would take a number too).
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time with a time zone, e.g. 2026-01-17T10:30:00Z")
    return value


DateTimeWithZone = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartCall(Request):
    workflow_slug: str = Field(min_length=1, max_length=64, description="Workflow to use for this call")
    user_id: str | None = Field(default=None, max_length=256, description="External user identifier")
    user_data: dict[str, Any] = Field(
        default_factory=dict, description="Values for the workflow's {{user.*}}"
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Stored with the call, never interpreted"
    )


class DialCall(Request):
    workflow_slug: str = Field(min_length=1, max_length=64)
    to_number: str = Field(pattern=E164, description="E.164, e.g. +14155550123")
    from_number: str = Field(pattern=E164, description="The trunk's number the call comes from")
    user_id: str | None = Field(default=None, max_length=256)
    user_data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    max_duration: int = Field(default=600, ge=10, le=86_400, description="Seconds")
    recording: bool = False
    scheduled_at: DateTimeWithZone | None = Field(
        default=None,
        description="Dial at this time (ISO 8601 with a time zone), in the future and at most 30 days"
        " ahead; absent: dial now",
    )
    webhook_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")


class StartedCall(Response):
    call_id: str
    room_name: str
    livekit_url: str
    token: str = Field(description="Lets the caller join the call's room (web calls)")
    status: Status


class DialedCall(Response):
    call_id: str
    room_name: str
    status: Status
    """pending (dialling now) or scheduled."""
    scheduled_at: str | None


class CallMetrics(Response):
    duration_seconds: float | None
    stt_latency_ms: float | None
    llm_latency_ms: float | None
    tts_latency_ms: float | None
    e2e_latency_ms: float | None
    turns: int
    total_tokens: int
    agent_handoffs: int


class CallSummary(Response):
    id: str
    workflow_slug: str
    user_id: str | None
    status: Status
    direction: Direction | None
    duration_seconds: float | None
    agent_history: list[str]
    started_at: str
    ended_at: str | None
    scheduled_at: str | None = Field(
        description="When a scheduled dial is (or was) due; null: started at once"
    )


class ActiveCall(CallSummary):
    current_agent: str | None


class CallDetail(CallSummary):
    current_agent: str | None
    metrics: CallMetrics
    metadata: dict[str, Any] | None
    recording: dict[str, str] | None
    ended_reason: str | None
    created_at: str


class TranscriptEntry(BaseModel):
    model_config = ConfigDict(extra="allow")  # tool_call, tool_result, handoff, interrupted...

    role: Literal["system", "user", "assistant"]
    content: str
    timestamp: str
    agent_name: str | None = None


class CallPage(Response):
    items: list[CallSummary]
    total: int
    page: int
    page_size: int
    pages: int


class EndedCall(Response):
    id: str
    status: Status
    ended_reason: str | None


class RecordingLink(Response):
    url: str
    """Fetches the recording with no credentials until expires_at: treat it as a secret."""
    expires_at: str
    format: str


class Variable(Response):
    type: str
    required: bool
    default: str | int | float | bool | None
    values: list[str] | None = None
    description: str | None = None


class WorkflowInfo(Response):
    slug: str
    name: str
    description: str | None
    start: str
    agents: list[str]
    variables: dict[str, Variable]


class WorkflowList(Response):
    items: list[WorkflowInfo]


class FieldError(Response):
    field: str
    message: str


class Error(Response):
    error: str
    details: list[FieldError] | None = None


class Health(Response):
    status: str
