"""/api/v1/calls: start, read, list and end calls (seed 004's shapes), scoped to the key's tenant."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, get_args

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from metering import CallClosed, CallDetailView, CallOpened, CallView, Ledger
from workflows import UnknownWorkflowError, VariableError, WorkflowRegistry, bind_user_data

from ._errors import TENANT, ApiError
from ._livekit import LiveKitCalls
from ._models import (
    ActiveCall,
    CallDetail,
    CallMetrics,
    CallPage,
    CallSummary,
    DialCall,
    DialedCall,
    EndedCall,
    RecordingLink,
    StartCall,
    StartedCall,
    Status,
    TranscriptEntry,
)
from ._openapi import ApiRoute, Query

log = structlog.get_logger("voicerun.api")

ENDED_BY_API = "api"
"""The reason a call ended through POST /calls/{id}/end carries (the worker's ENDED_BY_API)."""
RUNNING = ("pending", "connecting", "active")
RECORDING_TYPES = {"flac": "audio/flac", "ogg": "audio/ogg"}
RECORDING_LINK_S = 900
"""How long a recording's URL (?url=true) lets anyone holding it download the recording."""


class Recordings(Protocol):
    """Where the workers store recordings (agent's RecordingStore, given by the host)."""

    async def open(self, location: str) -> bytes: ...

    async def link(self, location: str, expires_s: int) -> str | None:
        """A URL fetching it without credentials until it expires; None if the store has none."""
        ...


SCHEDULE_HORIZON = timedelta(days=30)
"""How far ahead a dial may be scheduled."""
Start = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Has LiveKit start a recorded call: its room, and the job the dispatched worker gets."""


def room_of(call_id: str) -> str:
    return f"call-{call_id}"


def dialler(livekit: LiveKitCalls, *, to: str, from_: str, max_duration_s: int) -> Start:
    """How a dialled call starts: the room, the agent, and LiveKit SIP ringing `to` into it."""

    async def dial(room: str, job: dict[str, Any]) -> None:
        await livekit.dial(room, job, to=to, from_=from_, max_duration_s=max_duration_s)

    return dial


async def start_or_fail(ledger: Ledger, call_id: str, job: dict[str, Any], start: Start) -> Exception | None:
    """Have LiveKit start a call the ledger has (pending). If it cannot, the call is closed as
    failed with LiveKit's error as its reason (its webhooks go out as for any failed call) and
    the error is returned. An immediate start and a scheduled dial both start calls here."""
    try:
        await start(room_of(call_id), job)
    except Exception as exc:
        reason = f"livekit: {type(exc).__name__}: {exc}"[:500]
        closed = CallClosed(
            call_id=call_id, status="failed", reason=reason, ended_at=ledger.clock(), duration_s=0.0
        )
        await ledger.write([closed])
        return exc
    return None


async def body_of(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "send JSON: Content-Type must be application/json")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid request", _field_errors(exc)) from None


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "(body)"
        message = "is not a field" if error["type"] == "extra_forbidden" else str(error["msg"])
        out.append({"field": field, "message": message})
    return out


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def call_summary(view: CallView) -> dict[str, Any]:
    return {
        "id": view.id,
        "workflow_slug": view.workflow_slug,
        "user_id": view.user_id,
        "status": view.status,
        "direction": view.direction,
        "duration_seconds": None if view.duration_s is None else round(view.duration_s, 3),
        "agent_history": list(view.agent_history),
        "started_at": _iso(view.started_at) or "",
        "ended_at": _iso(view.ended_at),
        "scheduled_at": _iso(view.scheduled_at),
    }


def _current_agent(view: CallView) -> str | None:
    return (view.agent_history or (None,))[-1] if view.status in RUNNING else None


def answer(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


class CallRoutes:
    def __init__(
        self,
        ledger: Ledger,
        registry: WorkflowRegistry,
        livekit: LiveKitCalls,
        recordings: Recordings | None = None,
        dial_scheduled: Callable[[], None] | None = None,
    ) -> None:
        """dial_scheduled: told when a dial is scheduled (the dial scheduler's wake)."""
        self.ledger = ledger
        self.registry = registry
        self.livekit = livekit
        self.recordings = recordings
        self.dial_scheduled = dial_scheduled

    def routes(self) -> list[ApiRoute]:
        integer = {"type": "integer"}
        date_time = {"type": "string", "format": "date-time"}
        listing = [
            Query("page", {**integer, "minimum": 1}, "Page number (default 1)"),
            Query("page_size", {**integer, "minimum": 1, "maximum": 100}, "Items per page (default 20)"),
            Query(
                "status", {"type": "string", "enum": list(get_args(Status))}, "Only calls with this status"
            ),
            Query("workflow", {"type": "string"}, "Only calls of this workflow slug"),
            Query("user_id", {"type": "string"}, "Only calls of this user"),
            Query("started_after", date_time, "Started at or after (ISO 8601)"),
            Query("started_before", date_time, "Started before (ISO 8601)"),
        ]
        tags = ("calls",)
        return [
            ApiRoute("POST", "/api/v1/calls", self.start, "Start a call: a room with the agent dispatched",
                     StartedCall, body=StartCall, status=201, errors=(400, 401, 413, 415, 422, 429, 502), tags=tags,
                     limit="create"),
            ApiRoute("POST", "/api/v1/calls/dial", self.dial, "Dial a phone (LiveKit SIP) into a new call",
                     DialedCall, body=DialCall, status=201, errors=(400, 401, 409, 413, 415, 422, 429, 502),
                     tags=tags, limit="dial"),
            ApiRoute("GET", "/api/v1/calls", self.list, "List calls", CallPage, query=listing, tags=tags,
                     limit="list"),
            ApiRoute("GET", "/api/v1/calls/active", self.active, "Calls in progress", list[ActiveCall],
                     query=[Query("limit", {**integer, "minimum": 1, "maximum": 100}, "Max results (default 50)")],
                     tags=tags, limit="list"),
            ApiRoute("GET", "/api/v1/calls/{id}", self.get, "A call", CallDetail, tags=tags, limit="status"),
            ApiRoute("GET", "/api/v1/calls/{id}/transcript", self.transcript, "A call's transcript",
                     list[TranscriptEntry], tags=tags, limit="status"),
            ApiRoute("GET", "/api/v1/calls/{id}/metrics", self.metrics, "A call's metrics", CallMetrics, tags=tags,
                     limit="status"),
            ApiRoute("GET", "/api/v1/calls/{id}/recording", self.recording,
                     "A call's recording (FLAC or Ogg/Opus); with url=true, a time-limited URL to it instead",
                     bytes, errors=(400, 401, 404, 409, 429, 502), tags=tags, limit="status", media="audio/*",
                     query=[Query("url", {"type": "boolean"},
                                  f"Answer {{url, expires_at, format}}: a URL valid {RECORDING_LINK_S} s (S3 stores)")]),
            ApiRoute("POST", "/api/v1/calls/{id}/end", self.end,
                     "End a call (idempotent): 200 once ended, 202 while its worker is ending it", EndedCall,
                     accepted=True, errors=(401, 404, 429, 502), tags=tags),
        ]  # fmt: skip

    async def _call(self, request: web.Request) -> CallView:
        view = await self.ledger.call(request.match_info["id"], tenant=request[TENANT])
        if view is None:  # another tenant's call is as absent as a call that never was
            raise ApiError(404, "no such call")
        return view

    def _workflow_for(self, slug: str, user_data: dict[str, Any]) -> Any:
        try:
            workflow = self.registry.get(slug)
        except UnknownWorkflowError as exc:
            raise ApiError(
                422, "invalid request", [{"field": "workflow_slug", "message": str(exc)}]
            ) from None
        try:
            bind_user_data(workflow, user_data)
        except VariableError as exc:
            details = [{"field": "user_data", "message": p} for p in exc.problems]
            raise ApiError(422, "invalid request", details) from None
        return workflow

    async def _open(
        self,
        request: web.Request,
        body: StartCall | DialCall,
        direction: str,
        start: Start,
        *,
        scheduled_at: datetime | None = None,
    ) -> str:
        """Record the call (pending), then have LiveKit start it; a LiveKit failure closes it as
        failed and answers 502. With `scheduled_at`, the call is only recorded (scheduled) with
        what dialling it needs: the dial scheduler starts it then, the same way."""
        workflow = self._workflow_for(body.workflow_slug, body.user_data)
        tenant: str = request[TENANT]
        call_id = str(uuid.uuid4())
        now = self.ledger.clock()
        opened = CallOpened(
            call_id=call_id, workflow_slug=workflow.slug, started_at=now, status="pending",
            tenant=tenant, user_id=body.user_id, direction=direction, metadata=body.metadata or None,  # type: ignore[arg-type]
            webhook_url=body.webhook_url if isinstance(body, DialCall) else None,
        )  # fmt: skip
        job: dict[str, Any] = {
            "workflow_slug": workflow.slug, "call_id": call_id, "user_id": body.user_id,
            "user_data": body.user_data, "metadata": body.metadata, "tenant": tenant, "direction": direction,
        }  # fmt: skip
        if isinstance(body, DialCall):
            job |= {"recording": body.recording, "max_duration": body.max_duration}
        if scheduled_at is not None:
            assert isinstance(body, DialCall)
            dial = {
                "to_number": body.to_number,
                "from_number": body.from_number,
                "max_duration": body.max_duration,
            }
            await self.ledger.schedule_call(opened, at=scheduled_at, request={"job": job, "dial": dial})
            if self.dial_scheduled is not None:
                self.dial_scheduled()
            return call_id
        await self.ledger.write([opened])
        failure = await start_or_fail(self.ledger, call_id, job, start)
        if failure is not None:
            raise ApiError(502, f"LiveKit could not start the call: {type(failure).__name__}")
        return call_id

    async def start(self, request: web.Request) -> web.Response:
        body: StartCall = await body_of(request, StartCall)
        call_id = await self._open(request, body, "web", self.livekit.start)
        room = room_of(call_id)
        started = StartedCall(
            call_id=call_id,
            room_name=room,
            livekit_url=self.livekit.config.url,
            token=self.livekit.caller_token(room, f"caller-{call_id[:8]}"),
            status="pending",
        )
        return answer(started, 201)

    async def dial(self, request: web.Request) -> web.Response:
        if self.livekit.config.sip_trunk_id is None:
            raise ApiError(409, "dialling is not configured: set VOICERUN_SIP_TRUNK_ID to an outbound trunk")
        body: DialCall = await body_of(request, DialCall)
        at = None if body.scheduled_at is None else self._schedule_time(body.scheduled_at)
        dial = dialler(
            self.livekit, to=body.to_number, from_=body.from_number, max_duration_s=body.max_duration
        )
        call_id = await self._open(request, body, "outbound", dial, scheduled_at=at)
        dialed = DialedCall(
            call_id=call_id, room_name=room_of(call_id), status="pending" if at is None else "scheduled",
            scheduled_at=_iso(at),
        )  # fmt: skip
        return answer(dialed, 201)

    def _schedule_time(self, at: datetime) -> datetime:
        """`scheduled_at`, checked against the ledger's clock: in the future, within the horizon."""
        now = self.ledger.clock()
        at = at.astimezone(UTC)
        if at <= now:
            problem = f"must be in the future (it is {_iso(now)} now)"
        elif at > now + SCHEDULE_HORIZON:
            problem = (
                f"must be at most {SCHEDULE_HORIZON.days} days ahead (until {_iso(now + SCHEDULE_HORIZON)})"
            )
        else:
            return at
        raise ApiError(422, "invalid request", [{"field": "scheduled_at", "message": problem}])

    async def _detail(self, request: web.Request) -> CallDetailView:
        detail = await self.ledger.call_detail(request.match_info["id"], tenant=request[TENANT])
        if detail is None:  # another tenant's call is as absent as a call that never was
            raise ApiError(404, "no such call")
        return detail

    async def get(self, request: web.Request) -> web.Response:
        detail = await self._detail(request)
        view = detail.call
        body = CallDetail(
            **call_summary(view),
            current_agent=_current_agent(view),
            metrics=_metrics(detail),
            metadata=dict(view.metadata) if view.metadata is not None else None,
            recording=None if view.recording is None else {"format": view.recording.format},
            ended_reason=view.ended_reason,
            created_at=_iso(view.created_at) or "",
        )
        return answer(body)

    async def transcript(self, request: web.Request) -> web.Response:
        view = await self._call(request)
        entries = [TranscriptEntry.model_validate(e).model_dump(mode="json") for e in view.transcript]
        return web.json_response(entries)

    async def metrics(self, request: web.Request) -> web.Response:
        return answer(_metrics(await self._detail(request)))

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        unknown = set(q) - {"page", "page_size", "status", "workflow", "workflow_slug", "user_id",
                            "started_after", "started_before"}  # fmt: skip
        if unknown:
            raise ApiError(400, f"unknown query parameters: {', '.join(sorted(unknown))}")
        status = q.get("status")
        if status is not None and status not in get_args(Status):
            raise ApiError(400, f"status must be one of: {', '.join(get_args(Status))}")
        page = _int(q, "page", 1, 1, 1_000_000)
        page_size = _int(q, "page_size", 20, 1, 100)
        result = await self.ledger.list_calls(
            tenant=request[TENANT],
            page=page,
            page_size=page_size,
            status=status,
            workflow_slug=q.get("workflow_slug") or q.get("workflow"),
            user_id=q.get("user_id"),
            started_after=_when(q, "started_after"),
            started_before=_when(q, "started_before"),
        )
        page_of = CallPage(
            items=[CallSummary(**call_summary(v)) for v in result.items],
            total=result.total,
            page=result.page,
            page_size=result.page_size,
            pages=result.pages,
        )
        return answer(page_of)

    async def active(self, request: web.Request) -> web.Response:
        limit = _int(request.query, "limit", 50, 1, 100)
        calls = await self.ledger.active_calls(tenant=request[TENANT])
        return web.json_response(
            [{**call_summary(v), "current_agent": (v.agent_history or (None,))[-1]} for v in calls[:limit]]
        )

    async def recording(self, request: web.Request) -> web.Response:
        want_url = _flag(request.query, "url")
        view = await self._call(request)
        if view.recording is None or self.recordings is None:
            raise ApiError(404, "this call has no recording")
        location, fmt = view.recording.location, view.recording.format
        try:  # the store is another service (S3) or a disk: any failure of it is a 502, logged
            url = await self.recordings.link(location, RECORDING_LINK_S) if want_url else None
            data = None if want_url else await self.recordings.open(location)
        except Exception as exc:
            log.error(
                "recording_unreadable",
                call_id=view.id,
                location=location,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            raise ApiError(502, "the recording could not be read from its store (logged)") from None
        if want_url:
            if url is None:
                raise ApiError(
                    409, "recordings are kept on the API's disk: download this one without url=true"
                )
            expires = self.ledger.clock() + timedelta(seconds=RECORDING_LINK_S)
            return answer(RecordingLink(url=url, expires_at=_iso(expires) or "", format=fmt))
        return web.Response(
            body=data,
            content_type=RECORDING_TYPES.get(fmt, "application/octet-stream"),
            headers={"Content-Disposition": f'attachment; filename="{view.id}.{fmt}"'},
        )

    async def end(self, request: web.Request) -> web.Response:
        view = await self._call(request)
        if view.status == "scheduled":  # cancelled: it is never dialled
            await self.ledger.cancel_scheduled(view.id, reason=ENDED_BY_API)
            view = await self._call(request)  # cancelled, or claimed for dialling meanwhile
        if view.status in RUNNING:
            await self.livekit.end(room_of(view.id), ENDED_BY_API)
        if view.status == "pending":  # no worker has it: nobody else will close it
            now = self.ledger.clock()
            closed = CallClosed(
                call_id=view.id, status="completed", reason=ENDED_BY_API, ended_at=now, duration_s=0.0
            )
            await self.ledger.write([closed])
        view = await self._call(request)
        # A worker ends a running call (its last words, usage, recording) a moment after the
        # room hears of it: until the ledger has that, the answer is 202, still running.
        ending = view.status in RUNNING
        return answer(
            EndedCall(id=view.id, status=view.status, ended_reason=view.ended_reason), 202 if ending else 200
        )


def _metrics(detail: CallDetailView) -> CallMetrics:
    view, figures = detail.call, detail.figures

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return CallMetrics(
        duration_seconds=None if view.duration_s is None else round(view.duration_s, 3),
        stt_latency_ms=ms(figures.stt_latency_ms),
        llm_latency_ms=ms(figures.llm_ttft_ms),
        tts_latency_ms=ms(figures.tts_ttfb_ms),
        e2e_latency_ms=ms(figures.e2e_latency_ms),
        turns=figures.turns,
        total_tokens=figures.usage.prompt_tokens + figures.usage.completion_tokens,
        agent_handoffs=max(0, len(view.agent_history) - 1),
    )


def _flag(q: Any, name: str) -> bool:
    raw = q.get(name)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise ApiError(400, f"{name} must be true or false")


def _int(q: Any, name: str, default: int, low: int, high: int) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def _when(q: Any, name: str) -> datetime | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 date-time, e.g. 2026-01-17T10:30:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
