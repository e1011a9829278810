"""One call from start to end, on any transport: workflow -> providers -> VoiceSession -> record."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import structlog

from metering import (
    CallClosed,
    CallOpened,
    CallProgressed,
    CallStatus,
    Meter,
    RunningStatus,
    TurnReported,
    UsageLine,
    UsageReported,
    UsageStage,
    seconds,
)
from pipeline import DEFAULT_BACKCHANNELS as _DEFAULT_BACKCHANNELS
from pipeline import (
    LLM,
    AgentHandoff,
    AgentSpeech,
    AgentVoice,
    AudioSink,
    Backchannel,
    CallerAudio,
    CallSummary,
    Clock,
    EndOfTurnConfig,
    PipelineFault,
    SessionConfig,
    SessionEvent,
    STTSession,
    ToolCalled,
    TurnCompleted,
    TurnConfig,
    TurnMetrics,
    UsageRecorded,
    UserTranscript,
    VADConfig,
    VoiceSession,
    shared_end_of_turn_model,
)
from workflows import (
    CallState,
    ProviderSpec,
    ToolBox,
    Transfer,
    TurnSettings,
    Workflow,
    WorkflowConversation,
)

from ._providers import ProviderPool

log = structlog.get_logger("voicerun.call")


def turn_config(s: TurnSettings) -> TurnConfig:
    return TurnConfig(
        vad=VADConfig(
            mode=s.vad_mode,
            start_voiced_ms=s.start_of_speech_ms,
            end_silence_ms=s.end_of_speech_ms,
            preroll_ms=s.preroll_ms,
        ),
        barge_in_ms=s.barge_in_ms,
        barge_in_confirm_ms=s.barge_in_confirm_ms,
        backchannel_max_ms=s.backchannel_max_ms,
        backchannels=s.backchannels if s.backchannels is not None else _DEFAULT_BACKCHANNELS,
        first_clause_min_chars=s.first_clause_min_chars,
        end_of_turn=s.end_of_turn,
        end_of_turn_config=EndOfTurnConfig(
            threshold=s.end_of_turn_threshold,
            ask_after_ms=s.end_of_turn_ask_after_ms,
            max_wait_ms=s.end_of_turn_max_wait_ms,
            no_score_silence_ms=s.end_of_speech_ms,
        ),
    )


ENDED_BY_API = "api"
ENDED_BY_DRAIN = "drain"
DISCONNECTED = "disconnected"
"""Reasons a call is ended from outside (Call.end): the control API, a draining worker, a
transport that lost the call. The session's own are user_ended (the caller hung up),
agent_ended (the workflow ended it), max_duration and silence_timeout."""

FINAL_STATUS: dict[str, CallStatus] = {
    "max_duration": "timeout",
    "silence_timeout": "timeout",
    DISCONNECTED: "disconnected",
}
"""End reasons whose status is not `completed`."""

Direction = Literal["inbound", "outbound", "web"]


@dataclass
class CallRecord:
    call_id: str
    workflow_slug: str
    started_at: datetime
    agent_history: list[str]
    current_agent: str | None = None
    """The agent in charge while the call runs; None once it has ended."""
    handoffs: int = 0
    transcript: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    summary: CallSummary | None = None
    usage_lines: list[UsageLine] = field(default_factory=list)
    """What each provider did, attributed to the agent in charge: priced into cost_breakdown."""
    customer_id: str | None = None
    billing_agent_id: str | None = None
    user_id: str | None = None
    tenant: str | None = None
    direction: Direction | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    not_connected: tuple[CallStatus, str] | None = None
    """(status, reason) of a call that never reached its caller (Call.not_connected)."""

    @property
    def status(self) -> CallStatus:
        """Seed 004's final statuses: failed (it could not run, or every turn it took failed),
        timeout (max duration, or nobody spoke after the check-in), disconnected (the transport
        dropped it), else completed (its summary's reason says why it ended)."""
        if self.not_connected is not None:
            return self.not_connected[0]
        summary = self.summary
        if summary is None or summary.failed:
            return "failed"
        return FINAL_STATUS.get(summary.reason, "completed")


def _priced(spec: ProviderSpec) -> tuple[str, str | None]:
    from pipeline.providers import PROVIDERS  # the entry says how (polly: its engine is its model)

    return PROVIDERS.priced(spec.provider, spec.model, spec.options)


Pricing = dict[str, dict[str, list[tuple[str, str | None]]]]
"""Agent -> stage -> (provider, model) its usage is priced as, for each provider of its fallback
chain in order."""


def _pricing(workflow: Workflow) -> Pricing:
    specs = {"stt": workflow.stt_for, "llm": workflow.llm_for, "tts": workflow.tts_for}
    return {
        name: {stage: [_priced(s) for s in spec_for(name).chain()] for stage, spec_for in specs.items()}
        for name in workflow.agents
    }


class _Metering:
    """Turns session events into usage lines for the report and records for the Meter."""

    def __init__(self, record: CallRecord, workflow: Workflow, meter: Meter | None) -> None:
        self._record = record
        self._start = workflow.start
        self._pricing = _pricing(workflow)
        self._meter = meter
        self._seq = 0
        self._turn = 0
        self._agent = workflow.start
        self._agents = [workflow.start]
        """The agents that have taken the call so far (the ledger's agent_history while it runs)."""

    def opened(self) -> None:
        if self._meter is not None:
            self._meter.report(
                CallOpened(
                    call_id=self._record.call_id,
                    workflow_slug=self._record.workflow_slug,
                    started_at=self._record.started_at,
                    customer_id=self._record.customer_id,
                    billing_agent_id=self._record.billing_agent_id,
                    user_id=self._record.user_id,
                    tenant=self._record.tenant,
                    direction=self._record.direction,
                    metadata=dict(self._record.metadata) or None,
                    status="connecting",
                )
            )
        # The start agent's providers, at zero: the cost breakdown names them even when a stage
        # is never used (a rules LLM), and they name a stage on a tie.
        for stage, chain in self._pricing[self._start].items():
            provider, model = chain[0]
            self._add(UsageLine(cast(UsageStage, stage), provider, model), self._start)

    def _add(self, line: UsageLine, agent: str) -> None:
        self._record.usage_lines.append(line)
        if self._meter is not None:
            at = datetime.now(UTC)
            self._meter.report(
                UsageReported(call_id=self._record.call_id, seq=self._seq, line=line, agent=agent, at=at)
            )
        self._seq += 1

    def on_event(self, ev: SessionEvent) -> None:
        if isinstance(ev, AgentHandoff):
            self._agent = ev.to_agent
            self._agents.append(ev.to_agent)
            self._progressed()  # who has the call now, for the control API's current_agent
        elif isinstance(ev, UsageRecorded):
            agent = ev.agent or self._start
            chain = self._pricing[agent][ev.stage]
            provider, model = chain[min(ev.served_by, len(chain) - 1)]
            line = UsageLine(
                ev.stage,
                provider,
                model,
                audio_seconds=seconds(ev.audio_seconds),
                prompt_tokens=ev.prompt_tokens,
                completion_tokens=ev.completion_tokens,
                cached_tokens=ev.cached_tokens,
                characters=ev.characters,
            )
            self._add(line, agent)
        elif isinstance(ev, TurnCompleted) and self._meter is not None:
            t = ev.metrics
            self._meter.report(
                TurnReported(
                    call_id=self._record.call_id,
                    turn=self._turn,
                    agent=self._agent,
                    eou_delay_ms=t.eou_delay_ms,
                    stt_latency_ms=t.stt_latency_ms,
                    llm_ttft_ms=t.llm_ttft_ms,
                    tts_ttfb_ms=t.tts_ttfb_ms,
                    e2e_latency_ms=t.e2e_latency_ms,
                    interrupted=t.interrupted,
                    at=datetime.now(UTC),
                )
            )
            self._turn += 1

    def active(self) -> None:
        self._progressed()

    def _progressed(self) -> None:
        if self._meter is not None:
            self._meter.report(
                CallProgressed(
                    call_id=self._record.call_id,
                    status="active",
                    at=datetime.now(UTC),
                    agent_history=tuple(self._agents),
                )
            )

    def closed(self, duration_s: float, reason: str, status: CallStatus | None = None) -> None:
        if self._meter is not None:
            record = self._record
            self._meter.report(
                CallClosed(
                    call_id=record.call_id,
                    status=status or record.status,
                    reason=reason,
                    ended_at=record.started_at + timedelta(seconds=duration_s),
                    duration_s=duration_s,
                    transcript=tuple(record.transcript),
                    agent_history=tuple(record.agent_history),
                )
            )


class _Transcript:
    """Turns session events into transcript entries stamped with wall-clock time."""

    def __init__(self, record: CallRecord, t0: float, agent: str) -> None:
        self._record = record
        self._t0 = t0
        self.agent = agent
        self._entries: list[tuple[float, int, dict[str, Any]]] = []
        self._add(t0, {"role": "system", "content": "Call started"})

    def _stamp(self, t: float) -> str:
        wall = self._record.started_at + timedelta(seconds=t - self._t0)
        return wall.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _add(self, t: float, entry: dict[str, Any], agent: str | None = None) -> None:
        entry = {**entry, "timestamp": self._stamp(t), "agent_name": agent or self.agent}
        self._entries.append((t, len(self._entries), entry))

    def on_event(self, ev: SessionEvent) -> None:
        if isinstance(ev, UserTranscript) and ev.final:
            self._add(ev.t, {"role": "user", "content": ev.text})
        elif isinstance(ev, Backchannel):
            self._add(ev.t, {"role": "user", "content": ev.text, "backchannel": True})
        elif isinstance(ev, AgentSpeech):
            entry: dict[str, Any] = {"role": "assistant", "content": ev.text}
            if ev.interrupted:
                entry["interrupted"] = True
            self._add(ev.t, entry, ev.agent)
        elif isinstance(ev, ToolCalled):
            self._add(
                ev.t,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_call": {"name": ev.name, "arguments": ev.arguments},
                    "tool_result": ev.result,
                    **({"tool_error": True} if ev.is_error else {}),
                },
            )
        elif isinstance(ev, AgentHandoff):
            self.agent = ev.to_agent
            self._record.current_agent = ev.to_agent
            self._add(
                ev.t,
                {
                    "role": "system",
                    "content": f"Handoff from {ev.from_agent} to {ev.to_agent}",
                    "handoff": {"from": ev.from_agent, "to": ev.to_agent},
                },
            )
        elif isinstance(ev, PipelineFault):
            self._record.faults.append(f"{ev.stage}: {ev.error}")

    def entries(self) -> list[dict[str, Any]]:
        return [e for _, _, e in sorted(self._entries, key=lambda x: (x[0], x[1]))]


Observer = Callable[[SessionEvent], None]
SnapshotStatus = RunningStatus | CallStatus


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """A running (or ended) call as the control API shows it."""

    call_id: str
    workflow_slug: str
    status: SnapshotStatus
    reason: str | None
    """Why it ended (None while it runs)."""
    started_at: datetime
    current_agent: str | None
    agent_history: tuple[str, ...]
    transcript: tuple[dict[str, Any], ...]
    turns: tuple[TurnMetrics, ...]
    usage: tuple[UsageLine, ...]
    faults: tuple[str, ...]


class Call:
    """One call, prepared before it runs: the handle a transport, the control API or a test
    holds to run it, watch it and end it.

    Preparing checks what can be checked without I/O (user data against the workflow's
    variables, every agent's LLM against this build); run() opens the providers, runs the session
    and returns the record, whatever ended the call. Run it in a task of its own: the call's log
    context is bound there.
    """

    def __init__(
        self,
        *,
        workflow: Workflow,
        providers: ProviderPool,
        caller: CallerAudio,
        sink: AudioSink,
        clock: Clock,
        user_data: Mapping[str, Any] | None = None,
        call_id: str | None = None,
        meter: Meter | None = None,
        customer_id: str | None = None,
        billing_agent_id: str | None = None,
        user_id: str | None = None,
        tenant: str | None = None,
        direction: Direction | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_duration_s: float | None = None,
        transfer: Transfer | None = None,
    ) -> None:
        """meter: where the call's lifecycle, usage and turn latencies are reported (the ledger);
        customer_id, billing_agent_id: who the usage API bills (else the configured defaults).
        providers: the process's shared providers, built with the credentials they use.
        user_id, tenant, direction, metadata: stored with the call. max_duration_s: instead of
        the workflow's. transfer: how `transfer_call` moves the caller (a phone transport's);
        None, the tool fails with NO_TELEPHONY."""
        self.id = call_id or str(uuid.uuid4())
        self.workflow = workflow
        self._providers = providers
        self._caller = caller
        self._sink = sink
        self._clock = clock
        self._meter = meter
        self._max_duration_s = max_duration_s
        self._transfer = transfer
        self._state = CallState.bind(workflow, user_data or {})
        # Every agent's LLM is checked now: a provider this build lacks fails before the call runs.
        self._llms: dict[str, LLM | None] = {
            name: providers.llm(workflow.llm_for(name)) for name in workflow.agents
        }
        self.record = CallRecord(
            self.id,
            workflow.slug,
            datetime.now(UTC),
            [workflow.start],
            current_agent=workflow.start,
            customer_id=customer_id,
            billing_agent_id=billing_agent_id,
            user_id=user_id,
            tenant=tenant,
            direction=direction,
            metadata=dict(metadata or {}),
        )
        self._observers: list[Observer] = []
        self._session: VoiceSession | None = None
        self._ended_by: str | None = None
        self._running = False
        self._done = False
        self._transcript: _Transcript | None = None
        self._metering = _Metering(self.record, workflow, meter)
        self._opened = False

    # -- from outside ---------------------------------------------------------------------

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call `observer` with every session event from now on; returns how to stop. An observer
        that raises is logged and detached: it never ends the call."""
        self._observers.append(observer)
        return lambda: self._detach(observer)

    def end(self, reason: str) -> None:
        """End the call as if it ended there, for `reason` (api, drain, a hang-up the
        transport saw...): the reply in progress stops, usage so far is kept, and the record and
        the ledger give the reason. Before the call starts, it ends the moment it does."""
        if self._ended_by is None and not self._done:
            self._ended_by = reason
            log.info("call_end_requested", call_id=self.id, reason=reason)
        if self._session is not None and self._ended_by is not None:
            self._session.end(self._ended_by)

    def open(self) -> None:
        """Report the call to the ledger now (status connecting), before run(): a transport
        that waits for its caller makes the call visible while it waits. Idempotent."""
        if not self._opened:
            self._opened = True
            self._metering.opened()

    def submit(self, text: str) -> None:
        """A caller turn that did not come as speech (`workflows.keypad_turn(digits)` for keys
        pressed on a phone): answered like a spoken one. Ignored unless the call is running."""
        if self._session is not None and not self._done:
            self._session.submit_turn(text)

    def not_connected(self, status: CallStatus, reason: str) -> CallRecord:
        """Record a call that never reached its caller (no answer, busy, a room that could not
        be joined, a dispatch that could not start): in the ledger as opened and closed at once,
        with `status` and `reason`. Instead of run()."""
        if self._running:
            raise RuntimeError(f"call {self.id} is already running or has run")
        self._running = self._done = True
        self.open()
        self.record.current_agent = None
        self.record.faults.append(reason)
        self.record.not_connected = (status, reason)
        self._metering.closed(0.0, reason, status)
        log.info("call_not_connected", call_id=self.id, status=status, reason=reason)
        return self.record

    def snapshot(self) -> CallSnapshot:
        record = self.record
        summary = record.summary
        status: SnapshotStatus
        if self._done:
            status = record.status
        else:
            status = "active" if self._session is not None else "connecting"
        if summary is not None:
            turns = summary.turns
        else:
            turns = tuple(self._session.turns) if self._session is not None else ()
        return CallSnapshot(
            call_id=record.call_id,
            workflow_slug=record.workflow_slug,
            status=status,
            reason=summary.reason if summary is not None else ("error" if self._done else None),
            started_at=record.started_at,
            current_agent=record.current_agent,
            agent_history=tuple(record.agent_history),
            transcript=tuple(
                self._transcript.entries() if self._transcript and not self._done else record.transcript
            ),
            turns=turns,
            usage=tuple(record.usage_lines),
            faults=tuple(record.faults),
        )

    # -- the call -------------------------------------------------------------------------

    def _detach(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self, ev: SessionEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(ev)
            except Exception:
                log.exception("call_observer_failed", observer=repr(observer), session_event=ev.kind)
                self._detach(observer)

    async def run(self) -> CallRecord:
        if self._running:
            raise RuntimeError(f"call {self.id} is already running or has run")
        self._running = True
        workflow, record, clock = self.workflow, self.record, self._clock
        agent_name = workflow.start
        structlog.contextvars.bind_contextvars(call_id=self.id, agent=agent_name)
        t0 = clock.now()
        transcript = self._transcript = _Transcript(record, t0, agent_name)
        metering = self._metering

        def on_event(ev: SessionEvent) -> None:
            transcript.on_event(ev)
            metering.on_event(ev)
            if self._observers:
                self._notify(ev)

        llms = self._llms
        config = SessionConfig(
            turn=turn_config(workflow.turn_for(agent_name)),
            max_duration_s=self._max_duration_s or workflow.defaults.max_duration_seconds,
            silence_timeout_s=workflow.defaults.silence_timeout_seconds,
            check_in=workflow.defaults.check_in,
        )
        # A call that fails while its providers open is still a call: in the ledger, as failed.
        self.open()
        failure = "error"
        # Each LLM's connection is opened while the greeting plays, so the first turn does not pay
        # the handshakes (best effort; cancelled with the call).
        unique_llms = {id(llm): llm for llm in llms.values() if llm is not None}.values()
        warming = [asyncio.create_task(llm.warm(), name="llm-warm") for llm in unique_llms]
        try:
            http = self._providers.http()
            toolboxes = {
                name: ToolBox(workflow, spec.tools, self._state, http=http, transfer=self._transfer)
                for name, spec in workflow.agents.items()
            }
            conversation = WorkflowConversation(
                workflow, self._state, toolboxes.__getitem__, llms.__getitem__
            )
            # Every agent's voice is ready before the call starts (models loaded, STT sessions
            # open), so a handoff switches instantly; agents with the same settings share one.
            stt_sessions: dict[str, STTSession] = {}
            try:
                voices: dict[str, AgentVoice] = {}
                for name in workflow.agents:
                    stt_spec = workflow.stt_for(name)
                    key = stt_spec.model_dump_json()
                    if key not in stt_sessions:
                        stt_sessions[key] = await (await self._providers.stt(stt_spec)).connect()
                    voices[name] = AgentVoice(
                        stt=stt_sessions[key],
                        tts=await self._providers.tts(workflow.tts_for(name)),
                        turn=turn_config(workflow.turn_for(name)),
                    )
                # One model per process serves every call; loaded before the first call needs it.
                needs_model = any(v.turn.end_of_turn == "model" for v in voices.values())
                start = voices[agent_name]
                session = VoiceSession(
                    end_of_turn_model=await shared_end_of_turn_model() if needs_model else None,
                    stt=start.stt,
                    tts=start.tts,
                    voices=voices.__getitem__,
                    dialogue=conversation,
                    sink=self._sink,
                    clock=clock,
                    config=config,
                    on_event=on_event,
                    greeting=conversation.greeting(),
                )
                self._session = session
                metering.active()
                if self._ended_by is not None:
                    session.end(self._ended_by)
                log.info("call_started", workflow=workflow.slug)
                record.summary = await session.run(self._caller)
            finally:
                for stt_session in stt_sessions.values():
                    await stt_session.aclose()
                record.transcript = transcript.entries()
                record.agent_history = list(conversation.agent_history)
                record.handoffs = conversation.handoffs
                record.current_agent = None
        except asyncio.CancelledError:
            failure = "cancelled"
            raise
        finally:
            self._done = True
            for task in warming:
                task.cancel()
            await asyncio.gather(*warming, return_exceptions=True)
            summary = record.summary
            metering.closed(
                summary.duration_s if summary else clock.now() - t0, summary.reason if summary else failure
            )
        log.info(
            "call_ended",
            status=record.status,
            reason=record.summary.reason,
            duration_s=round(record.summary.duration_s, 3),
            turns=len(record.summary.turns),
            turns_failed=record.summary.turns_failed,
            agent_history=record.agent_history,
        )
        return record
